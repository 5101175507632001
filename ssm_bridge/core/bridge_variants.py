"""Bridge variants between the ViT and the decoder, chosen by `VLMConfig.bridge_type`.

    bridge = build_bridge(config)        # (B, L, vision_dim) -> (B, L', text_dim)

Every variant maps the ViT tokens (B, L = 1 + P, vision_dim) to media tokens
(B, L', text_dim) for the decoder, and has the hook points `hook_in` and `hook_out`:

    type       what it is                                            L'
    ssm        selective SSM (Mamba S6): EnhancedSSMBridge           L
    ssm_lti    the same blocks, Δ, B, C independent of the input     L
               (S4D-style, linear time-invariant)
    seed_ssm   the original package's dense-A non-selective loop     L
               (a slow baseline: SeedSSMLayer)
    mlp        LLaVA-1.5's projector: Linear, GELU, Linear           L
    resampler  Perceiver resampler: learned latents cross-attend     resampler_latents
               to the tokens (Flamingo / BLIP-2)
    linear     one projection                                        L

Hooks beyond hook_in / hook_out: ssm and ssm_lti have every SSM hook (for ssm_lti,
hook_delta / hook_B / hook_C see parameters broadcast over (B, L)); seed_ssm has
layers.{i}.hook_resid_post and layers.{i}.mixer.hook_state (B, L, N); resampler has
layers.{i}.attn.hook_pattern (B, H, M, L + M) and layers.{i}.hook_resid_post.

`hook_in` is the bridge's first internal representation: after the input projection
(ssm, ssm_lti, seed_ssm, resampler: (B, L, hidden)), after the first Linear (mlp:
(B, L, text_dim)), or the input itself (linear: (B, L, vision_dim)).

The SSM interpretability tools (ssm_bridge.interp.maps, implicit_attention, interventions,
probes' per-layer states, the app's SSM panels) read `bridge.layers.<i>.mixer.dirs`
and assume L' = 1 + P: they apply to "ssm" and "ssm_lti" only. `require_ssm_bridge`
raises a clear error for the others. Everything else (training, generation, the
decoder and cross-attention hooks, checkpoints) works with every variant, whatever L'.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from ..config import BRIDGE_TYPES, VLMConfig
from .attention import CrossModalAttention
from .bridge import BridgeBlock, EnhancedSSMBridge
from .hooks import HookPoint
from .layers import GeluMLP, Swish, maybe_checkpoint

SSM_BRIDGES = ("ssm", "ssm_lti")  # bridges the SSM interpretability tools understand


def build_bridge(config: VLMConfig) -> nn.Module:
    """The bridge module `config.bridge_type` names (see the module docstring)."""
    if config.bridge_type not in BUILDERS:
        raise ValueError(f"bridge_type must be one of {BRIDGE_TYPES}, got "
                         f"{config.bridge_type!r}")
    return BUILDERS[config.bridge_type](config)


def require_ssm_bridge(model: nn.Module, what: str = "this analysis") -> None:
    """Raise a ValueError unless `model`'s bridge is one the SSM tools understand."""
    kind = model.config.bridge_type
    if kind not in SSM_BRIDGES:
        raise ValueError(
            f"{what} reads the SSM bridge's scan (bridge.layers.<i>.mixer.dirs) and a "
            f"1 + P token grid; this model has bridge_type={kind!r}. Use a model with "
            f"bridge_type in {SSM_BRIDGES}, or the decoder-side hooks (cross-attention, "
            "prefix attention), which work with every bridge")


# ---------------------------------------------------------------- ssm_lti
class LTISSMBridge(EnhancedSSMBridge):
    """EnhancedSSMBridge whose scans are linear time-invariant (S4D-style): Δ is a learned
    per-channel step (softplus of a bias), B and C learned (N,) vectors, none computed from
    the input (`ScanDirection(selective=False)`). Same blocks, conv, gate, scan orders and
    hook names as the selective bridge; hook_delta / hook_B / hook_C see the parameters
    broadcast over (B, L)."""

    def __init__(self, c: VLMConfig) -> None:
        super().__init__(c.vision_embed_dim, c.ssm_state_dim, c.ssm_hidden_dim, c.text_embed_dim,
                         0, c.ssm_dropout, eps=c.layer_norm_eps,
                         gradient_checkpointing=c.gradient_checkpointing)
        self.layers = nn.ModuleList(  # re-assigned: keeps its place before norm / out_proj
            BridgeBlock(c.ssm_hidden_dim, c.ssm_state_dim, c.ssm_dropout, c.layer_norm_eps,
                        conv_kernel=c.ssm_conv_kernel, dt_rank=c.ssm_dt_rank,
                        dt_min=c.ssm_dt_min, dt_max=c.ssm_dt_max, scan_order=c.ssm_scan_order,
                        backend=c.ssm_scan_backend, selective=False)
            for _ in range(c.ssm_num_layers)
        )

    @classmethod
    def from_config(cls, c: VLMConfig) -> LTISSMBridge:
        return cls(c)


