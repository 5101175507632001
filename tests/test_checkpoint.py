"""save_pretrained / from_pretrained: safetensors + JSON, loud and specific on damage."""

import json

import pytest
import torch
from conftest import batch, make_model, open_gates
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ssm_bridge import EnhancedVLM, VLMConfig
from ssm_bridge.training.checkpoint import CheckpointError, CheckpointNotFoundError


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


# ---------------------------------------------------------------- hostile or broken files
def edit_config(path, **changes):
    meta = json.loads((path / "config.json").read_text())
    meta["config"].update(changes)
    (path / "config.json").write_text(json.dumps(meta))


def edit_weights(path, fn):
    """Rewrite model.safetensors with fn(name, tensor) -> tensor applied to each tensor."""
    weights = path / "model.safetensors"
    tensors = load_file(weights)
    save_file({k: fn(k, t) for k, t in tensors.items()}, weights)


@pytest.fixture
def saved(tmp_path, tiny_config):
    make_model(tiny_config).save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("changes, words", [
    (dict(text_embed_dim=10**9), ["text_embed_dim", "limit of 16384"]),
    (dict(vocab_size=10**9), ["vocab_size", "limit of 1048576"]),
    (dict(vision_mlp_ratio=1e9), ["vision_mlp_ratio", "(0, 64]"]),
    (dict(max_seq_length=10**9), ["max_seq_length", "limit of 131072"]),
    (dict(text_num_layers=10**6), ["text_num_layers", "limit of 256"]),
    (dict(img_size=2**20, patch_size=8), ["img_size", "limit"]),
    (dict(tie_word_embeddings="no"), ["tie_word_embeddings", "true or false", "'no'"]),
    (dict(dropout="0.1"), ["dropout", "finite number"]),
    (dict(text_num_heads=4.0), ["text_num_heads", "an integer"]),
])
def test_config_sizes_and_types_are_checked_first(saved, changes, words):
    edit_config(saved, **changes)
    with pytest.raises(CheckpointError) as e:
        EnhancedVLM.from_pretrained(saved)
    for w in ["config.json", *words]:
        assert w in str(e.value)


def test_weights_header_is_checked_before_the_model_is_built(saved, monkeypatch):
    """A config that fits the bounds but not the weights is refused from the safetensors
    header alone: the model is never built on a real device."""
    edit_config(saved, vocab_size=500_000)  # 64 MB of embeddings that the file lacks
    built = []
    original = EnhancedVLM._init_weights

    def spy(self):
        built.append(next(self.parameters()).device.type)
        original(self)

    monkeypatch.setattr(EnhancedVLM, "_init_weights", spy)
    with pytest.raises(CheckpointError, match=r"shape mismatches.*tok_embed"):
        EnhancedVLM.from_pretrained(saved)
    assert built == ["meta"]


@pytest.mark.parametrize("bad, words", [
    (lambda t: t.index_fill(0, torch.tensor([0]), float("nan")), ["NaN or infinite"]),
    (lambda t: t.index_fill(0, torch.tensor([0]), float("inf")), ["NaN or infinite"]),
    (lambda t: t.to(torch.int32), ["I32", "floating point"]),
    (lambda t: t.double().index_fill(0, torch.tensor([0]), 1e300), ["beyond the range"]),
])
def test_damaged_weights_are_refused(saved, bad, words):
    edit_weights(saved, lambda k, t: bad(t) if k == "decoder.tok_embed.weight" else t)
    with pytest.raises(CheckpointError) as e:
        EnhancedVLM.from_pretrained(saved)
    for w in ["model.safetensors", "decoder.tok_embed.weight", *words]:
        assert w in str(e.value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_float_weights_of_another_width_load_exactly(saved, dtype):
    reference = EnhancedVLM.from_pretrained(saved)
    edit_weights(saved, lambda k, t: t.to(dtype))
    loaded = EnhancedVLM.from_pretrained(saved)
    for (name, a), b in zip(loaded.state_dict().items(), reference.state_dict().values()):
        assert a.dtype == torch.float32, name
        assert torch.equal(a, b.to(dtype).float()), name


def test_missing_weights_file_is_one_line(saved):
    (saved / "model.safetensors").unlink()  # a save killed between its two files
    with pytest.raises(CheckpointNotFoundError) as e:
        EnhancedVLM.from_pretrained(saved)
    assert "model.safetensors not found" in str(e.value) and "\n" not in str(e.value)
