"""The selective scan: every backend equals the readable reference, forward and backward."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ssm_bridge.config import SCAN_BACKENDS
from ssm_bridge.core import scan
from ssm_bridge.core.scan import selective_scan, selective_scan_ref, selective_scan_step

NAMES = ("x", "delta", "A", "B", "C", "D")


def make_inputs(batch=2, length=9, dim=5, state=4, *, skip=True, seed=0,
                dtype=torch.float32, device="cpu"):
    """Realistic ranges: Δ = softplus(randn) > 0, A = -exp(randn) < 0."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, dim, generator=g)
    delta = F.softplus(torch.randn(batch, length, dim, generator=g))
    A = -torch.exp(torch.randn(dim, state, generator=g))
    B = torch.randn(batch, length, state, generator=g)
    C = torch.randn(batch, length, state, generator=g)
    D = torch.randn(dim, generator=g) if skip else None
    return [None if t is None else t.to(device, dtype).requires_grad_()
            for t in (x, delta, A, B, C, D)]


def outputs_and_grads(fn, inputs, seed=1):
    """y and the gradients of <y, w> for a fixed random w (so dy is not constant)."""
    y = fn(*inputs)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y)
    leaves = [t for t in inputs if t is not None]
    return y, torch.autograd.grad((y * w).sum(), leaves)


def assert_close(actual, expected, rel=1e-5, name=""):
    """Elementwise |a - e| <= rel * (|e| + max|e|): relative to the tensor's scale."""
    scale = expected.abs().max().item() if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * max(scale, 1e-6),
                               msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend", SCAN_BACKENDS)
def test_every_configurable_backend_is_a_scan_backend(backend):
    """VLMConfig.ssm_scan_backend accepts exactly what selective_scan dispatches on."""
    assert scan.BACKENDS is SCAN_BACKENDS
    inputs = [t.detach() for t in make_inputs()]
    try:
        y = selective_scan(*inputs, backend=backend)
    except RuntimeError as e:  # "cpp" without a compiler: a known backend, unavailable
        assert backend == "cpp" and "extension" in str(e)
    else:
        torch.testing.assert_close(y, selective_scan_ref(*inputs), rtol=1e-4, atol=1e-5)


def assert_matches_ref(fn, inputs, rel=1e-5):
    y, grads = outputs_and_grads(fn, inputs)
    y_ref, grads_ref = outputs_and_grads(selective_scan_ref, inputs)
    assert_close(y, y_ref, rel, "y")
    names = [n for n, t in zip(NAMES, inputs) if t is not None]
    for name, g, g_ref in zip(names, grads, grads_ref):
        assert_close(g, g_ref, rel, f"d{name}")


def cpp_available() -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return scan.load_extension() is not None


def fast_backends() -> list[str]:
    return ["torch", "cpp"] if cpp_available() else ["torch"]


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 3), length=st.integers(1, 40), dim=st.integers(1, 16),
       state=st.integers(1, 8), skip=st.booleans(), seed=st.integers(0, 2**16))
def test_fast_backends_match_reference(batch, length, dim, state, skip, seed):
    inputs = make_inputs(batch, length, dim, state, skip=skip, seed=seed)
    for backend in [*fast_backends(), "auto"]:
        assert_matches_ref(lambda *a, b=backend: selective_scan(*a, backend=b), inputs)


@pytest.mark.parametrize("length", [1, scan.CHUNK, scan.CHUNK + 1, 3 * scan.CHUNK - 1])
def test_torch_backend_chunk_edges(length):
    inputs = make_inputs(length=length)
    assert_matches_ref(lambda *a: selective_scan(*a, backend="torch"), inputs)


def test_torch_backend_gradcheck_float64():
    inputs = make_inputs(batch=2, length=11, dim=3, state=2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *a: selective_scan(*a, backend="torch"), inputs)


def test_return_state_matches_reference_and_is_differentiable():
    inputs = make_inputs(length=21)
    y, h = selective_scan(*inputs, return_state=True)
    y_ref, h_ref = selective_scan_ref(*inputs, return_state=True)
    assert h.shape == (2, 21, 5, 4)
    assert_close(y, y_ref, name="y")
    assert_close(h, h_ref, name="h")
    w = torch.randn_like(h)
    grads = torch.autograd.grad(y.sum() + (h * w).sum(), inputs)
    grads_ref = torch.autograd.grad(y_ref.sum() + (h_ref * w).sum(), inputs)
    for name, g, g_ref in zip(NAMES, grads, grads_ref):
        assert_close(g, g_ref, name=f"d{name}")


