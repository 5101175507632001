"""`make lab` starts JupyterLab on notebooks/ with this environment as the notebooks' kernel."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from apputil import free_port

ROOT = Path(__file__).resolve().parents[1]


def lab_command(port: int, token: str) -> list[str]:
    """The command `make lab` runs (read from make itself, so the test tracks the Makefile)."""
    args = f"--no-browser --port={port} --IdentityProvider.token={token} --ServerApp.ip=127.0.0.1"
    out = subprocess.run(["make", "-s", "-n", "lab", f"ARGS={args}"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return shlex.split(out.strip().splitlines()[-1])


def get_json(url: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.slow
def test_make_lab_serves_the_notebooks_with_this_environments_kernel():
    if shutil.which("make") is None:
        pytest.skip("no make")
    port, token = free_port(), "ssm-bridge-test"
    cmd = lab_command(port, token)
    assert Path(cmd[0]).name == "jupyter" and cmd[1] == "lab"
    if not Path(ROOT, cmd[0]).exists():
        pytest.skip(f"{cmd[0]} not installed (run make venv)")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}/api"
        contents = get_json(f"{base}/contents?token={token}")
        names = {item["name"] for item in contents["content"]}
        assert "01_quickstart.ipynb" in names
        specs = get_json(f"{base}/kernelspecs?token={token}")
        spec = specs["kernelspecs"][specs["default"]]["spec"]
        notebook_kernel = json.loads((ROOT / "notebooks/01_quickstart.ipynb").read_text())[
            "metadata"]["kernelspec"]["name"]
        assert notebook_kernel == specs["default"]
        # "python" in a kernelspec means the Python that serves the lab: the environment's
        assert spec["argv"][:3] == ["python", "-m", "ipykernel_launcher"]
        assert Path(ROOT, cmd[0]).parent == Path(ROOT, ".venv/bin")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
