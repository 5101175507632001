"""Hidden attention of the bridge's scans: the vectorised maths equals the loop, it rebuilds
every scan's output, is causal in scan order and maps to patch order correctly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import batch, make_model

from ssm_bridge import VLMConfig
from ssm_bridge.core.scan import selective_scan_ref
from ssm_bridge.interp import implicit_attention as ia


def scan_inputs(b=2, L=9, dim=5, N=4, seed=0):
    """Realistic ranges: Δ = softplus(randn) > 0, A = -exp(randn) < 0."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, dim, generator=g)
    delta = F.softplus(torch.randn(b, L, dim, generator=g))
    A = -torch.exp(torch.randn(dim, N, generator=g))
    B, C = torch.randn(b, L, N, generator=g), torch.randn(b, L, N, generator=g)
    return x, delta, A, B, C, torch.randn(dim, generator=g)


def tiny_model(order: str, seed: int = 0, skip: bool = True):
    """Tiny model whose scans mix for real: at init Δ ~ 0.01 barely decays and B, C ~ 0.02
    make α ~ 1e-4, invisible next to the skip D x. Here Δ ≈ 1 and B, C = O(1); with
    skip=False the skip weights are 0, so hook_ssm_out is α x alone."""
    model = make_model(VLMConfig.from_preset("tiny", ssm_scan_order=order), seed)
    with torch.no_grad():
        for block in model.bridge.layers:
            for d in block.mixer.dirs:
                d.dt_proj.bias.fill_(0.5)
                d.x_proj.weight.mul_(25)
                d.D.mul_(float(skip))
    return model


@pytest.fixture(scope="module")
def cross_model():
    return tiny_model("cross")


