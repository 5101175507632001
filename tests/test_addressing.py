"""Addressing an SSM layer (ssm_bridge.core.addressing): hook names of both mixer kinds, the
scan-order permutations and their inverses, the one layer-index rule, and the errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import batch, make_model
from mambautil import random_ids, tiny_mamba

from ssm_bridge import VLMConfig
from ssm_bridge.config import SCAN_DIRECTIONS
from ssm_bridge.core import hooks as hk
from ssm_bridge.core.addressing import (
    TOKEN_ORDER,
    SSMStack,
    direction_perm,
    in_scan_order,
    inverse_perm,
    layer_index,
    scan_positions,
    ssm_stacks,
    to_scan_order,
    to_token_order,
)
from ssm_bridge.interp import implicit_attention as ia
from ssm_bridge.interp import interventions as iv
from ssm_bridge.interp import maps
from ssm_bridge.mamba import tools as mt


def vlm(order: str = "cross", **overrides):
    return make_model(VLMConfig.from_preset("tiny", ssm_scan_order=order, **overrides))


@pytest.fixture(scope="module")
def cross():
    return vlm("cross")


@pytest.fixture(scope="module")
def lm():
    return tiny_mamba()


# ---------------------------------------------------------------- hook names
def test_bridge_hook_names(cross):
    bridge = SSMStack.of(cross)
    assert (bridge.name, bridge.path, len(bridge)) == ("bridge", "bridge.layers", 2)
    assert bridge.hook("hook_delta", 0, 1) == "bridge.layers.0.mixer.dirs.1.hook_delta"
    assert bridge.hook("hook_state", -1, "col_rev") == "bridge.layers.1.mixer.dirs.3.hook_state"
    assert bridge.hook("hook_gate", 1) == "bridge.layers.1.mixer.hook_gate"
    assert bridge.hook("hook_y", 0) == "bridge.layers.0.mixer.hook_y"
    assert bridge.hook("hook_resid_post", 0) == "bridge.layers.0.hook_resid_post"
    assert bridge.glob("hook_delta") == "bridge.layers.*.mixer.dirs.*.hook_delta"
    assert bridge.glob("hook_gate") == "bridge.layers.*.mixer.hook_gate"
    assert bridge.glob("hook_conv", layer=-1) == "bridge.layers.1.mixer.dirs.*.hook_conv"
    assert bridge[0].direction_names == SCAN_DIRECTIONS["cross"]
    assert bridge[0].mixer_path == "bridge.layers.0.mixer"
    assert bridge[0].direction_path("col") == "bridge.layers.0.mixer.dirs.1"
    assert bridge.hook_names(["hook_conv", "hook_gate"], [1]) == [
        "bridge.layers.1.mixer.dirs.0.hook_conv", "bridge.layers.1.mixer.hook_gate",
        *(f"bridge.layers.1.mixer.dirs.{k}.hook_conv" for k in (1, 2, 3))]


def test_language_model_hook_names(lm):
    """MambaLM's mixer is one scan direction in token order: every hook sits on it."""
    stack = SSMStack.of(lm)
    assert (stack.name, stack.path, stack.token_order) == ("lm", "layers", True)
    assert stack.hook("hook_delta", 0) == "layers.0.mixer.hook_delta"
    assert stack.hook("hook_state", -1, TOKEN_ORDER) == "layers.1.mixer.hook_state"
    assert stack.hook("hook_gate", 1, 0) == "layers.1.mixer.hook_gate"
    assert stack.hook("hook_resid_post", 0) == "layers.0.hook_resid_post"
    assert stack.glob("hook_delta") == "layers.*.mixer.hook_delta"
    assert stack[0].direction_names == (TOKEN_ORDER,)
    assert stack[1].direction_path(0) == stack[1].mixer_path == "layers.1.mixer"


