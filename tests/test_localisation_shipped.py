"""Localisation on the shipped attention-free checkpoint (issue 17): in the `ssm-bridge
interpret` table on `shapes-all-ssm`, the word -> image hidden attention rolled back to the
patches (hidden_rollout) points at the named object at least 2x as often as the random map,
and integrated gradients at least 4x.

The 100-scene table (`ssm-bridge interpret --checkpoint shapes-all-ssm --num 100`: 204
word-object pairs, random pointing 0.123) reads rollout 4.08x and IG 7.16x. This test scores
the first N_SCENES test scenes (~25 s on one core). Measured there (43 pairs): rollout 0.535,
IG 0.814; the seeded random map (seed 0, as the table prints it) 0.163, so 3.29x and 5.0x;
the random map's exact expected pointing rate 0.129, so 4.13x and 6.29x. Over the ten
10-scene windows of the first 100 scenes the exact ratios stay within 3.15-4.55x (rollout)
and 5.88-8.24x (IG): the margin is the model's, not the subset's. The seeded baseline is the
noisy part at this size (0.023-0.256 over 50 seeds), hence both checks."""

from __future__ import annotations

import pytest
import torch

from ssm_bridge import load_pretrained
from ssm_bridge.interp import interpret
from ssm_bridge.interp import localization as loc

N_SCENES = 20
BARS = {"hidden_rollout": 2.0, "ig": 4.0}  # issue 17: x the random map's pointing rate

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def chance(masks, grid: tuple[int, int]) -> float:
    """The random map's expected pointing-game score: its maximum falls on any of the
    grid's cells alike, so on the object with the fraction of cells the mask overlaps."""
    cells = [loc.cell_index(grid, tuple(m.shape))[torch.as_tensor(m)].unique().numel()
             for m in masks]
    return sum(cells) / (len(masks) * grid[0] * grid[1])


@pytest.fixture(scope="module")
def table():
    """(rows of localisation_table, the collected scores behind them)."""
    scores = {}
    real = interpret.collect_scores

    def keep(*args, **kwargs):
        scores.update(real(*args, **kwargs))
        return scores

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(interpret, "collect_scores", keep)
        rows = interpret.localisation_table(load_pretrained("shapes-all-ssm"), n=N_SCENES,
                                            maps=list(BARS), progress=False)
    return {r["map"]: r for r in rows}, scores


def test_the_table_scores_enough_pairs(table):
    rows, _ = table
    assert list(rows) == list(BARS)
    for row in rows.values():
        assert row["images"] >= N_SCENES - 1 and row["n"] >= 2 * row["images"], row
        assert 0 < row["random_pointing_game"] < 0.3, row


@pytest.mark.parametrize("kind", list(BARS))
def test_maps_point_at_the_named_object_above_the_issue_bar(table, kind):
    rows, scores = table
    row = rows[kind]
    assert row["pointing_ratio"] >= BARS[kind], row  # the table's seeded random map
    expected = chance(scores["masks"], scores["grid"])  # and its seed-free expectation
    assert row["pointing_game"] >= BARS[kind] * expected, (row, expected)