def test_segment_sum_small_example():
    seg = ia.segment_sum(torch.tensor([1.0, 2.0, 3.0]))
    inf = torch.inf
    assert torch.equal(seg, torch.tensor([[0, -inf, -inf], [2, 0, -inf], [5, 3, 0]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vectorised_equals_loop_and_rebuilds_scan(dtype):
    x, delta, A, B, C, D = scan_inputs()
    ref = ia.hidden_attention_ref(delta, A, B, C)  # (2, 5, 9, 9) float64
    alpha = ia.hidden_attention(delta, A, B, C, dtype=dtype)
    assert alpha.dtype == dtype and alpha.shape == (2, 5, 9, 9)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert (alpha.double() - ref).abs().max() <= tol * ref.abs().max()
    chunked = ia.hidden_attention(delta, A, B, C, dtype=dtype, chunk_channels=2)
    assert torch.equal(chunked, alpha)
    y = selective_scan_ref(*(t.double() for t in (x, delta, A, B, C, D)))
    assert torch.allclose(ia.rebuild_output(ref, x, D), y, rtol=1e-10, atol=1e-12)


def test_long_sequences_stay_finite_and_causal():
    _, delta, A, B, C, _ = scan_inputs(b=1, L=200, dim=3, N=8, seed=1)
    alpha = ia.hidden_attention(delta * 20, A * 20, B, C)  # exponents down to ~ -1e5
    assert torch.isfinite(alpha).all()
    assert (alpha.triu(1) == 0).all()


def test_to_patch_order_definition():
    """out[perm[i], perm[j]] = in[i, j], with a perm that is not its own inverse (the
    bridge's row, col and reversed orders all are, so they cannot tell perm from argsort)."""
    perm = torch.tensor([2, 0, 3, 1])
    scan = torch.arange(16.0).reshape(4, 4)
    patch = ia.to_patch_order(scan, perm)
    assert all(patch[perm[i], perm[j]] == scan[i, j] for i in range(4) for j in range(4))


@pytest.mark.parametrize("order", ["raster", "bidirectional", "cross"])
def test_rebuilds_every_scan_output(order):
    model = tiny_model(order, skip=False)
    images, _ = batch(model.config, B=2)
    names = {"raster": ["row"], "bidirectional": ["row", "row_rev"],
             "cross": ["row", "col", "row_rev", "col_rev"]}[order]
    for dtype in (torch.float64, torch.float32):
        errors = ia.verify(model, images, dtype=dtype, strict=True)
        assert set(errors) == {(layer, n) for layer in range(2) for n in names}
        assert max(errors.values()) < 1e-4


def test_verify_strict_raises_on_a_wrong_rebuild(cross_model):
    images, _ = batch(cross_model.config, B=1)
    with pytest.raises(RuntimeError, match="does not rebuild"):
        ia.verify(cross_model, images, rtol=0.0, strict=True)


def test_causal_in_scan_order(cross_model):
    images, _ = batch(cross_model.config, B=2)
    la = ia.layer_attention(cross_model, images, layer=1)
    L = 1 + 16
    assert la.alpha_scan.shape == (2, 4, 16, L, L)
    assert (la.alpha_scan.triu(1) == 0).all()
    lower = torch.ones(L, L, dtype=torch.bool).tril()  # (L, L) s <= t
    assert bool((la.alpha_scan[..., lower] != 0).all())  # every earlier token is read


def test_row_rev_is_lower_triangular_in_reversed_order():
    model = tiny_model("bidirectional")
    images, _ = batch(model.config, B=1)
    la = ia.layer_attention(model, images, layer=0)
    k = la.direction_names.index("row_rev")
    rev = torch.tensor([0, *range(16, 0, -1)])  # cls, then patches last to first
    assert torch.equal(la.perms[k], rev)
    alpha = la.direction_patch(k)  # (1, D, 17, 17) patch order
    assert (alpha[..., 1:, 1:].tril(-1) == 0).all()  # a patch reads only later patches
    assert (alpha[..., 0, 1:] == 0).all()  # cls is read first: it sees only itself
    assert (alpha[..., 1:, 0] != 0).all()  # every patch reads cls
    reordered = alpha[..., rev, :][..., rev]  # (1, D, 17, 17) in reversed order
    assert (reordered.triu(1) == 0).all() and (reordered.tril(-1) != 0).any()
    row = la.direction_patch(la.direction_names.index("row"))
    assert torch.allclose(la.alpha_patch, alpha + row)  # summed over directions


def test_patch_order_rebuilds_the_layer_output(cross_model):
    """hook_y (the directions' outputs summed, patch order) from patch-order alphas."""
    images, _ = batch(cross_model.config, B=2)
    la = ia.layer_attention(cross_model, images, layer=0, dtype=torch.float64)
    _, hook_y = cross_model.run_with_cache(images, names_filter="bridge.layers.0.mixer.hook_y")
    y = 0
    for k in range(4):
        x_patch = la.x_scan[:, k][:, torch.argsort(la.perms[k])]  # (B, L, D) patch order
        y = y + ia.rebuild_output(la.direction_patch(k), x_patch, la.D_skip[k])
    target = hook_y["bridge.layers.0.mixer.hook_y"].double()
    assert (y - target).abs().max() < 1e-4 * target.abs().max()


def test_from_cache_matches_layer_attention_and_names_missing_hooks(cross_model):
    images, _ = batch(cross_model.config, B=1)
    cache = ia.capture_bridge(cross_model, images)
    assert set(cache) == set(ia.bridge_hook_names(cross_model))
    la = ia.from_cache(cache, cross_model, -1)
    assert la.layer == 1
    assert torch.equal(la.alpha_patch, ia.layer_attention(cross_model, images, 1).alpha_patch)
    assert torch.equal(la.averaged("abs"), la.alpha_patch.abs().mean(1))
    assert torch.equal(la.averaged("signed"), la.alpha_patch.mean(1))
    assert (la.alpha_abs >= la.alpha_signed.abs()).all()
    with pytest.raises(ValueError, match="bridge_hook_names"):
        ia.from_cache({}, cross_model, 0)
    with pytest.raises(ValueError, match="'abs' or 'signed'"):
        la.averaged("max")
    # the chunked form (what ssm_bridge.interp.maps uses) gives the same layer attention
    fast = ia.from_cache(cache, cross_model, -1, dtype=torch.float64, chunked=True)
    exact = ia.from_cache(cache, cross_model, -1, dtype=torch.float64)
    assert fast.alpha_scan.dtype == torch.float64 and torch.equal(fast.perms, exact.perms)
    scale = exact.alpha_patch.abs().max()
    assert (fast.alpha_patch - exact.alpha_patch).abs().max() <= 1e-6 * scale


@pytest.mark.parametrize("layer", [2, -3, 1.0, True])
def test_bad_layer_index(cross_model, layer):
    images, _ = batch(cross_model.config, B=1)
    with pytest.raises(ValueError, match=r"the bridge has 2 layers"):
        ia.layer_attention(cross_model, images, layer=layer)


def test_patch_grids():
    model = tiny_model("raster")
    images, _ = batch(model.config, B=2)
    avg = ia.layer_attention(model, images, layer=0).alpha_abs  # (2, 17, 17)
    maps = ia.patch_attention_maps(avg)
    assert maps.shape == (2, 16, 4, 4)
    assert torch.equal(ia.to_patch_grid(avg, query=5), maps[:, 5])
    assert torch.equal(ia.to_patch_grid(avg, query="last"), maps[:, 15])
    assert torch.allclose(ia.to_patch_grid(avg), maps.mean(1))
    first = ia.to_patch_grid(avg[0], query=0)  # raster: patch 0 reads only itself (and cls)
    assert first.shape == (4, 4) and first[0, 0] > 0 and (first.flatten()[1:] == 0).all()
    assert ia.to_patch_grid(avg, query="cls").abs().sum() == 0  # cls is read first
    with pytest.raises(ValueError, match="patch index in"):
        ia.to_patch_grid(avg, query=16)
    with pytest.raises(ValueError, match="square patch grid"):
        ia.to_patch_grid(torch.ones(3, 3))


def test_rollout(cross_model):
    images, _ = batch(cross_model.config, B=2)
    per_layer = [la.alpha_abs for la in ia.bridge_attention(cross_model, images)]
    for kwargs in ({}, {"pre_normalise": True}, {"residual": False}):
        r = ia.rollout(per_layer, **kwargs)
        assert r.shape == (2, 17, 17) and (r >= 0).all()
        assert torch.allclose(r.sum(-1), torch.ones(2, 17))
    one = ia.rollout(per_layer[:1])
    a = per_layer[0] + torch.eye(17)
    assert torch.allclose(one, a / a.sum(-1, keepdim=True))
    two = ia.rollout(per_layer)
    b = per_layer[1] + torch.eye(17)
    assert torch.allclose(two, (b / b.sum(-1, keepdim=True)) @ one)
    with pytest.raises(ValueError, match="at least one layer"):
        ia.rollout([])


@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_chunked_form_equals_segment_sums(scale):
    """Also with Δ large enough that Σ Δ A reaches ~ -5000 (exp(+that) would overflow)."""
    g = torch.Generator().manual_seed(0)
    Lx, D, N = 37, 6, 5
    delta = torch.nn.functional.softplus(torch.randn(2, Lx, D, generator=g)) * scale
    A = -torch.exp(torch.randn(D, N, generator=g)) * 4
    B, C = torch.randn(2, Lx, N, generator=g), torch.randn(2, Lx, N, generator=g)
    ref = ia.hidden_attention(delta, A, B, C, dtype=torch.float64)
    for block in (1, 8, 64):
        fast = ia.hidden_attention_chunked(delta, A, B, C, block=block)
        assert torch.isfinite(fast).all()
        assert (fast - ref).abs().max() <= 1e-10 * ref.abs().max()
