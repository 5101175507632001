"""The selective scan: the S6 recurrence at the heart of Mamba (Gu & Dao, 2023).

Glossary: code name -> paper symbol; shapes use B batch, L length, D channels, N state
    x        u      input sequence, one scalar stream per channel              (B, L, D)
    delta    Δ      step size per token and channel, already positive          (B, L, D)
    A        A      diagonal state matrix, real and negative: A = -exp(A_log)  (D, N)
    B        B      input projection, selected per token                       (B, L, N)
    C        C      output projection, selected per token                      (B, L, N)
    D        D      skip weight per channel, or None                           (D,)
    N        N      state size per channel
    A_bar    Ā      exp(Δ A): zero-order-hold discretisation of A              (B, L, D, N)
    Bx       B̄ x    Δ B x: the discretised input (Mamba's simplified B̄ = Δ B)  (B, L, D, N)
    h        h      state: h_t = Ā_t ⊙ h_{t-1} + B̄_t x_t, h_{-1} = 0           (B, L, D, N)
    y        y      output: y_t = C_t · h_t + D ⊙ x_t                          (B, L, D)
    g        ∂ℓ/∂h  gradient of the loss w.r.t. the state (backward only)      (B, L, D, N)

Three implementations of the same maths, chosen by `backend`:
    "ref"    `selective_scan_ref`: the readable loop (mamba-minimal style), autograd
             through every step. Read this one first.
    "torch"  `_ChunkedScan`: pure PyTorch, runs anywhere (CPU, CUDA). Time is cut into
             chunks; per chunk Ā and B̄x are computed in one vectorised op each, the
             recurrence is one fused in-place op per step, and backward is hand-written
             (the reverse recurrence g_t = C_t dy_t + Ā_{t+1} ⊙ g_{t+1}) instead of
             autograd through hundreds of tiny ops. Only the chunk-start states are
             saved; backward recomputes each chunk's states.
    "cpp"    `_FusedScan`: the fused C++/OpenMP CPU kernel in csrc/selective_scan.cpp,
             compiled on first use (or ahead of time: `python -m ssm_bridge.core.scan --build`).
             Never materialises the (B, L, D, N) states. float32 CPU tensors only. The
             same extension holds the fused causal conv + SiLU (ssm.ScanDirection.conv_silu)
             and Mamba's decoding step (ssm_bridge/mamba/step.py).
    "auto"   "cpp" for CPU tensors when the extension builds, else "torch".
Half-precision inputs are computed in float32 (autocast is switched off inside) and y is
cast back to x's dtype; float64 stays float64 on the "torch" and "ref" paths.

Environment: SSM_BRIDGE_NO_EXT=1 disables the C++ kernel; SSM_BRIDGE_EXT_DIR moves its
build cache (default ~/.cache/ssm_bridge/ext).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch
from einops import einsum, rearrange
from torch.autograd.function import once_differentiable

from ..config import SCAN_BACKENDS as BACKENDS  # the backends, named where config checks them

CHUNK = 8  # time steps per chunk of the "torch" backend (its buffers are (CHUNK, B, D, N))

_SOURCE = Path(__file__).resolve().parent / "csrc" / "selective_scan.cpp"
_CFLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp")
_LDFLAGS = ("-fopenmp",)  # no -ffast-math: it would link crtfastmath.o (flush-to-zero)


# ---------------------------------------------------------------- reference
def selective_scan_ref(x, delta, A, B, C, D=None, *, return_state=False):
    """The recurrence written out, one time step per loop iteration.

    x, delta: (B, L, D); A: (D, N); B, C: (B, L, N); D: (D,) or None.
    Returns y (B, L, D), and with return_state=True also the states h (B, L, D, N).
    """
    _check_shapes(x, delta, A, B, C, D)
    dtype = x.dtype
    with torch.autocast(x.device.type, enabled=False):
        x, delta, A, B, C, D = _upcast(x, delta, A, B, C, D)
        h = x.new_zeros(x.shape[0], x.shape[2], A.shape[1])  # (B, D, N)
        ys, hs = [], []
        for x_t, delta_t, B_t, C_t in zip(x.unbind(1), delta.unbind(1), B.unbind(1), C.unbind(1)):
            A_bar = torch.exp(delta_t[..., None] * A)  # (B, D, N) = exp(Δ_t A)
            Bx = (delta_t * x_t)[..., None] * B_t[:, None, :]  # (B, D, N) = Δ_t B_t x_t
            h = A_bar * h + Bx  # (B, D, N)
            ys.append(einsum(h, C_t, "b d n, b n -> b d"))  # (B, D)
            hs.append(h)
        y = torch.stack(ys, dim=1)  # (B, L, D)
        if D is not None:
            y = y + x * D
    y = y.to(dtype)
    return (y, torch.stack(hs, dim=1)) if return_state else y  # h: (B, L, D, N)


def selective_scan_step(h, x_t, delta_t, A, B_t, C_t, D=None):
    """One recurrent step, for token-by-token generation.

    h: (B, D, N) state before the token; x_t, delta_t: (B, D); A: (D, N);
    B_t, C_t: (B, N); D: (D,) or None. Returns (y_t (B, D), h_new (B, D, N)).
    Stepping through a sequence reproduces `selective_scan` (y) and its states (h).
    """
    _check_step_shapes(h, x_t, delta_t, A, B_t, C_t, D)
    dtype = x_t.dtype
    with torch.autocast(x_t.device.type, enabled=False):
        hf = h.to(_compute_dtype(x_t))
        x_t, delta_t, A, B_t, C_t, D = _upcast(x_t, delta_t, A, B_t, C_t, D)
        A_bar = torch.exp(delta_t[..., None] * A)  # (B, D, N)
        # h = Ā h + (Δ x) B, fused; y = C · h as a batched matrix-vector product
        h_new = torch.addcmul(A_bar * hf, (delta_t * x_t)[..., None], B_t[:, None, :])
        y = torch.bmm(h_new, C_t[..., None])[..., 0]  # (B, D)
        if D is not None:
            y = torch.addcmul(y, x_t, D)
    return y.to(dtype), h_new.to(h.dtype)


def linear_recurrence(A_bar: torch.Tensor, Bx: torch.Tensor,
                      h0: torch.Tensor | None = None) -> torch.Tensor:
    """h_t = Ā_t ⊙ h_{t-1} + B̄x_t from explicit (B, L, D, N) tensors, h_{-1} = h0 (default 0;
    a carried state (B, D, N) when decoding continues a sequence).

    The interpretability path: Ā and B̄x arrive materialised (and maybe patched: Ā_t = 0
    resets the state at t), so any edit propagates down the scan. Returns h (B, L, D, N).
    """
    if A_bar.shape != Bx.shape or A_bar.dim() != 4:
        raise ValueError(f"A_bar and Bx must both be (B, L, D, N); got {tuple(A_bar.shape)} "
                         f"and {tuple(Bx.shape)}")
    h = torch.zeros_like(Bx[:, 0]) if h0 is None else h0.to(Bx.dtype)  # (B, D, N)
    hs = []
    for a_t, u_t in zip(A_bar.unbind(1), Bx.unbind(1)):
        h = a_t * h + u_t  # (B, D, N)
        hs.append(h)
    return torch.stack(hs, dim=1)  # (B, L, D, N)


# ---------------------------------------------------------------- dispatch
def selective_scan(x, delta, A, B, C, D=None, *, return_state=False, return_last=False,
                   backend="auto"):
    """y_t = C_t · h_t + D ⊙ x_t with h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t x_t, h_{-1} = 0.

    x, delta: (B, L, D); A: (D, N); B, C: (B, L, N); D: (D,) or None.
    Returns y (B, L, D) in x's dtype; with return_state=True, (y, h) with the state
    trajectory h (B, L, D, N) (computed by the "torch" backend, differentiable); with
    return_last=True, (y, h_last) with only the state after the last token (B, D, N), in
    float32 (float64 for float64 x): what decoding carries on, and the C++ kernel computes
    it without building the trajectory.
    backend: "auto" | "torch" | "cpp" | "ref", all the same maths (see module docstring).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if return_state and return_last:
        raise ValueError("selective_scan: pass return_state=True (the whole trajectory) or "
                         "return_last=True (its last state), not both")
    _check_shapes(x, delta, A, B, C, D)
    dtype = x.dtype
    if backend == "ref":
        if not (return_state or return_last):
            return selective_scan_ref(x, delta, A, B, C, D)
        y, h = selective_scan_ref(x, delta, A, B, C, D, return_state=True)
    else:
        with torch.autocast(x.device.type, enabled=False):
            args = _upcast(x, delta, A, B, C, D)
            if not return_state and _use_cpp(backend, *args):
                args = [None if t is None else t.contiguous() for t in args]
                out = _FusedScan.apply(*args, return_last)
                return (out[0].to(dtype), out[1]) if return_last else out.to(dtype)
            y, h = _ChunkedScan.apply(*args, return_state or return_last)
    if return_last:
        return y.to(dtype), h[:, -1].clone()  # a copy: a view would keep the trajectory
    return (y.to(dtype), h) if return_state else y.to(dtype)


