"""README.md's Python examples run as written (those that need a running app aside)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
OFFLINE = [b for b in BLOCKS if "127.0.0.1" not in b]  # the gradio_client one needs the app


def test_readme_has_examples():
    assert len(OFFLINE) >= 3 and len(BLOCKS) > len(OFFLINE)


@pytest.mark.parametrize("block", OFFLINE, ids=[b.splitlines()[0][:40] for b in OFFLINE])
def test_readme_example_runs(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that save ("ckpt/") write here
    exec(compile(block, str(README), "exec"), {"__name__": "readme_example"})
