"""A hooked Mamba-1 language model built from the bridge's own S6 layer.

    model = MambaLM.from_hf("path/to/mamba-130m-hf")        # a transformers folder on disk
    logits = model(input_ids)                               # (B, L) -> (B, L, vocab) float32
    logits, cache = model.run_with_cache(input_ids, "layers.*.mixer.hook_delta")
    ids = model.generate(input_ids, max_new_tokens=20, temperature=0)   # recurrent decoding

Block i (Gu & Dao, 2023, as in transformers' MambaForCausalLM; names follow it, so the
weights map one to one, see ssm_bridge/mamba/hf.py):

    x = x + mixer(RMSNorm(x))                    layers.{i}.norm, layers.{i}.mixer
    mixer(u) = out_proj(S6(SiLU(conv1d(x'))) * SiLU(z)),   (x', z) = in_proj(u)

after `embeddings` (tied to the output head unless tie_word_embeddings=False) and before
the final RMSNorm `norm_f`. The mixer *is* the bridge's `ScanDirection` (ssm_bridge/core/ssm.py:
causal conv, x_proj, dt_proj, A_log, D, the fused scan of ssm_bridge/core/scan.py) read in token
order, plus Mamba's in_proj, gate and out_proj. So every hook point of a bridge scan is here
under `layers.{i}.mixer.`: hook_conv (the scan input x), hook_delta (Δ), hook_B, hook_C,
the heavy hook_A_bar, hook_dBx, hook_state (B, L, D, N: computed only when watched),
hook_ssm_out (y = C·h + D x), hook_out (the same y), and hook_gate (SiLU(z)). Around them:
hook_embed, layers.{i}.hook_resid_post, hook_resid_final (after norm_f) and hook_logits.
`SSMStack.of(model)` (ssm_bridge/core/addressing.py, the stack "lm") builds the layers' names:
`.hook("hook_delta", layer)`, `.glob("hook_state")`, as it does for the VLM's bridge.

Decoding carries, per layer, the conv window (B, D, K-1) and the state h (B, D, N): each new
token costs the same, whatever came before. Hooks fire during decoding too, with length-1
tensors; `token_offset` tells a hook which position the current call starts at. A block
that no hook watches takes its decoding step in one C++ call instead (without a gradient,
float32 on CPU: ssm_bridge/mamba/step.py, the same maths as its modules).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import SCAN_BACKENDS, check_types
from ..core import hooks as hk
from ..core.checks import check_sampling_params
from ..core.generation import sample_next
from ..core.hooks import HookPoint
from ..core.layers import gate_product, silu
from ..core.ssm import ScanDirection
from . import step as mamba_step

# Per thread: {id(model): position of the current call's first token}. A module-level
# thread-local rather than an attribute, so models still deep-copy.
_OFFSETS = threading.local()


# ---------------------------------------------------------------- config
@dataclass
class MambaConfig:
    """Hugging Face's MambaConfig fields (same names and defaults) that shape the model,
    plus `scan_backend` (the kit's scan kernel choice, not part of a HF config)."""

    vocab_size: int = 50280
    hidden_size: int = 768
    state_size: int = 16
    num_hidden_layers: int = 32
    expand: int = 2
    conv_kernel: int = 4
    time_step_rank: int | str = "auto"  # "auto" = ceil(hidden_size / 16)
    use_bias: bool = False  # in_proj and out_proj biases
    use_conv_bias: bool = True
    layer_norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = True
    residual_in_fp32: bool = True
    hidden_act: str = "silu"
    time_step_min: float = 0.001  # Δ's initial range (random init only)
    time_step_max: float = 0.1
    pad_token_id: int | None = 0
    bos_token_id: int | None = 0
    eos_token_id: int | None = 0
    scan_backend: str = "auto"

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def intermediate_size(self) -> int:
        """D: the channels of the scan, expand * hidden_size."""
        return int(self.expand * self.hidden_size)

    @property
    def dt_rank(self) -> int:
        r = self.time_step_rank
        return math.ceil(self.hidden_size / 16) if r == "auto" else int(r)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> MambaConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def mamba_130m(cls, **overrides: Any) -> MambaConfig:
        """The shape of state-spaces/mamba-130m-hf: 24 layers, width 768, vocabulary 50280."""
        return cls(**{"num_hidden_layers": 24, **overrides})


# Upper bounds, so that a damaged or hostile config.json fails before anything is built
# (even on the meta device, a million layers takes minutes): 4x and more the largest
# published Mamba-1 (2.8b: width 2560, 64 layers).
MAX_SIZES = {"vocab_size": 1_048_576, "hidden_size": 16384, "state_size": 1024,
             "num_hidden_layers": 256, "conv_kernel": 64, "expand": 64}


def _validate(c: MambaConfig) -> None:
    check_types(MambaConfig, dataclasses.asdict(c), "MambaConfig")
    for name, limit in MAX_SIZES.items():
        if getattr(c, name) > limit:
            raise ValueError(f"MambaConfig.{name}={getattr(c, name)} is over its limit of "
                             f"{limit} (see mamba_lm.MAX_SIZES)")
    for name in ("vocab_size", "hidden_size", "state_size", "num_hidden_layers", "conv_kernel"):
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"MambaConfig.{name} must be an integer >= 1, got {v!r}")
    if not isinstance(c.expand, (int, float)) or c.intermediate_size < 1:
        raise ValueError(f"MambaConfig.expand must make expand * hidden_size >= 1, got "
                         f"{c.expand!r}")
    r = c.time_step_rank
    if r != "auto" and (isinstance(r, bool) or not isinstance(r, int) or r < 1):
        raise ValueError(f"MambaConfig.time_step_rank must be 'auto' or an integer >= 1, "
                         f"got {r!r}")
    if c.hidden_act != "silu":
        raise ValueError(f"MambaConfig.hidden_act={c.hidden_act!r}: Mamba-1 as built here uses "
                         "'silu' only")
    if not c.layer_norm_epsilon > 0:
        raise ValueError(f"MambaConfig.layer_norm_epsilon must be > 0, got "
                         f"{c.layer_norm_epsilon!r}")
    if not 0 < c.time_step_min <= c.time_step_max:
        raise ValueError(f"MambaConfig needs 0 < time_step_min <= time_step_max, got "
                         f"{c.time_step_min} and {c.time_step_max}")
    if c.scan_backend not in SCAN_BACKENDS:
        raise ValueError(f"MambaConfig.scan_backend must be one of {SCAN_BACKENDS}, got "
                         f"{c.scan_backend!r}")