def _use_cpp(backend, x, *args) -> bool:
    """Whether to run the C++ kernel; backend="cpp" raises if it cannot."""
    if backend == "torch":
        return False
    fits = x.device.type == "cpu" and all(
        t is None or (t.device.type == "cpu" and t.dtype == torch.float32) for t in (x, *args))
    if backend == "auto":
        return fits and load_extension() is not None
    if not fits:
        raise RuntimeError("backend='cpp' needs float32 (or half, cast up) CPU tensors; "
                           f"got {x.dtype} on {x.device}: use backend='torch' or 'auto'")
    if load_extension() is None:
        raise RuntimeError(f"backend='cpp': the C++ selective-scan extension is unavailable "
                           f"({_ext_state['error']}); use backend='torch' or 'auto'")
    return True


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _upcast(x, *rest):
    """float16/bfloat16 -> float32 (float64 stays): the recurrence needs the range."""
    dtype = _compute_dtype(x)
    return [None if t is None else t.to(dtype) for t in (x, *rest)]


# ---------------------------------------------------------------- pure PyTorch, chunked
def _chunk_states(h0, x, delta, A, B, A_bar, H):
    """States of one chunk (time-major), written into the buffers A_bar (T, B, D, N) and
    H (T+1, B, D, N) with H[0] = h0, H[t+1] = h_t.

    Ā and B̄x are one vectorised op each; the recurrence is one in-place op per step.
    """
    torch.mul(delta[..., None], A, out=A_bar).exp_()  # (T, B, D, N) = exp(Δ A)
    H[0] = h0
    torch.mul((delta * x)[..., None], B[:, :, None, :], out=H[1:])  # (T, B, D, N) = B̄x
    for t in range(x.shape[0]):
        H[t + 1].addcmul_(A_bar[t], H[t])  # h_t = Ā_t ⊙ h_{t-1} + B̄_t x_t