@pytest.mark.parametrize("which", ["cross", "lm"])
def test_every_hook_of_a_stack_is_named_and_located(which, cross, lm):
    """locate() and hook() are inverse on every hook the stack's modules have, and each
    stack glob selects exactly the names hook_names() lists."""
    model = cross if which == "cross" else lm
    stack = SSMStack.of(model)
    names = [n for n in hk.hook_names(model) if n.startswith(stack.path + ".")]
    assert names
    for name in names:
        where = stack.locate(name)
        assert where is not None, name
        assert stack.hook(where.hook, where.layer, where.direction) == name
    assert stack.locate("bridge.hook_in") is None and stack.locate("hook_embed") is None
    for hook in ("hook_delta", "hook_gate", "hook_resid_post"):
        globbed = hk.resolve_names(model, stack.glob(hook))
        assert sorted(globbed) == sorted(stack.hook_names([hook]))


def test_scan_order_hooks_are_told_by_name(cross):
    bridge = SSMStack.of(cross)
    assert in_scan_order(bridge.hook("hook_delta", 0, 1))
    assert not in_scan_order(bridge.hook("hook_out", 0, 1))  # put back in token order
    assert not in_scan_order(bridge.hook("hook_gate", 0))
    assert not in_scan_order("layers.0.mixer.hook_delta")  # a language model: token order


# ---------------------------------------------------------------- permutations
def _lengths():
    """(name, L) for every direction of every scan order, with a cls token and without."""
    names = sorted({n for ns in SCAN_DIRECTIONS.values() for n in ns})
    return [(n, L) for n in names for L in (17, 16, 10, 9)] + [(TOKEN_ORDER, 7)]