# ---------------------------------------------------------------- modules
class MambaMixer(ScanDirection):
    """Mamba-1 mixer: in_proj -> (x, z); the bridge's scan direction on x (causal conv,
    SiLU, selective scan) in token order; y * SiLU(z); out_proj. (B, L, H) -> (B, L, H)."""

    def __init__(self, c: MambaConfig) -> None:
        D = c.intermediate_size
        super().__init__(D, c.state_size, conv_kernel=c.conv_kernel, dt_rank=c.dt_rank,
                         dt_min=c.time_step_min, dt_max=c.time_step_max,
                         backend=c.scan_backend, conv_bias=c.use_conv_bias)
        self.in_proj = nn.Linear(c.hidden_size, 2 * D, bias=c.use_bias)
        self.out_proj = nn.Linear(D, c.hidden_size, bias=c.use_bias)
        self.hook_gate = HookPoint()  # (B, L, D) SiLU(z)

    def forward(self, u: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        xs, z = self.in_proj(u).chunk(2, dim=-1)  # (B, L, D) each
        y = super().forward(xs, state=state)  # (B, L, D)
        gate = self.hook_gate(silu(z, self.explain))  # (B, L, D)
        return self.out_proj(gate_product(y, gate, self.explain))  # (B, L, H)

    def allocate_state(self, batch: int, device=None, dtype=torch.float32) -> dict:
        """Zero decoding state: conv window (B, D, K-1) and SSM state (B, D, N)."""
        K = self.conv1d.kernel_size[0]
        return {"conv": torch.zeros(batch, self.dim, K - 1, device=device, dtype=dtype),
                "ssm": torch.zeros(batch, self.dim, self.state_dim, device=device,
                                   dtype=torch.float32)}


class MambaBlock(nn.Module):
    """Pre-norm residual block: x + mixer(RMSNorm(x)), the residual kept in float32 when
    residual_in_fp32 (as transformers does)."""

    def __init__(self, c: MambaConfig) -> None:
        super().__init__()
        self.residual_in_fp32 = c.residual_in_fp32
        self.norm = nn.RMSNorm(c.hidden_size, eps=c.layer_norm_epsilon)
        self.mixer = MambaMixer(c)
        self.hook_resid_post = HookPoint()  # (B, L, H) the residual stream after the block

    def forward(self, x: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        residual = x.float() if self.residual_in_fp32 else x
        out = self.mixer(self.norm(x.to(self.norm.weight.dtype)), state)  # (B, L, H)
        return self.hook_resid_post(residual + out)


@dataclass
class MambaState:
    """Decoding state: per layer {"conv": (B, D, K-1), "ssm": (B, D, N)}, and how many
    tokens have been consumed (the position of the next one)."""

    layers: list[dict[str, torch.Tensor]]
    position: int = 0
    batch: int = field(init=False)

    def __post_init__(self) -> None:
        self.batch = self.layers[0]["ssm"].shape[0]


class MambaLM(nn.Module):
    """Mamba-1 causal language model (see the module docstring). `MambaLM(config, seed=0)`
    initialises randomly (as mamba_ssm does); `MambaLM.from_hf(path)` loads weights."""

    def __init__(self, config: MambaConfig, *, seed: int | None = None) -> None:
        super().__init__()
        if not isinstance(config, MambaConfig):
            raise TypeError(f"MambaLM takes a MambaConfig, got {type(config).__name__}; "
                            "load a Hugging Face folder with MambaLM.from_hf(path)")
        self.config = c = config
        self.hook_embed = HookPoint()  # (B, L, H)
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            self.embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
            nn.init.normal_(self.embeddings.weight, std=0.02)
            self.layers = nn.ModuleList(MambaBlock(c) for _ in range(c.num_hidden_layers))
            self.norm_f = nn.RMSNorm(c.hidden_size, eps=c.layer_norm_epsilon)
            self.lm_head = None if c.tie_word_embeddings else nn.Linear(
                c.hidden_size, c.vocab_size, bias=False)
        self.hook_resid_final = HookPoint()  # (B, L, H) after norm_f
        self.hook_logits = HookPoint()  # (B, L, vocab)

    @property
    def token_offset(self) -> int:
        """Position of the first token of this thread's current call (what intervention
        hooks read while decoding). Kept per thread, so two threads decoding with one
        model never read each other's position."""
        return _OFFSETS.__dict__.get("by_model", {}).get(id(self), 0)

    # ------------------------------------------------------------ forward
    @property
    def output_weight(self) -> torch.Tensor:
        """(vocab, H): the embeddings when tied, else lm_head's weight."""
        return self.embeddings.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, input_ids: torch.Tensor, state: MambaState | None = None) -> torch.Tensor:
        """input_ids (B, L) -> logits (B, L, vocab) in float32.

        state (from `new_state`): continue decoding from it and update it in place: a fresh
        state takes a whole prompt, after that one token per call."""
        self._check_ids(input_ids, state)
        _OFFSETS.__dict__.setdefault("by_model", {})[id(self)] = (
            0 if state is None else state.position)
        x = self.hook_embed(self.embeddings(input_ids))  # (B, L, H)
        if state is not None and input_ids.shape[1] == 1:
            x = mamba_step.step_layers(self.layers, x, state.layers)
        else:
            for i, layer in enumerate(self.layers):
                x = layer(x, None if state is None else state.layers[i])
        if state is not None:
            state.position += input_ids.shape[1]
        x = self.hook_resid_final(self.norm_f(x.to(self.norm_f.weight.dtype)))  # (B, L, H)
        if x.shape[1] == 1:  # a decoding step: the head streamed once (mamba_step.head)
            logits = mamba_step.head(x[:, 0], self.output_weight)[:, None]  # (B, 1, vocab)
        else:
            logits = F.linear(x, self.output_weight)
        return self.hook_logits(logits.float())  # (B, L, vocab)

    def new_state(self, batch: int, device=None) -> MambaState:
        """A zero decoding state for `batch` sequences."""
        p = self.embeddings.weight
        return MambaState([layer.mixer.allocate_state(batch, device or p.device, p.dtype)
                           for layer in self.layers])

    def step(self, token_ids: torch.Tensor, state: MambaState) -> torch.Tensor:
        """One decoding step: token_ids (B,) -> logits (B, vocab); `state` moves on by one."""
        return self(token_ids[:, None], state)[:, 0]

    def _check_ids(self, ids, state: MambaState | None) -> None:
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise ValueError(f"input_ids must be a 2-D tensor (batch, length), got {shape}")
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.shape[1] == 0:
            raise ValueError(f"input_ids must hold at least one integer token id per row, got "
                             f"dtype {ids.dtype} and shape {tuple(ids.shape)}")
        V = self.config.vocab_size
        if ((ids < 0) | (ids >= V)).any():
            bad = ids[(ids < 0) | (ids >= V)][0].item()
            raise ValueError(f"input_ids holds id {bad}, outside the vocabulary [0, {V})")
        if state is not None and (state.batch != ids.shape[0] or
                                  (state.position > 0 and ids.shape[1] != 1)):
            raise ValueError(f"a decoding state of batch {state.batch} at position "
                             f"{state.position} takes (batch={state.batch}, 1) ids (a whole "
                             f"prompt only when fresh), got shape {tuple(ids.shape)}")

    # ------------------------------------------------------------ hooks
    def hook_names(self, heavy: bool = True) -> list[str]:
        """Every hook point, in module order (the heavy (B, L, D, N) ones unless heavy=False)."""
        return hk.hook_names(self, heavy=heavy)

    def hooks(self, fwd_hooks=(), **kwargs):
        """Context manager attaching fn(tensor, name) -> tensor | None at (name or glob, fn)
        pairs (see ssm_bridge.core.hooks.hooks); they fire in forward, step and generate."""
        return hk.hooks(self, fwd_hooks, **kwargs)

    def run_with_cache(self, input_ids: torch.Tensor, names_filter=None, *, heavy: bool = False,
                       grad: bool = False):
        """(logits, ActivationCache) of one forward. names_filter: a name, glob, list or
        predicate (None: all but the heavy ones; heavy=True adds them)."""
        fwd_hooks, store = hk.capture(hk.resolve_names(self, names_filter, heavy=heavy))
        with torch.set_grad_enabled(grad), self.hooks(fwd_hooks):
            logits = self(input_ids)
        return logits, hk.ActivationCache(store)

    # ------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens: int = 20, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, *, generator: torch.Generator | None = None,
                 eos_token_id: int | None = None, record=None, heavy: bool = False):
        """Continue input_ids (B, S) (or (S,), or a list) by max_new_tokens tokens: (B, S + n).

        The prompt runs through one forward that leaves each layer's conv window and state h;
        every new token is then one recurrent step. temperature 0 is greedy, otherwise logits
        / temperature cut to top_k and the top_p nucleus are sampled with `generator` (or one
        seeded with `seed`). eos_token_id: rows stop there (then padded with it), None: never.
        record: hook names or globs (as run_with_cache; heavy=True for hook_state) to capture
        at every token fed to the model: returns (ids, ActivationCache) whose tensors are
        (B, S + n - 1, ...), what run_with_cache gives on ids[:, :-1]."""
        ids = torch.as_tensor(input_ids, dtype=torch.long, device=self.embeddings.weight.device)
        ids = ids[None] if ids.dim() == 1 else ids  # (B, S)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
                or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        check_sampling_params(temperature, top_k, top_p)
        if generator is None and seed is not None:
            generator = torch.Generator(device=ids.device).manual_seed(seed)
        args = (ids, max_new_tokens, temperature, top_k, top_p, generator, eos_token_id)
        was_training = self.training
        self.eval()
        try:
            if record is None:
                return self._decode(*args)
            names = hk.resolve_names(self, record, heavy=heavy)
            store: dict[str, list[torch.Tensor]] = {n: [] for n in names}
            keep = [(n, lambda t, name: store[name].append(t.detach())) for n in names]
            with self.hooks(keep):
                out = self._decode(*args)
            return out, hk.ActivationCache({n: torch.cat(v, 1) for n, v in store.items()})
        finally:
            self.train(was_training)

    def _decode(self, ids, max_new_tokens, temperature, top_k, top_p, generator, eos):
        state = self.new_state(ids.shape[0])
        logits = self(ids, state)[:, -1]  # (B, vocab): the prompt, once
        finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        out = [ids]
        for i in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
            if eos is not None:
                nxt = nxt.masked_fill(finished, eos)
                finished |= nxt == eos
            out.append(nxt[:, None])
            if i == max_new_tokens - 1 or bool(finished.all()):
                break
            logits = self.step(nxt, state)  # (B, vocab)
        return torch.cat(out, dim=1)  # (B, S + n)

    # ------------------------------------------------------------ misc
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_hf(cls, source, *, dtype: torch.dtype = torch.float32,
                scan_backend: str = "auto") -> MambaLM:
        """Load a transformers MambaForCausalLM: a local folder (config.json + *.safetensors)
        or an in-memory model. Every tensor is mapped and shape-checked before anything is
        allocated; nothing is downloaded. See ssm_bridge/mamba/hf.py."""
        from .hf import load_hf

        return load_hf(cls, source, dtype=dtype, scan_backend=scan_backend)

    def save_hf(self, path) -> Path:
        """Write a transformers-loadable folder (config.json + model.safetensors) at `path`."""
        from .hf import save_hf

        return save_hf(self, path)