# ---------------------------------------------------------------- seed_ssm
class SeedSSMLayer(nn.Module):
    """The original package's kind of SSM: one dense state matrix, no selection, a loop.

        Ā, B̄ = ZOH(A, B, Δ)          Ā = exp(Δ A) (matrix exponential), B̄ = ∫₀^Δ e^{As} ds B
        h_t = Ā h_{t-1} + B̄ x_t       h: (B, N), A: (N, N) dense, B: (N, D)
        y_t = C h_t + D ⊙ x_t         C: (D, N), D: (D,)

    Δ is one learned scalar (log-parameterised) shared by every token and channel, and
    A, B, C do not depend on the input: a linear time-invariant system whose dense A
    mixes the state dimensions, run token by token in Python. It is kept as the baseline
    the seed shipped: slow (O(L) sequential matmuls, no fused scan) and non-selective.
    B̄ comes from the exponential of the block matrix [[A, B], [0, 0]] Δ, exact ZOH
    without inverting A. x: (B, L, D) -> (B, L, D).
    """

    def __init__(self, hidden_dim: int, state_dim: int, dt_min: float = 1e-3,
                 dt_max: float = 0.1) -> None:
        super().__init__()
        self.hidden_dim, self.state_dim = hidden_dim, state_dim
        # A = -I + small noise: stable (eigenvalues near -1) and dense once trained.
        self.A = nn.Parameter(-torch.eye(state_dim) + 0.01 * torch.randn(state_dim, state_dim))
        self.B = nn.Parameter(torch.randn(state_dim, hidden_dim) * hidden_dim**-0.5)
        self.C = nn.Parameter(torch.randn(hidden_dim, state_dim) * state_dim**-0.5)
        self.D = nn.Parameter(torch.ones(hidden_dim))
        dt = (dt_min * dt_max) ** 0.5  # geometric middle of the selective bridge's range
        self.log_dt = nn.Parameter(torch.tensor(dt).log())
        for p in (self.A, self.D, self.log_dt):
            p._no_weight_decay = True
        self.hook_state = HookPoint()  # (B, L, N) the state trajectory h

    def discretise(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Ā (N, N), B̄ (N, D)) by zero-order hold with step Δ = exp(log_dt)."""
        N, D = self.state_dim, self.hidden_dim
        top = torch.cat([self.A, self.B], dim=1)  # (N, N + D)
        M = torch.cat([top, top.new_zeros(D, N + D)], dim=0) * self.log_dt.exp()  # (N+D, N+D)
        E = torch.linalg.matrix_exp(M)  # [[Ā, B̄], [0, I]]
        return E[:N, :N], E[:N, N:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        A_bar, B_bar = self.discretise()
        xf = x.float()
        h = xf.new_zeros(x.shape[0], self.state_dim)  # (B, N)
        states = []
        for t in range(x.shape[1]):
            h = h @ A_bar.T + xf[:, t] @ B_bar.T  # (B, N)
            states.append(h)
        hs = self.hook_state(torch.stack(states, dim=1))  # (B, L, N)
        y = hs @ self.C.T + xf * self.D  # (B, L, D)
        return y.to(x.dtype)


class SeedSSMBlock(nn.Module):
    """x + Dropout(sigmoid(gate(LN(x))) * Swish(SeedSSMLayer(LN(x)))): a residual SSM
    layer with an adaptive gate, as the seed's description lists them."""

    def __init__(self, hidden_dim: int, state_dim: int, dropout: float, eps: float,
                 dt_min: float, dt_max: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_dim, eps=eps)
        self.mixer = SeedSSMLayer(hidden_dim, state_dim, dt_min, dt_max)
        self.gate = nn.Linear(hidden_dim, hidden_dim)
        self.act = Swish()
        self.drop = nn.Dropout(dropout)
        self.hook_resid_post = HookPoint()  # (B, L, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        y = torch.sigmoid(self.gate(h)) * self.act(self.mixer(h))  # (B, L, D)
        return self.hook_resid_post(x + self.drop(y))


class SeedSSMBridge(nn.Module):
    """The seed's bridge: in_proj -> `ssm_num_layers` SeedSSMBlocks -> LayerNorm ->
    out_proj. (B, L, vision_dim) -> (B, L, text_dim). A baseline: slow and non-selective.

    The seed's source is not available here; this follows its PyPI description (stacked
    SSM layers with residual connections, a Swish activation, adaptive gating, state 64 /
    hidden 256 by default) and the dense-A, fixed-Δ loop its SSMLayer ran.
    """

    def __init__(self, c: VLMConfig) -> None:
        super().__init__()
        D = c.ssm_hidden_dim
        self.in_proj = nn.Linear(c.vision_embed_dim, D)
        self.layers = nn.ModuleList(
            SeedSSMBlock(D, c.ssm_state_dim, c.ssm_dropout, c.layer_norm_eps, c.ssm_dt_min,
                         c.ssm_dt_max)
            for _ in range(c.ssm_num_layers)
        )
        self.norm = nn.LayerNorm(D, eps=c.layer_norm_eps)
        self.out_proj = nn.Linear(D, c.text_embed_dim)
        self.gradient_checkpointing = c.gradient_checkpointing
        self.hook_in = HookPoint()  # (B, L, D)
        self.hook_out = HookPoint()  # (B, L, text_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hook_in(self.in_proj(x))  # (B, L, D)
        for layer in self.layers:
            x = maybe_checkpoint(layer, x, self.gradient_checkpointing and self.training)
        return self.hook_out(self.out_proj(self.norm(x)))  # (B, L, text_dim)