@pytest.mark.parametrize("name, L", _lengths())
def test_permutations_round_trip(name, L):
    perm = direction_perm(name, L)
    assert sorted(perm.tolist()) == list(range(L))
    if L in (17, 10):
        assert perm[0] == 0  # the cls token is read first by every direction
    inv = inverse_perm(perm)
    assert torch.equal(perm[inv], torch.arange(L)) and torch.equal(inv[perm], torch.arange(L))
    x = torch.randn(2, L, 3)  # (B, L, D), token order
    s = to_scan_order(x, perm)
    assert torch.equal(s, x[:, perm])  # step i reads token perm[i]
    assert torch.equal(to_token_order(s, perm), x)
    a = torch.randn(L, L, 2)  # any dimension
    assert torch.equal(to_token_order(to_scan_order(a, perm, dim=0), perm, dim=0), a)
    tokens = [0, L - 1, L // 2]
    steps = scan_positions(perm, tokens)
    assert perm[steps].tolist() == tokens


def test_named_directions_read_the_grid_as_documented():
    assert direction_perm("col", 10).tolist() == [0, 1, 4, 7, 2, 5, 8, 3, 6, 9]
    assert direction_perm("col_rev", 9).tolist() == [8, 5, 2, 7, 4, 1, 6, 3, 0]
    assert direction_perm(TOKEN_ORDER, 5).tolist() == [0, 1, 2, 3, 4]


def test_an_unknown_direction_is_an_error_not_raster_order():
    """Before, any other name silently gave the raster order."""
    with pytest.raises(ValueError, match=r"unknown scan direction 'diag'.*'row'"):
        direction_perm("diag", 10)


def test_the_layer_puts_each_direction_back_through_the_same_perms(cross):
    """The model's own conversion (ScanDirection.forward) is the one addressing defines:
    each direction's hook_out is its scan output (hook_ssm_out) in token order."""
    bridge = SSMStack.of(cross)
    images, _ = batch(cross.config, B=1)
    names = bridge.hook_names(["hook_ssm_out", "hook_out"])
    _, cache = cross.run_with_cache(images, None, names_filter=names)
    for ref in bridge:
        for k in range(len(ref)):
            y = cache[ref.hook("hook_ssm_out", k)]
            assert torch.equal(ref.to_token_order(y, k), cache[ref.hook("hook_out", k)])
            assert torch.equal(ref.to_scan_order(ref.to_token_order(y, k), k), y)


# ---------------------------------------------------------------- layer indices
def test_layer_index_rule():
    assert [layer_index(i, 3) for i in (0, 2, -1, -3, np.int64(1))] == [0, 2, 2, 0, 1]
    for bad in (3, -4, True, 1.0, "1", None):
        with pytest.raises(ValueError, match=r"out of range: the bridge has 3 layers; give "
                                             r"an int in 0\.\.2, or -3\.\.-1"):
            layer_index(bad, 3, "the bridge")


def test_every_tool_takes_negative_layers_the_same_way(cross, lm):
    """One rule everywhere: -1 is the last layer. (The interventions refused it before.)"""
    assert iv.reset_state(cross, [0], layers=[-1]) and \
        [n for n, _ in iv.reset_state(cross, [0], layers=-1)] == \
        [n for n, _ in iv.reset_state(cross, [0], layers=[1])]
    assert iv.state_names(cross, -2) == iv.state_names(cross, 0)
    assert ia.bridge_hook_names(cross, [-1]) == ia.bridge_hook_names(cross, [1])
    assert mt.state_names(lm, [-1]) == mt.state_names(lm, [1])
    assert mt.layer_indices(lm, [-2, 1]) == [0, 1]
    per_layer = {0: torch.zeros(2, 2), 1: torch.ones(2, 2)}
    assert torch.equal(maps._layer_map(per_layer, -1), per_layer[1])


@pytest.mark.parametrize("call, where", [
    (lambda m, lm: iv.reset_state(m, [0], layers=[2]), "the bridge has 2 layers"),
    (lambda m, lm: iv.ablate_gate(m, layers=True), "the bridge has 2 layers"),
    (lambda m, lm: ia.bridge_hook_names(m, [-3]), "the bridge has 2 layers"),
    (lambda m, lm: ia.from_cache({}, m, 1.0), "the bridge has 2 layers"),
    (lambda m, lm: maps._layer_map({0: 0, 1: 1}, 2), "the bridge has 2 layers"),
    (lambda m, lm: mt.reset_state(lm, [1], layers=[2]), "the language model has 2 layers"),
    (lambda m, lm: mt.token_stats(lm, random_ids(1, 4), layers=[-3]),
     "the language model has 2 layers"),
])
def test_out_of_range_layers_get_one_message(call, where, cross, lm):
    with pytest.raises(ValueError, match=rf"layer \S+ is out of range: {where}; give an int"):
        call(cross, lm)


# ---------------------------------------------------------------- finding stacks, errors
@pytest.mark.parametrize("bridge_type, found", [
    ("ssm", ["bridge"]), ("ssm_lti", ["bridge"]), ("seed_ssm", []), ("mlp", []),
])
def test_stacks_of_each_bridge(bridge_type, found):
    assert list(ssm_stacks(vlm("raster", bridge_type=bridge_type))) == found


def test_models_without_the_stack_asked_for(lm):
    mlp = vlm("raster", bridge_type="mlp")
    with pytest.raises(ValueError, match=r"implicit attention reads the SSM bridge's scan.*"
                                         r"bridge_type='mlp'"):
        SSMStack.of(mlp, what="implicit attention")
    with pytest.raises(ValueError, match=r"needs 'bridge'; this MambaLM has \['lm'\]"):
        SSMStack.of(lm, "bridge")
    with pytest.raises(ValueError, match=r"unknown SSM stack 'encoder'"):
        SSMStack.of(lm, "encoder")


def test_bad_hook_and_direction_requests(cross, lm):
    bridge = SSMStack.of(cross)
    with pytest.raises(ValueError, match=r"hook_delta is a hook of each scan direction"):
        bridge.hook("hook_delta", 0)
    with pytest.raises(ValueError, match=r"hook_gate is shared by the directions"):
        bridge.hook("hook_gate", 0, 1)
    with pytest.raises(ValueError, match=r"unknown scan direction 'diag'.*'row', 'col'"):
        bridge.hook("hook_delta", 0, "diag")
    with pytest.raises(ValueError, match=r"unknown scan direction 4"):
        bridge[0].perm(4, 17)
    with pytest.raises(ValueError, match=r"no hook 'hook_pattern'.*hook_delta"):
        SSMStack.of(lm).hook("hook_pattern", 0)
