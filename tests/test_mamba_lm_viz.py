"""viz for a language model's scan: per-token heat maps (Δ per layer and token) and the hidden
attention matrix with token labels, drawn from MambaLM's own readings."""

from __future__ import annotations

import io

import numpy as np
import pytest
from mambautil import random_ids, tiny_mamba

import viz
from ssm_bridge.mamba import tools as mt


def test_token_heatmap_draws_delta_per_layer_and_token():
    model = tiny_mamba(num_hidden_layers=3)
    ids = random_ids(1, 12)
    delta = mt.token_stats(model, ids)["delta"][0]  # (3, 12)
    words = [f"w{i}" for i in ids[0].tolist()]
    fig = viz.token_heatmap(delta, tokens=words)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), delta.numpy(), rtol=1e-6)
    assert [t.get_text() for t in ax.get_xticklabels()] == words
    assert [t.get_text() for t in ax.get_yticklabels()] == ["layer 0", "layer 1", "layer 2"]
    fig.savefig(io.BytesIO(), format="png")


def test_attention_matrix_with_token_labels():
    model = tiny_mamba()
    ids = random_ids(1, 100)
    la = mt.token_attention(model, ids, layers=[1])[0]
    words = [str(i) for i in ids[0].tolist()]
    fig = viz.implicit_attention_matrix(la.alpha_abs[0], log=True, tokens=words)
    ax = fig.axes[0]
    shown = [t.get_text() for t in ax.get_xticklabels()]
    assert shown == words[::3] and len(ax.get_yticklabels()) == len(shown)  # thinned to <= 48
    fig.savefig(io.BytesIO(), format="png")


def test_bad_shapes_and_labels():
    with pytest.raises(ValueError, match=r"\(rows, L\)"):
        viz.token_heatmap(np.ones(5))
    with pytest.raises(ValueError, match="3 labels for 5 positions"):
        viz.token_heatmap(np.ones((2, 5)), tokens=["a", "b", "c"])
    with pytest.raises(ValueError, match="1 labels for 2 rows"):
        viz.token_heatmap(np.ones((2, 5)), rows=["x"])
    with pytest.raises(ValueError, match="one per token"):
        viz.implicit_attention_matrix(np.ones((4, 4)), tokens=["a"])