@pytest.mark.parametrize("backend", SCAN_BACKENDS)
def test_return_last_is_the_last_state_and_differentiable(backend):
    """return_last=True gives (y, h after the last token), what decoding carries on, with
    gradients through both (the C++ kernel takes the last state's gradient as its carry)."""
    if backend == "cpp" and not cpp_available():
        pytest.skip("C++ extension unavailable")
    inputs = make_inputs(length=13)
    y, last = selective_scan(*inputs, return_last=True, backend=backend)
    y_ref, h_ref = selective_scan_ref(*inputs, return_state=True)
    assert last.shape == (2, 5, 4) and last.untyped_storage().nbytes() == 2 * 5 * 4 * 4
    assert_close(y, y_ref, name="y")
    assert_close(last, h_ref[:, -1], name="last")
    w = torch.randn_like(last)
    grads = torch.autograd.grad(y.sum() + (last * w).sum(), inputs)
    grads_ref = torch.autograd.grad(y_ref.sum() + (h_ref[:, -1] * w).sum(), inputs)
    for name, g, g_ref in zip(NAMES, grads, grads_ref):
        assert_close(g, g_ref, name=f"d{name}")
    with pytest.raises(ValueError, match="not both"):
        selective_scan(*inputs, return_state=True, return_last=True)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_inference_mode(backend):
    inputs = make_inputs(length=12)
    with torch.inference_mode():
        y = selective_scan(*inputs, backend=backend)
    assert_close(y, selective_scan_ref(*inputs).detach(), name="y")


@pytest.mark.parametrize("skip", [True, False])
def test_step_by_step_reproduces_scan(skip):
    x, delta, A, B, C, D = make_inputs(length=13, skip=skip)
    y_ref, h_ref = selective_scan_ref(x, delta, A, B, C, D, return_state=True)
    h = x.new_zeros(2, 5, 4)  # (batch, D, N)
    for t in range(13):
        y_t, h = selective_scan_step(h, x[:, t], delta[:, t], A, B[:, t], C[:, t], D)
        assert_close(y_t, y_ref[:, t], name=f"y[{t}]")
        assert_close(h, h_ref[:, t], name=f"h[{t}]")


def test_cpp_backend_matches_reference_on_views():
    if not cpp_available():
        pytest.skip(f"C++ extension unavailable: {scan._ext_state['error'] or 'SSM_BRIDGE_NO_EXT'}")
    x, delta, A, B, C, D = make_inputs(batch=3, length=50, dim=33, state=16, seed=3)
    BC = torch.cat([B, C], dim=-1).detach().requires_grad_()  # B, C as strided views, as in Mamba
    inputs = [x, delta.transpose(1, 2).contiguous().transpose(1, 2), A, BC[..., :16],
              BC[..., 16:], D]
    assert_matches_ref(lambda *a: selective_scan(*a, backend="cpp"), inputs)


def test_cpp_backend_rejects_what_it_cannot_run():
    if not cpp_available():
        pytest.skip(f"C++ extension unavailable: {scan._ext_state['error'] or 'SSM_BRIDGE_NO_EXT'}")
    inputs = make_inputs(dtype=torch.float64)
    with pytest.raises(RuntimeError, match="float32"):
        selective_scan(*inputs, backend="cpp")
    _, h = selective_scan(*make_inputs(), backend="cpp", return_state=True)  # -> torch path
    assert h.shape == (2, 9, 5, 4)


def test_no_ext_env_uses_torch_path(monkeypatch):
    monkeypatch.setenv("SSM_BRIDGE_NO_EXT", "1")
    assert scan.load_extension() is None
    monkeypatch.setattr(scan._FusedScan, "apply", lambda *a: pytest.fail("C++ path used"))
    inputs = make_inputs()
    assert_matches_ref(selective_scan, inputs)
    with pytest.raises(RuntimeError, match="unavailable"):
        selective_scan(*inputs, backend="cpp")


def test_failed_build_warns_once_and_falls_back(monkeypatch):
    def broken_build(verbose=False):
        raise OSError("no C++ compiler found")

    monkeypatch.delenv("SSM_BRIDGE_NO_EXT", raising=False)
    monkeypatch.setattr(scan, "build_extension", broken_build)
    monkeypatch.setattr(scan, "_ext_state", {"module": None, "error": None, "warned": False})
    inputs = make_inputs()
    with pytest.warns(RuntimeWarning, match="SSM_BRIDGE_NO_EXT=1") as record:
        assert_matches_ref(selective_scan, inputs)
        selective_scan(*inputs)
    assert len([w for w in record if "C++" in str(w.message)]) == 1
    assert "no C++ compiler found" in str(record[0].message)
    assert scan.main(["--build"]) == 1


@pytest.mark.parametrize(
    "index, shape, words",
    [
        (0, (2, 9), ["x has shape (2, 9)", "(batch, length, D)"]),
        (1, (2, 9, 4), ["delta has shape (2, 9, 4)", "expected (2, 9, 5)"]),
        (2, (4, 4), ["A has shape (4, 4)", "expected (5, 4)"]),
        (2, (5,), ["A has shape (5,)", "(D, N)"]),
        (3, (2, 9, 3), ["B has shape (2, 9, 3)", "expected (2, 9, 4)"]),
        (4, (2, 8, 4), ["C has shape (2, 8, 4)", "expected (2, 9, 4)"]),
        (5, (4,), ["D has shape (4,)", "expected (5,)"]),
    ],
)
@pytest.mark.parametrize("fn", [selective_scan, selective_scan_ref])
def test_bad_shapes_raise_helpful_errors(fn, index, shape, words):
    inputs = [t.detach() for t in make_inputs()]
    inputs[index] = torch.zeros(shape)
    with pytest.raises(ValueError) as err:
        fn(*inputs)
    for word in words:
        assert word in str(err.value)


