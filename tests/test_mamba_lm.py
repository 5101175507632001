"""MambaLM: the bridge's scan direction in a Mamba-1 language model. Step-by-step decoding
equals the full forward (fp32, <= 1e-4), generation is the forward's argmax, hooks fire and
record while decoding, and bad input (ids, states, folders) gets a one-line error."""

from __future__ import annotations

import json

import pytest
import torch
from mambautil import max_rel, random_ids, tiny_mamba
from safetensors.torch import load_file, save_file

from ssm_bridge.core.ssm import ScanDirection
from ssm_bridge.mamba.lm import MambaConfig, MambaLM, MambaMixer

DECODE_SHAPES = [dict(), dict(conv_kernel=2, state_size=1, expand=1, use_conv_bias=False),
                 dict(num_hidden_layers=3, use_bias=True, tie_word_embeddings=False,
                      time_step_rank=5)]


def test_mixer_is_the_bridge_scan_direction():
    """One S6 in the kit: the mixer is a ScanDirection and runs its scan and hooks as they are."""
    model = tiny_mamba()
    mixer = model.layers[0].mixer
    assert isinstance(mixer, ScanDirection)
    for method in ("ssm", "ssm_explicit", "dt_bc", "causal_conv", "step"):
        assert getattr(MambaMixer, method) is getattr(ScanDirection, method)
    names = model.hook_names()
    assert names[0] == "hook_embed" and names[-2:] == ["hook_resid_final", "hook_logits"]
    per_layer = [n.removeprefix("layers.1.") for n in names if n.startswith("layers.1.")]
    assert per_layer == [f"mixer.hook_{h}" for h in ("conv", "delta", "B", "C", "A_bar", "dBx",
                                                     "state", "ssm_out", "out", "gate")] + [
        "hook_resid_post"]
    assert "layers.0.mixer.hook_state" not in model.hook_names(heavy=False)


