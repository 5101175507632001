"""precision="auto": bf16 only where the device computes it natively, recorded in the run
folder; an explicit bf16 on a CPU that emulates it warns with the measured slowdown."""

import json
import time

import pytest
import torch
from test_train import tiny

from ssm_bridge.tools.ablate import STUDY_TRAIN, Study, run_config
from ssm_bridge.training import precision as precision
from ssm_bridge.training.precision import choose_precision, resolve_precision
from ssm_bridge.training.train import build
from ssm_bridge.training.train_config import TRAIN_PRESETS, TrainConfig

CPU = torch.device("cpu")
X86 = {"architecture": "x86_64", "avx2": True, "avx512_f": False}


@pytest.fixture
def cpu_caps(monkeypatch):
    """Set what torch reports about this CPU; the per-process choice is forgotten."""

    def set_caps(caps: dict, level: str = "AVX2") -> None:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: level)
        precision._choose.cache_clear()
        precision.bf16_slowdown.cache_clear()

    yield set_caps
    precision._choose.cache_clear()
    precision.bf16_slowdown.cache_clear()


@pytest.fixture
def matmul_times(monkeypatch):
    """Fake matmul timings: seconds per dtype."""

    def set_times(bf16: float, fp32: float) -> None:
        times = {torch.bfloat16: bf16, torch.float32: fp32}
        monkeypatch.setattr(precision, "matmul_seconds", lambda dtype, device: times[dtype])

    return set_times


def test_auto_picks_bf16_only_on_native_bf16(cpu_caps, matmul_times):
    matmul_times(bf16=0.001, fp32=0.002)  # never consulted where the flags decide
    cpu_caps({**X86, "avx512_f": True, "avx512_bf16": True}, "AVX512")
    assert choose_precision("cpu") == ("bf16", "this CPU computes bf16 natively "
                                               "(AVX512 with AVX512-BF16)")
    cpu_caps({**X86, "amx_bf16": True, "amx_tile": True})
    assert choose_precision(CPU)[0] == "bf16" and "AMX-BF16" in choose_precision(CPU)[1]
    cpu_caps(X86)  # AVX2 only (this machine): emulated
    assert choose_precision(CPU) == ("fp32", "this CPU has no native bf16 (AVX2): bf16 "
                                             "would be emulated")
    cpu_caps({**X86, "avx512_f": True}, "AVX512")  # no bf16 extension: emulated too
    assert choose_precision(CPU) == ("fp32", "this CPU has no native bf16 (AVX512): bf16 "
                                             "would be emulated")
    # Another architecture without flags torch knows: the faster matmul decides.
    cpu_caps({"architecture": "aarch64", "neon": True}, "DEFAULT")
    assert choose_precision(CPU) == ("bf16", "a bf16 matmul ran 2.0x faster than fp32 here "
                                             "(DEFAULT)")
    cpu_caps({"architecture": "aarch64", "neon": True}, "DEFAULT")
    matmul_times(bf16=0.02, fp32=0.001)
    assert choose_precision(CPU) == ("fp32", "a bf16 matmul ran 20.0x slower than fp32 here "
                                             "(DEFAULT)")


def test_older_torch_without_the_capability_map_uses_its_probes(cpu_caps, monkeypatch):
    cpu_caps({}, "AVX512")
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    monkeypatch.setattr(torch._C._cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert precision.cpu_bf16_support() == (True, "AVX512 with AVX512-BF16")
    monkeypatch.setattr(torch._C._cpu, "_is_avx512_bf16_supported", lambda: False)
    assert precision.cpu_bf16_support() == (False, "AVX512")


def test_explicit_bf16_without_native_support_warns_with_the_slowdown(
        tmp_path, cpu_caps, matmul_times, capsys):
    cpu_caps(X86)
    matmul_times(bf16=0.02, fp32=0.001)
    chosen, why, warning = resolve_precision("bf16", CPU)
    assert (chosen, why) == ("bf16", "requested")  # still what was asked for
    assert "without native bf16 (AVX2): a bf16 matmul ran 20.0x slower than fp32" in warning
    trainer = build(tiny(tmp_path, precision="bf16", num_train=8, eval_num=0))
    assert trainer.precision == "bf16"
    assert "warning: --precision=bf16 on a CPU without native bf16" in capsys.readouterr().err
    cpu_caps({**X86, "avx512_bf16": True})
    assert resolve_precision("bf16", CPU)[2] is None  # native: no warning
    assert resolve_precision("fp32", CPU) == ("fp32", "requested", None)


def test_the_slowdown_is_measured_quickly():
    precision.bf16_slowdown.cache_clear()
    t0 = time.perf_counter()
    slowdown = precision.bf16_slowdown("cpu")
    assert slowdown > 0 and time.perf_counter() - t0 < 3.0
    if precision.cpu_bf16_support()[0] is False:  # emulated (this AVX2 machine: ~40x)
        assert slowdown > 1.5


@pytest.mark.parametrize("native", [True, False])
def test_auto_trains_in_the_chosen_precision_and_records_why(tmp_path, cpu_caps, capsys,
                                                             native):
    cpu_caps({**X86, "avx512_bf16": native})
    cfg = tiny(tmp_path, max_steps=1, num_train=8, batch_size=2, eval_num=0, progress=True)
    assert cfg.precision == "auto"
    trainer = build(cfg)
    dtypes = []
    trainer.model.decoder.lm_head.register_forward_hook(
        lambda m, i, out: dtypes.append(out.dtype))
    trainer.fit()
    want = "bf16" if native else "fp32"
    assert dtypes == [torch.bfloat16 if native else torch.float32]
    run = tmp_path / "run"
    assert json.loads((run / "train_config.json").read_text())["precision"] == "auto"
    info = json.loads((run / "run_info.json").read_text())
    assert info["precision"] == "auto" and info["precision_resolved"] == want
    assert info["precision_reason"].startswith("auto: this CPU ")
    assert f"precision {want} (auto: this CPU " in capsys.readouterr().err


def test_presets_default_to_auto_and_the_ablation_stays_fp32(tmp_path):
    assert TrainConfig().precision == "auto"
    assert TRAIN_PRESETS["shapes-tiny"]["precision"] == "auto"
    assert "precision" not in TRAIN_PRESETS["test-tiny"]  # the default: auto
    assert STUDY_TRAIN["precision"] == "fp32"  # the published study's budget is pinned
    assert run_config(Study(runs=str(tmp_path)), "ssm", 0).precision == "fp32"