def test_bad_step_shapes_and_backend():
    x, delta, A, B, C, D = (t.detach() for t in make_inputs())
    with pytest.raises(ValueError, match=r"h has shape \(2, 5\), expected \(2, 5, 4\)"):
        selective_scan_step(torch.zeros(2, 5), x[:, 0], delta[:, 0], A, B[:, 0], C[:, 0], D)
    with pytest.raises(ValueError, match=r"B_t has shape \(2, 3\)"):
        selective_scan_step(torch.zeros(2, 5, 4), x[:, 0], delta[:, 0], A, B[:, 0, :3], C[:, 0])
    with pytest.raises(ValueError, match="backend must be one of"):
        selective_scan(x, delta, A, B, C, D, backend="cuda")


@pytest.mark.parametrize("backend", ["auto", "torch", "ref"])
def test_bf16_autocast_cpu_close_to_fp32(backend):
    x, delta, A, B, C, D = make_inputs(length=17)
    proj = torch.nn.Linear(5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xb = proj(x)  # bf16 under autocast, like the model's in_proj output
        assert xb.dtype == torch.bfloat16
        y = selective_scan(xb, delta, A, B.bfloat16(), C.bfloat16(), D, backend=backend)
    assert y.dtype == torch.bfloat16
    y32 = selective_scan_ref(xb.float(), delta, A, B.bfloat16().float(), C.bfloat16().float(), D)
    torch.testing.assert_close(y.float(), y32, rtol=2e-2, atol=2e-2 * y32.abs().max().item())
    y.float().sum().backward()
    assert all(t.grad is not None and t.grad.isfinite().all() for t in (x, delta, A, B, C, D))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("skip", [True, False])
def test_cuda_torch_backend_matches_reference(skip):
    inputs = make_inputs(batch=3, length=37, dim=16, state=8, skip=skip, device="cuda")
    for backend in ["auto", "torch"]:
        assert_matches_ref(lambda *a, b=backend: selective_scan(*a, backend=b), inputs)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = selective_scan(*inputs)
    assert y.dtype == torch.float32 and y.device.type == "cuda"
    assert_close(y, selective_scan_ref(*inputs), name="y under autocast")


def test_extension_cache_is_keyed_by_source_content_not_path(tmp_path, monkeypatch):
    """Two checkouts of one source share a build; an edited source gets its own folder."""
    shared = scan.extension_dir()
    checkout = tmp_path / "other-checkout" / "selective_scan.cpp"
    checkout.parent.mkdir()
    checkout.write_bytes(scan._SOURCE.read_bytes())
    monkeypatch.setattr(scan, "_SOURCE", checkout)
    assert scan.extension_dir() == shared
    checkout.write_bytes(checkout.read_bytes() + b"\n// edited\n")
    assert scan.extension_dir() != shared


@pytest.mark.slow
def test_another_checkout_of_the_same_source_does_not_rebuild(tmp_path):
    """The kernel builds once per source: a second checkout loads the first one's build
    (before, ninja saw the new checkout's path in the compile command and rebuilt)."""
    import subprocess
    import sys

    if not cpp_available():
        pytest.skip(f"C++ extension unavailable: {scan._ext_state['error'] or 'SSM_BRIDGE_NO_EXT'}")
    built = scan.extension_dir() / "ssm_bridge_selective_scan.so"
    before = built.stat().st_mtime_ns
    checkout = tmp_path / "selective_scan.cpp"
    checkout.write_bytes(scan._SOURCE.read_bytes())
    code = ("from pathlib import Path; from ssm_bridge.core import scan as scan; "
            f"scan._SOURCE = Path({str(checkout)!r}); print(scan.build_extension().__file__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    assert out.strip() == str(built)
    assert built.stat().st_mtime_ns == before, "the kernel was rebuilt"


def test_each_torch_install_gets_its_own_build_folder(monkeypatch):
    """Two environments (a .venv per checkout) name different torch include and library
    folders in the build command: sharing one folder, each rebuilt the kernel whenever the
    other had built last (a fresh-clone CI run saw its kernel rebuilt mid-test)."""
    here = scan.extension_dir()
    assert scan.extension_dir() == here  # stable within one environment
    monkeypatch.setattr(scan.torch, "__file__", "/elsewhere/.venv/lib/torch/__init__.py")
    assert scan.extension_dir() != here


def test_prepare_extension_says_what_it_does(monkeypatch):
    lines: list[str] = []
    ready = scan.prepare_extension(log=lines.append)
    assert "fused C++ scan kernel" in lines[0]
    assert lines[-1].startswith("ssm-bridge: fused C++ scan kernel ready" if ready else
                                "ssm-bridge: the fused C++ scan kernel is unavailable")
    monkeypatch.setenv("SSM_BRIDGE_NO_EXT", "1")
    assert scan.prepare_extension(log=lines.append) is False
    assert "PyTorch scan" in lines[-1]