def test_seeded_init_is_reproducible_and_leaves_the_global_rng():
    c = MambaConfig(**{"vocab_size": 11, "hidden_size": 8, "num_hidden_layers": 1})
    before = torch.random.get_rng_state()
    a, b = MambaLM(c, seed=3), MambaLM(c, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("overrides", DECODE_SHAPES)
def test_step_by_step_decoding_equals_forward(overrides):
    model = tiny_mamba(**overrides)
    ids = random_ids(3, 23)
    with torch.no_grad():
        full = model(ids)  # (3, 23, V)
        state = model.new_state(3)
        steps = torch.stack([model.step(ids[:, t], state) for t in range(23)], dim=1)
        state2 = model.new_state(3)
        prefill = model(ids[:, :9], state2)  # a prompt, then steps
        rest = torch.stack([model.step(ids[:, t], state2) for t in range(9, 23)], dim=1)
    assert max_rel(steps, full) <= 1e-4
    assert max_rel(torch.cat([prefill, rest], 1), full) <= 1e-4
    assert state.position == state2.position == 23


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("heavy", [False, True])
def test_a_prompt_leaves_only_the_last_state(backend, heavy):
    """After a prompt the state holds h (B, D, N) alone. Before, it was a view into the
    prompt's whole (B, L, D, N) trajectory, which it kept alive through the decoding."""
    model = tiny_mamba(scan_backend=backend)
    state = model.new_state(2)
    watch = [("layers.*.mixer.hook_state", lambda t, name: None)] if heavy else []
    with torch.no_grad(), model.hooks(watch, heavy=True):
        model(random_ids(2, 30), state)
    for layer in state.layers:
        assert layer["ssm"].shape == (2, 32, 4)
        assert layer["ssm"].untyped_storage().nbytes() == 2 * 32 * 4 * 4


def test_decoding_state_does_not_grow():
    model = tiny_mamba()
    state = model.new_state(2)
    shapes = [{k: v.shape for k, v in layer.items()} for layer in state.layers]
    with torch.no_grad():
        for t in range(40):
            model.step(torch.full((2,), t % 37), state)
    assert [{k: v.shape for k, v in layer.items()} for layer in state.layers] == shapes


def test_greedy_generation_is_the_forward_argmax():
    model = tiny_mamba(seed=1)
    prompt = random_ids(2, 6, seed=4)
    ids = model.generate(prompt, max_new_tokens=12, temperature=0)
    assert ids.shape == (2, 18) and torch.equal(ids[:, :6], prompt)
    with torch.no_grad():
        argmax = model(ids[:, :-1]).argmax(-1)  # (2, 17)
    assert torch.equal(argmax[:, 5:], ids[:, 6:])


def test_sampling_is_seeded():
    model = tiny_mamba()
    prompt = random_ids(1, 3)
    a = model.generate(prompt, 15, temperature=1.0, top_k=10, top_p=0.9, seed=7)
    b = model.generate(prompt[0].tolist(), 15, temperature=1.0, top_k=10, top_p=0.9, seed=7)
    c = model.generate(prompt, 15, temperature=1.0, top_k=10, top_p=0.9, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_eos_stops_rows():
    model = tiny_mamba()
    prompt = random_ids(2, 4)
    free = model.generate(prompt, 10, temperature=0)
    eos = int(free[0, 6])  # row 0 produces it at its third new token
    ids = model.generate(prompt, 10, temperature=0, eos_token_id=eos)
    first = (ids[0, 4:] == eos).nonzero()[0, 0].item()
    assert (ids[0, 4 + first:] == eos).all()


def test_decoding_records_what_a_forward_caches():
    """A per-token cache of Δ, h and the gate recorded while decoding (prompt forward, then
    length-1 steps) equals run_with_cache on the same tokens."""
    model = tiny_mamba()
    names = ["layers.*.mixer.hook_delta", "layers.1.mixer.hook_state", "layers.0.mixer.hook_gate"]
    ids, rec = model.generate(random_ids(2, 5), 9, temperature=0, record=names, heavy=True)
    _, cache = model.run_with_cache(ids[:, :-1], names, heavy=True)
    assert sorted(rec) == sorted(cache) and len(rec) == 4
    for name in cache:
        assert rec[name].shape[:2] == (2, 13)
        torch.testing.assert_close(rec[name], cache[name], rtol=1e-5, atol=1e-5)
    assert torch.equal(ids, model.generate(random_ids(2, 5), 9, temperature=0))


def test_hooks_act_during_decoding():
    """With every gate shut, each block adds nothing: the model becomes a bigram table
    (embedding -> norm_f -> head), in a forward and token by token alike."""
    model = tiny_mamba(use_bias=False)
    shut = [("layers.*.mixer.hook_gate", lambda t, name: torch.zeros_like(t))]
    with model.hooks(shut):
        ids = model.generate(random_ids(1, 2), 8, temperature=0)
    with torch.no_grad():
        table = model.norm_f(model.embeddings.weight) @ model.embeddings.weight.T  # (V, V)
    assert torch.equal(ids[0, 2:], table.argmax(-1)[ids[0, 1:-1]])


def test_run_with_cache_keeps_the_logits():
    model = tiny_mamba()
    ids = random_ids(2, 7)
    logits, cache = model.run_with_cache(ids)
    with torch.no_grad():
        assert torch.equal(logits, model(ids))
    assert "layers.0.mixer.hook_state" not in cache and cache["hook_logits"].shape == (2, 7, 37)


@pytest.mark.parametrize("call,message", [
    (lambda m: m(torch.zeros(3, dtype=torch.long)), "2-D tensor"),
    (lambda m: m(torch.zeros(1, 3)), "integer token id"),
    (lambda m: m(torch.full((1, 3), 37)), "id 37, outside the vocabulary"),
    (lambda m: m.generate([1, 2], max_new_tokens=0), "max_new_tokens must be an integer >= 1"),
    (lambda m: m.generate([1, 2], 3, temperature=-1), "temperature must be"),
    (lambda m: m.generate([1, 2], 3, top_p=0), "top_p must be in"),
    (lambda m: m.run_with_cache(torch.ones(1, 2, dtype=torch.long), "layers.9.*"),
     "no hook point matches"),
])
def test_bad_input_gets_one_line(call, message):
    with pytest.raises(ValueError, match=message) as e:
        call(tiny_mamba())
    assert "\n" not in str(e.value)


def test_state_misuse():
    model = tiny_mamba()
    state = model.new_state(2)
    with torch.no_grad():
        model(random_ids(2, 4), state)
        with pytest.raises(ValueError, match="takes \\(batch=2, 1\\) ids"):
            model(random_ids(2, 4), state)
        with pytest.raises(ValueError, match="batch 2"):
            model(random_ids(3, 1), state)


@pytest.mark.parametrize("bad", [dict(hidden_size=0), dict(hidden_act="gelu"),
                                 dict(time_step_rank="big"), dict(scan_backend="gpu")])
def test_bad_config(bad):
    with pytest.raises(ValueError, match="MambaConfig"):
        MambaConfig(**bad)


# ---------------------------------------------------------------- bad folders
def write_folder(path, config: dict, tensors: dict[str, torch.Tensor]):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(path / "model.safetensors"))
    return path


@pytest.fixture()
def good_folder(tmp_path):
    model = MambaLM(MambaConfig(vocab_size=11, hidden_size=8, state_size=2,
                                num_hidden_layers=1), seed=0)
    return model.save_hf(tmp_path / "good")


def test_good_folder_loads(good_folder):
    model = MambaLM.from_hf(good_folder)
    assert model.config.num_hidden_layers == 1 and model.output_weight is model.embeddings.weight


def edit(folder, tmp_path, config=None, tensors=None):
    cfg = json.loads((folder / "config.json").read_text())
    ts = load_file(str(folder / "model.safetensors"))
    return write_folder(tmp_path / "bad", config(cfg) if config else cfg,
                        tensors(ts) if tensors else ts)


@pytest.mark.parametrize("change,message", [
    (dict(tensors=lambda t: {**t, "backbone.layers.0.mixer.extra": torch.zeros(2)}),
     r"1 stored tensor\(s\) have no place in MambaLM: backbone.layers.0.mixer.extra"),
    (dict(tensors=lambda t: {k: v for k, v in t.items() if not k.endswith("A_log")}),
     r"lack 1 tensor\(s\) the config needs: layers.0.mixer.A_log"),
    (dict(tensors=lambda t: {**t, "backbone.layers.0.mixer.D": torch.zeros(3)}),
     r"shapes do not match config.json: backbone.layers.0.mixer.D \(3,\) \(expected \(16,\)\)"),
    (dict(tensors=lambda t: {**t, "lm_head.weight": torch.zeros(11, 8)}),
     "lm_head.weight differs from the embeddings"),
    (dict(config=lambda c: {**c, "intermediate_size": 99}), "intermediate_size=99"),
    (dict(config=lambda c: {**c, "model_type": "mamba2", "architectures": ["Mamba2ForCausalLM"]}),
     r"holds a 'mamba2' model \(Mamba2ForCausalLM\), not Mamba-1"),
    (dict(config=lambda c: {**c, "hidden_size": 0}), "hidden_size must be an integer >= 1"),
    # a hostile config fails on its types and sizes before anything is built
    (dict(config=lambda c: {**c, "tie_word_embeddings": "no"}),
     "tie_word_embeddings must be true or false"),
    (dict(config=lambda c: {**c, "num_hidden_layers": 10**6}),
     "num_hidden_layers=1000000 is over its limit of 256"),
    (dict(config=lambda c: {**c, "hidden_size": 10**9}), "hidden_size=1000000000 is over"),
])
def test_bad_folder_errors(good_folder, tmp_path, change, message):
    with pytest.raises(ValueError, match=message) as e:
        MambaLM.from_hf(edit(good_folder, tmp_path, **change))
    assert "\n" not in str(e.value)


def test_missing_or_foreign_paths(tmp_path, good_folder):
    with pytest.raises(FileNotFoundError, match=r"no such folder.*never downloads"):
        MambaLM.from_hf(tmp_path / "state-spaces/mamba-130m-hf")
    with pytest.raises(ValueError, match="is a file"):
        MambaLM.from_hf(good_folder / "model.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"has no config\.json"):
        MambaLM.from_hf(tmp_path / "empty")
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text((good_folder / "config.json").read_text())
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match=r"only pickle weights.*never loads pickle"):
        MambaLM.from_hf(tmp_path / "pickled")
    llama = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    with pytest.raises(ValueError, match="holds a 'llama' model"):
        MambaLM.from_hf(write_folder(tmp_path / "llama", llama, {"x": torch.zeros(1)}))


