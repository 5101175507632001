"""The notebooks' nbval markers: every comment that looks like a marker is one nbval honours.

nbval reads a marker only when the whole comment is the marker's name
(`# NBVAL_IGNORE_OUTPUT`); `# NBVAL_IGNORE_OUTPUT: wall time` is an ordinary comment, and
the output it meant to exempt is then compared strictly (and fails on another CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

nbval_plugin = pytest.importorskip("nbval.plugin")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
MARKER_PREFIXES = tuple({name.split("_")[0] for name in nbval_plugin.comment_markers})


def marker_like_comments(source: str) -> list[str]:
    """Comment lines whose text starts like an nbval marker (NBVAL..., PYTEST...)."""
    comments = [ln.strip() for ln in source.splitlines() if ln.strip().startswith("#")]
    return [c for c in comments if c.lstrip("#").strip().upper().startswith(MARKER_PREFIXES)]


def unhonoured_markers(source: str) -> list[str]:
    return [c for c in marker_like_comments(source)
            if not list(nbval_plugin.find_comment_markers(c))]


def test_the_check_catches_a_marker_with_text_after_it():
    assert unhonoured_markers("# NBVAL_IGNORE_OUTPUT: wall time\nx = 1") == [
        "# NBVAL_IGNORE_OUTPUT: wall time"]
    assert unhonoured_markers("# NBVAL_IGNORE_OUTPUT\n# wall time\nx = 1") == []
    assert unhonoured_markers("# nbval_skip\nx = 1") == ["# nbval_skip"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_marker_is_honoured_by_nbval(path):
    cells = json.loads(path.read_text())["cells"]
    bad = [f"cell {i}: {c!r}" for i, cell in enumerate(cells) if cell["cell_type"] == "code"
           for c in unhonoured_markers("".join(cell["source"]))]
    assert not bad, (f"{path.name}: nbval ignores these marker comments (a marker must be the "
                     f"whole comment, with the reason on the next line): {bad}")