# ---------------------------------------------------------------- mlp, linear
class MLPBridge(nn.Module):
    """LLaVA-1.5's projector ("mlp2x_gelu"): Linear(vision, text), GELU, Linear(text, text).
    (B, L, vision_dim) -> (B, L, text_dim)."""

    def __init__(self, c: VLMConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(c.vision_embed_dim, c.text_embed_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(c.text_embed_dim, c.text_embed_dim)
        self.hook_in = HookPoint()  # (B, L, text_dim) after fc1, before GELU
        self.hook_out = HookPoint()  # (B, L, text_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_out(self.fc2(self.act(self.hook_in(self.fc1(x)))))


class LinearBridge(nn.Module):
    """One projection: (B, L, vision_dim) -> (B, L, text_dim)."""

    def __init__(self, c: VLMConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(c.vision_embed_dim, c.text_embed_dim)
        self.hook_in = HookPoint()  # (B, L, vision_dim) the ViT tokens
        self.hook_out = HookPoint()  # (B, L, text_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_out(self.proj(self.hook_in(x)))


# ---------------------------------------------------------------- resampler
class ResamplerBlock(nn.Module):
    """Flamingo's Perceiver-resampler layer: the latents attend to [tokens ; latents],
    then a GELU feed-forward; both residual, pre-norm."""

    def __init__(self, dim: int, heads: int, dropout: float, eps: float, eager: bool) -> None:
        super().__init__()
        self.norm_x = nn.LayerNorm(dim, eps=eps)
        self.norm_q = nn.LayerNorm(dim, eps=eps)
        self.attn = CrossModalAttention(dim, heads, dropout, kv_heads=heads, eager=eager)
        self.norm_ff = nn.LayerNorm(dim, eps=eps)
        self.ff = GeluMLP(dim, 4 * dim, dropout)
        self.hook_resid_post = HookPoint()  # (B, M, dim)

    def forward(self, latents: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """latents (B, M, dim), tokens (B, L, dim) -> latents (B, M, dim). attn.hook_pattern
        sees (B, H, M, L + M): the first L columns are the image tokens."""
        q = self.norm_q(latents)
        kv = torch.cat([self.norm_x(tokens), q], dim=1)  # (B, L + M, dim)
        latents = latents + self.attn(q, kv, kv)
        latents = latents + self.ff(self.norm_ff(latents))
        return self.hook_resid_post(latents)


class ResamplerBridge(nn.Module):
    """Perceiver resampler (Flamingo; BLIP-2's Q-Former plays the same role): M learned
    latents read the image through `resampler_layers` cross-attention blocks.
    (B, L, vision_dim) -> (B, M, text_dim), M = config.resampler_latents, whatever L."""

    def __init__(self, c: VLMConfig) -> None:
        super().__init__()
        dim = c.text_embed_dim
        self.in_proj = nn.Linear(c.vision_embed_dim, dim)
        self.latents = nn.Parameter(torch.randn(c.resampler_latents, dim) * 0.02)
        self.layers = nn.ModuleList(
            ResamplerBlock(dim, c.cross_attn_heads, c.dropout, c.layer_norm_eps,
                           eager=c.attn_impl == "eager")
            for _ in range(c.resampler_layers)
        )
        self.norm = nn.LayerNorm(dim, eps=c.layer_norm_eps)
        self.gradient_checkpointing = c.gradient_checkpointing
        self.hook_in = HookPoint()  # (B, L, dim) the projected image tokens
        self.hook_out = HookPoint()  # (B, M, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hook_in(self.in_proj(x))  # (B, L, dim)
        lat = rearrange(self.latents, "m d -> 1 m d").expand(x.shape[0], -1, -1)  # (B, M, dim)
        ckpt = self.gradient_checkpointing and self.training
        for layer in self.layers:
            lat = maybe_checkpoint(layer, lat, ckpt, tokens=x)
        return self.hook_out(self.norm(lat))  # (B, M, dim)


BUILDERS = {
    "ssm": EnhancedSSMBridge.from_config,
    "ssm_lti": LTISSMBridge,
    "seed_ssm": SeedSSMBridge,
    "mlp": MLPBridge,
    "resampler": ResamplerBridge,
    "linear": LinearBridge,
}
