"""The app starts from an installed package, without a checkout: build the wheel, install
it (alone, no dependencies) into a fresh virtual environment that borrows this one's
third-party libraries, start `ssm-bridge app` from a folder outside the checkout and
caption a scene through /caption."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("gradio_client")
from apputil import ROOT, free_port

from ssm_bridge import load_pretrained
from ssm_bridge.data import make_scene


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert out.returncode == 0, f"{cmd}: {out.stderr[-2000:]}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding only the wheel; its `ssm-bridge` script."""
    tmp = tmp_path_factory.mktemp("wheel")
    # --no-build-isolation: build with this environment's setuptools (nothing downloaded)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp / "dist"), str(ROOT)])
    wheel = next((tmp / "dist").glob("ssm_bridge-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "ssm_bridge/app/serve.py" in names and "ssm_bridge/checkpoints/shapes-tiny/" \
        "model.safetensors" in names and any(n.startswith("viz/") for n in names)
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    site = next(venv.glob("lib/python*/site-packages"))
    # torch, gradio, ... from this environment, as a plain path: its .pth files (the
    # editable install of the checkout) are not processed, so ssm_bridge is the wheel's
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--no-deps", "--no-index", "-q", str(wheel)])
    return venv / "bin" / "ssm-bridge"


def test_the_installed_package_serves_the_app(installed, tmp_path):
    from gradio_client import Client, handle_file
    from PIL import Image

    where = subprocess.run([installed.parent / "python", "-c",
                            "import ssm_bridge; print(ssm_bridge.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert str(ROOT) not in where.stdout and "site-packages" in where.stdout, where
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([installed, "app", "--port", str(port)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env)
    try:
        client = None
        deadline = time.monotonic() + 240
        while client is None and time.monotonic() < deadline:
            assert server.poll() is None, server.stdout.read()
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            except Exception:  # not listening yet
                time.sleep(1)
        assert client is not None, "the installed app did not start within 240 s"
        scene = make_scene("test", 4, load_pretrained("shapes-tiny").scene_config)
        png = tmp_path / "scene.png"
        Image.fromarray(scene.image).save(png)
        assert client.predict(handle_file(str(png)), api_name="/caption") == scene.caption
    finally:
        server.terminate()
        server.wait(30)
