"""The sub-package layout: every module has one home, and the 0.1 flat names still work."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import ssm_bridge
from ssm_bridge._moved import MOVED

PKG = Path(ssm_bridge.__file__).parent
# The public faces that stay at the top: the full model, its config, the CLI.
TOP_LEVEL = {"__init__", "_moved", "model", "config", "cli"}


def test_top_level_holds_only_the_public_faces():
    assert {p.stem for p in PKG.glob("*.py")} == TOP_LEVEL


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_flat_name_is_the_same_module(old):
    moved = importlib.import_module(f"ssm_bridge.{MOVED[old]}")
    assert importlib.import_module(f"ssm_bridge.{old}") is moved
    assert not (PKG / f"{old}.py").exists()


def test_old_names_reach_their_attributes():
    from ssm_bridge.mamba_lm import MambaLM
    from ssm_bridge.maps import analyse

    from ssm_bridge.model import EnhancedVLM, VLMConfig

    assert analyse.__module__ == "ssm_bridge.interp.maps"
    assert MambaLM.__module__ == "ssm_bridge.mamba.lm"
    assert EnhancedVLM.__module__ == "ssm_bridge.model" and VLMConfig is ssm_bridge.VLMConfig


def test_unknown_module_still_fails():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("ssm_bridge.no_such_module")


@pytest.mark.parametrize("module", ["ssm_bridge.train", "ssm_bridge.training.train"])
def test_python_dash_m_runs_old_and_new_names(module):
    res = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "--preset" in res.stdout