def _dot_n(a, b, scratch):
    """Σ_n a ⊙ b over the last dim via a preallocated buffer: (T, B, D, N) -> (T, B, D).
    (A multiply-then-sum beats einsum's batched matrix-vector product here.)"""
    return torch.mul(a, b, out=scratch).sum(-1)


class _ChunkedScan(torch.autograd.Function):
    """Pure-PyTorch scan over chunks of CHUNK steps with a hand-written backward.

    Inputs are made time-major, (L, B, ...), so that every step is a contiguous slice,
    and the (CHUNK, B, D, N) work buffers are allocated once per call. Saved for
    backward: the inputs and the state at each chunk start (n_chunks, B, D, N).
    """

    @staticmethod
    def forward(ctx, x, delta, A, B, C, D, return_state):
        xs, ds = (rearrange(t, "b l d -> l b d").contiguous() for t in (x, delta))  # (L, B, D)
        Bs, Cs = (rearrange(t, "b l n -> l b n").contiguous() for t in (B, C))  # (L, B, N)
        L, batch, dim = xs.shape
        A_bar, scratch = (x.new_empty(min(CHUNK, L), batch, dim, A.shape[1]) for _ in "ab")
        H = x.new_empty(min(CHUNK, L) + 1, batch, dim, A.shape[1])  # (T+1, B, D, N)
        y = x.new_empty(L, batch, dim)  # (L, B, D)
        states = x.new_empty(batch, L, dim, A.shape[1]) if return_state else None
        starts = x.new_empty(-(-L // CHUNK), batch, dim, A.shape[1])  # (n_chunks, B, D, N)
        for c, s in enumerate(range(0, L, CHUNK)):
            e = min(s + CHUNK, L)
            T = e - s
            starts[c] = H[-1] if c else 0
            _chunk_states(starts[c], xs[s:e], ds[s:e], A, Bs[s:e], A_bar[:T], H[: T + 1])
            y[s:e] = _dot_n(H[1 : T + 1], Cs[s:e, :, None, :], scratch[:T])  # (T, B, D)
            if return_state:
                states[:, s:e] = rearrange(H[1 : T + 1], "t b d n -> b t d n")
        if D is not None:
            y.addcmul_(xs, D)
        ctx.save_for_backward(xs, ds, A, Bs, Cs, D, starts)
        ctx.set_materialize_grads(False)
        return rearrange(y, "l b d -> b l d").contiguous(), states  # (B, L, D), (B, L, D, N)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh):
        xs, ds, A, Bs, Cs, D, starts = ctx.saved_tensors
        with torch.autocast(xs.device.type, enabled=False):
            grads = _chunked_backward(xs, ds, A, Bs, Cs, D, starts, dy, dh)
        return (*grads, None)


def _chunked_backward(xs, ds, A, Bs, Cs, D, starts, dy, dh):
    """Gradients of _ChunkedScan, chunk by chunk from the end (time-major inside)."""
    L, batch, dim = xs.shape
    if dy is None:
        dy = xs.new_zeros(batch, L, dim)
    dy = rearrange(dy, "b l d -> l b d").contiguous()  # (L, B, D); also un-expands a sum()'s dy
    dh = rearrange(dh, "b l d n -> l b d n") if dh is not None else None  # (L, B, D, N)
    dx, dd = torch.empty_like(xs), torch.empty_like(xs)  # (L, B, D)
    dB, dC = torch.empty_like(Bs), torch.empty_like(Cs)  # (L, B, N)
    dA = torch.zeros_like(A)  # (D, N)
    A_bar, G, scratch = (xs.new_empty(min(CHUNK, L), batch, dim, A.shape[1]) for _ in "abc")
    H = xs.new_empty(min(CHUNK, L) + 1, batch, dim, A.shape[1])
    carry = xs.new_zeros(batch, dim, A.shape[1])  # Ā_{t+1} ⊙ g_{t+1}: (B, D, N)
    for c in reversed(range(len(starts))):
        s, e = c * CHUNK, min((c + 1) * CHUNK, L)
        T = e - s
        x, delta, B, C, g_y = xs[s:e], ds[s:e], Bs[s:e], Cs[s:e], dy[s:e]
        _chunk_states(starts[c], x, delta, A, B, A_bar[:T], H[: T + 1])
        g = torch.mul(g_y[..., None], C[:, :, None, :], out=G[:T])  # (T, B, D, N): C_t dy_t
        if dh is not None:
            g += dh[s:e]
        g[-1] += carry
        for t in reversed(range(T - 1)):
            g[t].addcmul_(A_bar[t + 1], g[t + 1])  # g_t = C_t dy_t + Ā_{t+1} ⊙ g_{t+1}
        torch.mul(A_bar[0], g[0], out=carry)  # (B, D, N)
        dC[s:e] = einsum(g_y, H[1 : T + 1], "t b d, t b d n -> t b n")
        dB[s:e] = einsum(delta * x, g, "t b d, t b d n -> t b n")
        gB = _dot_n(g, B[:, :, None, :], scratch[:T])  # Σ_n g B: (T, B, D)
        W = A_bar[:T].mul_(H[:T]).mul_(g)  # g ⊙ Ā ⊙ h_{t-1} = ∂ℓ/∂(ΔA): (T, B, D, N)
        dd[s:e] = x * gB + _dot_n(W, A, scratch[:T])
        dA += torch.mul(W, delta[..., None], out=scratch[:T]).sum((0, 1))  # (D, N)
        dx[s:e] = delta * gB
    if D is not None:
        dx.addcmul_(dy, D)
        dD = (dy * xs).sum((0, 1))  # (D,)
    else:
        dD = None
    dx, dd = (rearrange(t, "l b d -> b l d") for t in (dx, dd))  # (B, L, D)
    dB, dC = (rearrange(t, "l b n -> b l n") for t in (dB, dC))  # (B, L, N)
    return dx, dd, dA, dB, dC, dD


# ---------------------------------------------------------------- fused C++ kernel
class _FusedScan(torch.autograd.Function):
    """The C++ kernel (csrc/selective_scan.cpp); saves only the inputs."""

    @staticmethod
    def forward(ctx, x, delta, A, B, C, D, return_last):
        ctx.save_for_backward(x, delta, A, B, C, D)
        ctx.set_materialize_grads(False)
        out = load_extension().fwd(x, delta, A, B, C, D, return_last)
        return (out[0], out[1]) if return_last else out[0]  # (B, L, D), (B, D, N)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dlast=None):
        x, delta, A, B, C, D = ctx.saved_tensors
        dy = torch.zeros_like(x) if dy is None else dy.to(torch.float32).contiguous()
        if dlast is not None:
            dlast = dlast.to(torch.float32).contiguous()
        dx, dd, dA, dB, dC, dD = load_extension().bwd(dy, x, delta, A, B, C, D, dlast)
        return dx, dd, dA, dB, dC, dD if D is not None else None, None


_ext_state: dict = {"module": None, "error": None, "warned": False}


def extension_dir() -> Path:
    """Build cache of the C++ kernel: one folder per Python, torch, CPU (it is built with
    -march=native, so a cache shared between machines must not mix CPUs) and kernel source
    (its hash, with the compiler flags and torch's install folder): every checkout of the
    same source in one environment shares one build, and an edited source or another
    environment gets a folder of its own instead of evicting the others."""
    root = Path(os.environ.get("SSM_BRIDGE_EXT_DIR") or Path.home() / ".cache/ssm_bridge/ext")
    tag = (f"py{sys.version_info[0]}{sys.version_info[1]}_torch{torch.__version__}"
           f"_{_cpu_id()}_src{_source_id()}")
    return root / tag.replace("+", "_")


def _source_id() -> str:
    """Short hash of the kernel source, the flags it is compiled with, and where torch is
    installed: torch's headers and libraries are named in the compile and link commands,
    so two environments (one .venv per checkout, as `make` makes) sharing one folder would
    each rebuild the kernel whenever the other had built last."""
    h = hashlib.sha256(_SOURCE.read_bytes())
    h.update("\0".join((*_CFLAGS, "|", *_LDFLAGS)).encode())
    h.update(str(Path(torch.__file__).resolve().parent).encode())
    return h.hexdigest()[:12]


def _cpu_id() -> str:
    """Short hash of this CPU's model and instruction-set flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        info = "".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))
    except OSError:
        info = platform.processor() or platform.machine()
    return hashlib.sha1(info.encode()).hexdigest()[:8]


def build_extension(verbose: bool = False):
    """Compile (or load the cached build of) the C++ kernel; raises on failure.

    It compiles a copy of the source kept in the cache folder: torch's build (ninja)
    compares compiler commands, and a command naming this checkout's path would rebuild
    whenever another checkout of the same source had built last."""
    from torch.utils.cpp_extension import load

    build_dir = extension_dir()
    build_dir.mkdir(parents=True, exist_ok=True)
    source = build_dir / _SOURCE.name
    code = _SOURCE.read_bytes()
    if not source.is_file() or source.read_bytes() != code:
        tmp = build_dir / f".{_SOURCE.name}.{os.getpid()}.tmp"
        tmp.write_bytes(code)
        os.replace(tmp, source)  # atomic: a concurrent build never reads half a file
    return load(name="ssm_bridge_selective_scan", sources=[str(source)],
                # lists of our own: torch appends its libraries to extra_ldflags in place
                extra_cflags=list(_CFLAGS), extra_ldflags=list(_LDFLAGS),
                build_directory=str(build_dir), verbose=verbose)


def load_extension():
    """The C++ kernel module, or None (SSM_BRIDGE_NO_EXT=1, or the build failed: warns once)."""
    if os.environ.get("SSM_BRIDGE_NO_EXT", "0") not in ("", "0"):
        return None
    if _ext_state["module"] is None and _ext_state["error"] is None:
        try:
            _ext_state["module"] = build_extension()
        except Exception as e:  # no compiler, no ninja, build error, ...
            _ext_state["error"] = _build_error_reason(e)
    if _ext_state["error"] is not None and not _ext_state["warned"]:
        _ext_state["warned"] = True
        warnings.warn(f"ssm_bridge: the fused C++ selective scan could not be built "
                      f"({_ext_state['error']}); using the pure-PyTorch scan instead. "
                      f"Set SSM_BRIDGE_NO_EXT=1 to skip the build and silence this warning.",
                      RuntimeWarning, stacklevel=4)
    return _ext_state["module"]


def prepare_extension(log=print) -> bool:
    """Build or load the C++ kernel now, saying which, so that a server's first request
    does not pay for the build. True when the fused kernel is ready."""
    if os.environ.get("SSM_BRIDGE_NO_EXT", "0") not in ("", "0"):
        log("ssm-bridge: SSM_BRIDGE_NO_EXT is set: the PyTorch scan is used")
        return False
    cached = (extension_dir() / "ssm_bridge_selective_scan.so").is_file()
    log("ssm-bridge: loading the fused C++ scan kernel..." if cached else
        "ssm-bridge: building the fused C++ scan kernel (once per kernel source, about a "
        "minute)...")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the failure is logged just below
        ok = load_extension() is not None
    log(f"ssm-bridge: fused C++ scan kernel ready ({time.perf_counter() - t0:.1f} s)" if ok else
        f"ssm-bridge: the fused C++ scan kernel is unavailable ({_ext_state['error']}); "
        "using the PyTorch scan")
    return ok


def _build_error_reason(e: Exception) -> str:
    """The telling lines of a failed build (the compiler's errors), not ninja's epilogue."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    telling = [ln for ln in lines if any(k in ln.lower() for k in ("error", "not found", "fatal"))
               and "build stopped" not in ln and not ln.startswith("Error building extension")]
    return f"{type(e).__name__}: {'; '.join((telling or lines or [''])[:3])[:400]}"


# ---------------------------------------------------------------- shape checks
def _expect(name: str, t: torch.Tensor, shape: tuple, meaning: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)} {meaning}")


def _check_shapes(x, delta, A, B, C, D) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x has shape {got}, expected 3 dims (batch, length, D)")
    batch, L, dim = x.shape
    if not isinstance(A, torch.Tensor) or A.dim() != 2:
        got = tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__
        raise ValueError(f"A has shape {got}, expected 2 dims ({dim}, N) = (D, N)")
    N = A.shape[1]
    _expect("delta", delta, (batch, L, dim), "= (batch, length, D), like x")
    _expect("A", A, (dim, N), "= (D, N)")
    _expect("B", B, (batch, L, N), "= (batch, length, N)")
    _expect("C", C, (batch, L, N), "= (batch, length, N)")
    if D is not None:
        _expect("D", D, (dim,), "= (D,)")


def _check_step_shapes(h, x_t, delta_t, A, B_t, C_t, D) -> None:
    if not isinstance(x_t, torch.Tensor) or x_t.dim() != 2:
        got = tuple(x_t.shape) if isinstance(x_t, torch.Tensor) else type(x_t).__name__
        raise ValueError(f"x_t has shape {got}, expected 2 dims (batch, D)")
    batch, dim = x_t.shape
    if not isinstance(A, torch.Tensor) or A.dim() != 2:
        raise ValueError(f"A has shape {tuple(getattr(A, 'shape', ()))}, expected ({dim}, N)")
    N = A.shape[1]
    _expect("A", A, (dim, N), "= (D, N)")
    _expect("h", h, (batch, dim, N), "= (batch, D, N)")
    _expect("delta_t", delta_t, (batch, dim), "= (batch, D), like x_t")
    _expect("B_t", B_t, (batch, N), "= (batch, N)")
    _expect("C_t", C_t, (batch, N), "= (batch, N)")
    if D is not None:
        _expect("D", D, (dim,), "= (D,)")


# ---------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssm_bridge.core.scan",
                                     description="The fused C++ selective-scan kernel.")
    parser.add_argument("--build", action="store_true",
                        help="compile it now (it is otherwise compiled on first use)")
    parser.add_argument("--verbose", action="store_true", help="show the compiler commands")
    args = parser.parse_args(argv)
    if not args.build:
        parser.print_help()
        return 0
    t0 = time.perf_counter()
    try:
        module = build_extension(verbose=args.verbose)
    except Exception as e:
        print(f"ssm_bridge: building the C++ selective scan failed ({_build_error_reason(e)})\n"
              f"Full build log: python -m ssm_bridge.core.scan --build --verbose\n"
              f"The pure-PyTorch scan will be used (set SSM_BRIDGE_NO_EXT=1 to skip the "
              f"build).", file=sys.stderr)
        return 1
    print(f"built {module.__file__} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
