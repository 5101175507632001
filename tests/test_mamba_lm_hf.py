"""MambaLM against transformers' own MambaForCausalLM: the same weights give the same logits
(random tiny configs in several shapes, fp32), through memory and through folders both ways,
and greedy decoding agrees. The reference model is built from a config, so nothing is
downloaded (HF_HUB_OFFLINE=1 makes sure). Bad folders: tests/test_mamba_lm.py."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never reach a hub

import pytest
import torch
from mambautil import max_rel, perturb, random_ids

from ssm_bridge.mamba.hf import config_to_hf
from ssm_bridge.mamba.lm import MambaConfig, MambaLM

transformers = pytest.importorskip("transformers")

# (config overrides, batch, length): widths, state sizes, ranks, kernels, biases and tying vary
SHAPES = [
    (dict(hidden_size=16, state_size=4, num_hidden_layers=2), 2, 13),
    (dict(hidden_size=24, state_size=1, num_hidden_layers=1, expand=1, conv_kernel=2,
          time_step_rank=3, use_bias=True, use_conv_bias=False, tie_word_embeddings=False),
     3, 17),
    (dict(hidden_size=8, state_size=16, num_hidden_layers=3, expand=3, conv_kernel=3,
          time_step_rank=1), 1, 1),
    (dict(hidden_size=40, state_size=8, num_hidden_layers=2, use_bias=True,
          tie_word_embeddings=False, layer_norm_epsilon=1e-6), 2, 40),
]


def hf_model(overrides: dict, seed: int = 0):
    """A transformers MambaForCausalLM with perturbed random weights (see mambautil)."""
    torch.manual_seed(seed)
    cfg = transformers.MambaConfig(vocab_size=37, **overrides)
    return perturb(transformers.MambaForCausalLM(cfg), seed).eval()


@pytest.mark.parametrize("overrides,batch,length", SHAPES)
def test_logits_equal_transformers(overrides, batch, length):
    ref = hf_model(overrides)
    ours = MambaLM.from_hf(ref)
    ids = random_ids(batch, length, seed=1)
    with torch.no_grad():
        expected = ref(ids).logits
        got = ours(ids)
    assert got.shape == expected.shape
    assert max_rel(got, expected) <= 1e-4
    for field in ("hidden_size", "state_size", "expand", "conv_kernel", "time_step_rank",
                  "use_bias", "use_conv_bias", "vocab_size", "layer_norm_epsilon",
                  "tie_word_embeddings"):
        want = getattr(ref.config, field)
        assert getattr(ours.config, field if field != "time_step_rank" else "dt_rank") == want


def test_folder_round_trip(tmp_path):
    """A folder saved by transformers (sharded safetensors) loads; a folder MambaLM writes
    loads in transformers; both give the reference logits."""
    ref = hf_model(SHAPES[3][0], seed=3)
    ref.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    ours = MambaLM.from_hf(tmp_path / "hf")
    ids = random_ids(2, 9)
    with torch.no_grad():
        expected = ref(ids).logits
        assert max_rel(ours(ids), expected) <= 1e-4
        ours.save_hf(tmp_path / "ours")
        back = transformers.MambaForCausalLM.from_pretrained(tmp_path / "ours").eval()
        assert max_rel(back(ids).logits, expected) <= 1e-4


def test_loaded_model_decodes_like_transformers():
    """Greedy continuations agree token for token (recurrent steps here, transformers' own
    cache there)."""
    ref = hf_model(SHAPES[0][0], seed=5)
    ours = MambaLM.from_hf(ref)
    prompt = random_ids(2, 5, seed=2)
    with torch.no_grad():
        want = ref.generate(prompt, max_new_tokens=8, do_sample=False, min_new_tokens=8,
                            pad_token_id=None, eos_token_id=None)
    assert torch.equal(ours.generate(prompt, max_new_tokens=8, temperature=0), want)


def test_in_memory_foreign_model_is_refused():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2,
                                                                vocab_size=10))
    with pytest.raises(ValueError, match="holds a 'gpt2' model"):
        MambaLM.from_hf(gpt2)
    with pytest.raises(TypeError, match="folder path or a transformers"):
        MambaLM.from_hf(42)


def test_config_to_hf_round_trips():
    c = MambaConfig(vocab_size=11, hidden_size=8, state_size=2, num_hidden_layers=1,
                    use_bias=True)
    d = config_to_hf(c)
    assert d["intermediate_size"] == 16 and d["time_step_rank"] == 1
    hc = transformers.MambaConfig(**{k: v for k, v in d.items() if k != "model_type"})
    assert MambaLM.from_hf(transformers.MambaForCausalLM(hc)).config.use_bias is True
