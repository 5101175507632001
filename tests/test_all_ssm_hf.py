"""init_decoder_from_hf: the VLM's Mamba decoder initialised from a transformers
MambaForCausalLM folder (built from a tiny config and saved to a temp folder: nothing is
downloaded), and its vocabulary rule."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never reach a hub

import pytest
import torch
from conftest import batch, make_model
from mambautil import perturb

from ssm_bridge.model import VLMConfig

transformers = pytest.importorskip("transformers")


def vlm(**kw):
    cfg = VLMConfig.from_preset("tiny", decoder_type="mamba", cross_attn_layers=0,
                                **{"decoder_state_dim": 4, **kw})
    return make_model(cfg)


def hf_folder(tmp_path, vocab_size=64, **kw):
    """A perturbed tiny transformers Mamba (the tiny VLM's decoder shape), saved."""
    torch.manual_seed(0)
    cfg = transformers.MambaConfig(vocab_size=vocab_size, hidden_size=32, state_size=4,
                                   num_hidden_layers=2, **kw)
    ref = perturb(transformers.MambaForCausalLM(cfg)).eval()
    path = tmp_path / "hf"
    ref.save_pretrained(path)
    return ref, path


def test_same_vocabulary_gives_transformers_logits_over_image_and_text(tmp_path):
    ref, path = hf_folder(tmp_path)
    model = vlm()
    report = model.init_decoder_from_hf(path)
    assert report["embedding"] == "copied" and report["rows"] == 64
    images, tokens = batch(model.config)
    with torch.no_grad():
        media = model.encode_image(images)
        embeds = torch.cat([media, ref.get_input_embeddings()(tokens)], dim=1)
        want = ref(inputs_embeds=embeds).logits[:, -tokens.shape[1]:]
        got = model.decoder(media, tokens)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def test_other_vocabulary_keeps_the_embedding_or_maps_rows(tmp_path):
    ref, path = hf_folder(tmp_path, vocab_size=50)
    model = vlm()
    before = model.decoder.embeddings.weight.clone()
    report = model.init_decoder_from_hf(path)
    assert report == {"tensors": report["tensors"], "embedding": "initialised", "rows": 0}
    assert torch.equal(model.decoder.embeddings.weight, before)
    theirs = ref.state_dict()
    assert torch.equal(model.decoder.layers[1].mixer.A_log,
                       theirs["backbone.layers.1.mixer.A_log"])
    assert torch.equal(model.decoder.norm_f.weight, theirs["backbone.norm_f.weight"])
    emb = ref.get_input_embeddings().weight
    report = model.init_decoder_from_hf(path, vocab_map={3: 7, 4: [8, 9], 5: None})
    assert report["embedding"] == "mapped" and report["rows"] == 2
    w = model.decoder.embeddings.weight
    assert torch.equal(w[3], emb[7]) and torch.allclose(w[4], emb[8:10].mean(0))
    assert torch.equal(w[5], before[5])
    with pytest.raises(ValueError, match=r"vocab_map entry 3: 50 is out of range"):
        model.init_decoder_from_hf(path, vocab_map={3: 50})
    with pytest.raises(ValueError, match="one entry per token id of the VLM"):
        model.init_decoder_from_hf(path, vocab_map=[1, 2])


def test_untied_decoder_takes_head_rows_and_tied_one_refuses_an_untied_model(tmp_path):
    ref, path = hf_folder(tmp_path, vocab_size=50)
    model = vlm(tie_word_embeddings=False)
    model.init_decoder_from_hf(path, vocab_map={6: 11})
    assert torch.equal(model.decoder.lm_head.weight[6], ref.get_input_embeddings().weight[11])
    _, untied = hf_folder(tmp_path / "u", tie_word_embeddings=False)
    with pytest.raises(ValueError, match="tie_word_embeddings=False"):
        vlm().init_decoder_from_hf(untied)


def test_shape_mismatch_names_the_fields_to_set(tmp_path):
    _, path = hf_folder(tmp_path)
    with pytest.raises(ValueError) as e:
        vlm(text_embed_dim=48, text_num_heads=4).init_decoder_from_hf(path)
    assert "text_embed_dim=32" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="decoder_state_dim=4"):
        vlm(decoder_state_dim=8).init_decoder_from_hf(path)
    with pytest.raises(ValueError, match="needs decoder_type='mamba'"):
        make_model(VLMConfig.from_preset("tiny")).init_decoder_from_hf(path)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        vlm().init_decoder_from_hf(tmp_path / "absent")
