"""ssm_bridge.app.notebook: the setup every notebook calls first."""

from __future__ import annotations

import pytest
import torch

from ssm_bridge.app.notebook import setup, show
from viz import new_figure


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_setup_seeds_torch_and_fixes_the_thread_count(restore_threads):
    setup(seed=3, threads=1)
    assert torch.get_num_threads() == 1
    first = torch.randn(4)
    setup(seed=3, threads=2)
    assert torch.get_num_threads() == 2
    assert torch.equal(torch.randn(4), first)
    setup(seed=4)
    assert torch.get_num_threads() == 1 and not torch.equal(torch.randn(4), first)


def test_setup_refuses_zero_threads(restore_threads):
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        setup(threads=0)


def test_show_displays_the_figure_then_clears_it(monkeypatch):
    display = pytest.importorskip("IPython.display")
    shown = []
    monkeypatch.setattr(display, "display", lambda fig: shown.append(len(fig.axes)))
    fig, _ = new_figure(ncols=2)
    show(fig)
    assert shown == [2] and fig.axes == []
