"""save_pretrained / from_pretrained: safetensors + JSON, loud and specific on damage."""

import json

import pytest
import torch
from conftest import batch, make_model, open_gates
from safetensors import safe_open

from ssm_bridge import EnhancedVLM, VLMConfig


def test_roundtrip_gives_identical_logits(tmp_path, tiny_config):
    model = open_gates(make_model(tiny_config.replace(ssm_scan_order="cross")), 0.3)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    with safe_open(tmp_path / "model.safetensors", "pt") as f:  # a real safetensors file
        assert "decoder.tok_embed.weight" in f.keys()
    loaded = EnhancedVLM.from_pretrained(tmp_path)
    assert loaded.config == model.config
    images, tokens = batch(tiny_config)
    assert torch.equal(loaded(images, tokens), model(images, tokens))
    assert loaded.decoder.lm_head.weight is loaded.decoder.tok_embed.weight  # still tied


def test_untied_roundtrip(tmp_path, tiny_config):
    model = make_model(tiny_config.replace(tie_word_embeddings=False))
    model.save_pretrained(tmp_path)
    loaded = EnhancedVLM.from_pretrained(tmp_path)
    assert torch.equal(loaded.decoder.lm_head.weight, model.decoder.lm_head.weight)


def test_corrupt_weights_name_the_file(tmp_path, tiny_config):
    make_model(tiny_config).save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])  # truncated download
    with pytest.raises(ValueError) as e:
        EnhancedVLM.from_pretrained(tmp_path)
    assert "model.safetensors" in str(e.value) and "corrupt" in str(e.value)


def test_corrupt_config_names_the_file(tmp_path, tiny_config):
    make_model(tiny_config).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json"):
        EnhancedVLM.from_pretrained(tmp_path)


def test_config_weights_mismatch_names_the_keys(tmp_path, tiny_config):
    make_model(tiny_config).save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["config"]["ssm_num_layers"] = 3
    meta["config"]["ssm_state_dim"] = 8
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError) as e:
        EnhancedVLM.from_pretrained(tmp_path)
    msg = str(e.value)
    assert "missing keys" in msg and "bridge.layers.2" in msg
    assert "shape mismatches" in msg and "A_log" in msg


def test_missing_folder_and_unknown_config_field(tmp_path, tiny_config):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        EnhancedVLM.from_pretrained(tmp_path / "nope")
    make_model(tiny_config).save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["config"]["flux_capacitor"] = 1
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="flux_capacitor"):
        EnhancedVLM.from_pretrained(tmp_path)


def test_no_temp_files_left_and_overwrite(tmp_path, tiny_config):
    make_model(tiny_config, seed=0).save_pretrained(tmp_path)
    second = make_model(tiny_config, seed=1)
    second.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = EnhancedVLM.from_pretrained(tmp_path)
    assert torch.equal(loaded.vision.pos_embed, second.vision.pos_embed)
    saved = json.loads((tmp_path / "config.json").read_text())["config"]
    assert VLMConfig.from_dict(saved) == second.config
