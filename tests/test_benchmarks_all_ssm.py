"""The attention-free VLM's benchmarks (benchmarks/bench_all_ssm.py, issue 17) run and
return well-formed results: every key, finite positive timings and ratios, both models,
Mamba and transformer decoders side by side at each width. No speed thresholds here: the
targets live in the benchmarks' results (benchmarks/run.py prints them against each)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_all_ssm  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

DECODERS = ("mamba", "transformer")
WIDTHS = {"": 128, "_w512": 512}  # key suffix: the decoder width (shapes-tiny's; WIDE)
DEPTH = 2  # shapes-tiny's decoder layers
SMALL = dict(positions=(6, 16), window=4)  # a few steps, not 500 tokens of decoding


def run_module():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_entry(e: dict, unit: str, target=None) -> float:
    assert e["unit"] == unit and e["target"] == target, e
    assert isinstance(e["value"], float) and math.isfinite(e["value"]) and e["value"] > 0, e
    return e["value"]


def test_long_decode_ratio_times_both_decoders_at_each_width(monkeypatch):
    built = []
    real = bench_all_ssm.decoder_model

    def spy(decoder_type, *args, **kwargs):
        model = real(decoder_type, *args, **kwargs)
        built.append((decoder_type, model.config.text_embed_dim,
                      model.config.text_num_layers, model.config.max_seq_length))
        return model

    monkeypatch.setattr(bench_all_ssm, "decoder_model", spy)
    out = bench_all_ssm.long_decode_ratio(True, **SMALL)
    late = SMALL["positions"][1]
    names = [f"{d}{suffix}" for suffix in WIDTHS for d in DECODERS]
    assert set(out) == {f"{kind}_{name}" for name in names
                        for kind in ("long_decode_ratio", f"decode_ms_per_token_at_{late}")}
    for name in names:
        check_entry(out[f"long_decode_ratio_{name}"], "x",
                    1.1 if name.startswith("mamba") else None)
        assert out[f"long_decode_ratio_{name}"]["lower_is_better"] is True
        check_entry(out[f"decode_ms_per_token_at_{late}_{name}"], "ms")
    # each width has a Mamba and a transformer decoder, of the same width and depth
    length = late + SMALL["window"] // 2 + 2
    assert sorted(built) == sorted((d, width, DEPTH, length) for width in WIDTHS.values()
                                   for d in DECODERS), built


def test_long_decode_ratio_defaults_measure_tokens_20_and_500():
    assert bench_all_ssm.POSITIONS == (20, 500) and bench_all_ssm.WINDOW == 20
    model = bench_all_ssm.decoder_model("mamba")
    assert model.config.max_seq_length == 500 + 10 + 2
    with pytest.raises(ValueError, match="not overlap"):
        bench_all_ssm.long_decode_ratio(True, positions=(6, 8), window=4)
    with pytest.raises(ValueError, match="after token 0"):
        bench_all_ssm.long_decode_ratio(True, positions=(2, 16), window=4)


def test_all_ssm_caption_ms_through_run_py(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert run_module().main(["--quick", "--only=all_ssm_caption_ms", f"--json={path}"]) == 0
    saved = json.loads(path.read_text())
    assert saved["machine"] and set(saved["results"]) == {
        "caption_ms_shapes_all_ssm", "caption_ms_shapes_tiny"}
    for entry in saved["results"].values():
        check_entry(entry, "ms")
    table = capsys.readouterr().out
    assert "caption_ms_shapes_all_ssm" in table and "caption_ms_shapes_tiny" in table


def test_run_py_registers_both_benchmarks(monkeypatch):
    run = run_module()
    for name in ("long_decode_ratio", "all_ssm_caption_ms"):
        monkeypatch.setattr(bench_all_ssm, name, lambda quick, name=name: (name, quick))
        assert run.BENCHMARKS[name](True) == (name, True)
