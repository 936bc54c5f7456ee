"""The MarDini generator (DM): a light DiT over high-resolution frame latents, steered by the planner.

Tokens are ``(B, T*S, D)`` as in :class:`reelkit.models.dit.VideoDiT` (space patchified, every frame keeps
its tokens) and the block reuses ``VideoDiTBlock``'s modules. Each block runs (MarDini Fig. 2):

1. spatial self-attention within each frame,
2. cross-attention from each frame's tokens to *that frame's* planning signal (frame-aligned),
3. temporal self-attention across frames at each location (``attention="spatiotemporal"``: over all
   tokens), with Identity Attention: [REF] rows (known frames) see only themselves,
4. an MLP whose input also receives the planning signal, projected and resampled to the token grid,

each as ``x = x + gate * branch(modulate(norm(x)))`` with adaLN-zero from the diffusion timestep. The
timestep is per frame: known frames are clean (t = 0), frames to generate share the sampler's t
(``frame_timesteps=False``: every frame gets t, as in the paper).
The planner replaced by the learnable null plan (Z_uncond, ``plan=None``) gives the unconditional
branch of classifier-free guidance and the generator-only warm-up.

>>> import torch
>>> from reelkit.mardini.generator import MarDiniGenerator
>>> generator = MarDiniGenerator(num_layers=2, num_attention_heads=2, attention_head_dim=16, plan_dim=32).eval()
>>> latents = torch.randn(1, 8, 9, 8, 8)                      # (B, C, T, H, W) high-res frame latents
>>> plan = torch.randn(1, 9, 4, 4, 32)                         # (B, T, h, w, D_plan) from the planner
>>> reference = torch.zeros(1, 9, dtype=torch.bool); reference[:, 0] = True
>>> timestep = torch.where(reference, 0.0, 700.0)             # (B, T): sigma * 1000 per frame
>>> generator(latents, timestep, plan, reference).sample.shape  # the flow-matching velocity
torch.Size([1, 8, 9, 8, 8])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from reelkit.errors import ShapeError
from reelkit.mardini.attention import IdentityAttnProcessor
from reelkit.models.dit import (
    NUM_BRANCHES,
    VideoDiTBlock,
    check_latents,
    modulate,
    patchify,
    sincos_positions,
    unpatchify,
)

ATTENTION = ("temporal", "spatiotemporal")


class MarDiniGeneratorBlock(VideoDiTBlock):
    """A ``VideoDiTBlock`` whose cross-attention reads the planning signal frame by frame and whose
    temporal attention is Identity Attention; modulation is per frame."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, plan_dim: int,
                 mlp_ratio: float, attention: str):
        super().__init__(dim, num_attention_heads, attention_head_dim, plan_dim, mlp_ratio)
        self.attn_temporal.set_processor(IdentityAttnProcessor())
        self.attention = attention

    def forward(self, x: torch.Tensor, plan: torch.Tensor, plan_tokens: torch.Tensor, temb: torch.Tensor,
                num_frames: int, reference: torch.Tensor | None) -> torch.Tensor:
        B, N, C = x.shape  # (B, T*S, C)
        T, S = num_frames, N // num_frames
        modulation = self.scale_shift_table[None, None] + temb.view(B, T, 3 * NUM_BRANCHES, C)
        shift, scale, gate = modulation.view(B, T, NUM_BRANCHES, 3, 1, C).unbind(3)  # each (B, T, 4, 1, C)

        def modulated(norm: nn.Module, branch: int) -> torch.Tensor:  # (B, T, S, C)
            return modulate(norm(x).view(B, T, S, C), shift[:, :, branch], scale[:, :, branch])

        def gated(h: torch.Tensor, branch: int) -> torch.Tensor:  # (B, T*S, C)
            return (gate[:, :, branch] * h.reshape(B, T, S, C)).reshape(B, N, C)

        x = x + gated(self.attn1(modulated(self.norm1, 0).reshape(B * T, S, C)), 0)  # spatial
        h = self.attn2(modulated(self.norm2, 2).reshape(B * T, S, C), encoder_hidden_states=plan)  # (B*T, S, C)
        x = x + gated(h, 2)

        h = modulated(self.norm_temporal, 1)
        if self.attention == "temporal":
            h = h.transpose(1, 2).reshape(B * S, T, C)
            ref = None if reference is None else reference[:, None].expand(B, S, T).reshape(B * S, T)
            h = self.attn_temporal(h, reference=ref).view(B, S, T, C).transpose(1, 2)
        else:
            ref = None if reference is None else reference[:, :, None].expand(B, T, S).reshape(B, N)
            h = self.attn_temporal(h.reshape(B, N, C), reference=ref)
        x = x + gated(h, 1)

        h = modulated(self.norm3, 3) + plan_tokens.view(B, T, S, C)
        return x + gated(self.ff(h), 3)


class MarDiniGenerator(ModelMixin, ConfigMixin):
    """Planning-conditioned video DiT over ``(B, C, T, H, W)`` frame latents, predicting the velocity.

    ``timestep`` is ``sigma * 1000``, per sample ``(B,)`` or per frame ``(B, T)`` (:meth:`timesteps`); ``plan``
    the planner's ``(B, T, h, w, plan_dim)`` output (any ``h, w``: it is resampled to the token grid) or
    ``None`` for the null plan; ``reference`` ``(B, T)`` bool marks the known frames for Identity Attention.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["MarDiniGeneratorBlock"]

    @register_to_config
    def __init__(self, in_channels: int = 8, patch_size: int = 2, num_layers: int = 4,
                 num_attention_heads: int = 4, attention_head_dim: int = 16, plan_dim: int = 128,
                 mlp_ratio: float = 4.0, sample_size: int = 8, frequency_dim: int = 256,
                 attention: str = "temporal", identity_attention: bool = True, frame_timesteps: bool = True):
        super().__init__()
        if attention not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
        dim = num_attention_heads * attention_head_dim
        self.patch_embed = nn.Linear(in_channels * patch_size**2, dim)
        self.time_proj = Timesteps(frequency_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(frequency_dim, dim)
        self.time_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * NUM_BRANCHES * dim))
        self.null_plan = nn.Parameter(torch.randn(plan_dim) * 0.02)  # Z_uncond
        self.plan_embed = nn.Linear(plan_dim, dim)  # the planning signal added in each MLP path
        self.transformer_blocks = nn.ModuleList(
            MarDiniGeneratorBlock(dim, num_attention_heads, attention_head_dim, plan_dim, mlp_ratio, attention)
            for _ in range(num_layers))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.scale_shift_out = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.proj_out = nn.Linear(dim, in_channels * patch_size**2)
        self.gradient_checkpointing = False
        # adaLN-zero: branches start closed, the output at zero (DiT, section 3.2)
        for layer in (self.time_modulation[-1], self.proj_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        for block in self.transformer_blocks:
            block.scale_shift_table.data[2::3].zero_()

    def timesteps(self, t: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` timesteps for the sampler's ``t`` ``(B,)`` or scalar: 0 on known frames, which are clean,
        and ``t`` elsewhere; with ``frame_timesteps=False`` (the paper's shared timestep) ``t`` everywhere."""
        t = torch.as_tensor(t, dtype=torch.float32, device=reference.device).reshape(-1, 1).expand(reference.shape)
        return torch.where(reference, 0.0, t) if self.config.frame_timesteps else t

    def unconditional_plan(self, batch: int, num_frames: int, height: int, width: int) -> torch.Tensor:
        """The null plan Z_uncond, ``(B, T, h, w, plan_dim)``."""
        return self.null_plan.to(self.dtype).expand(batch, num_frames, height, width, -1)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor | float, plan: torch.Tensor | None = None,
                reference: torch.Tensor | None = None, return_dict: bool = True
                ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        p = self.config.patch_size
        check_latents("the generator", hidden_states, self.config.in_channels, p)
        B, C, T, H, W = hidden_states.shape
        h, w = H // p, W // p
        if plan is None:
            plan = self.unconditional_plan(B, T, h, w)
        if plan.shape[:2] != (B, T) or plan.shape[-1] != self.config.plan_dim:
            raise ShapeError(f"the plan must be (B={B}, T={T}, h, w, {self.config.plan_dim}); got {tuple(plan.shape)}")
        if reference is not None and tuple(reference.shape) != (B, T):
            raise ShapeError(f"reference must be (B, T) = ({B}, {T}); got {tuple(reference.shape)}")
        dim = self.config.num_attention_heads * self.config.attention_head_dim
        positions = sincos_positions(dim, T, h, w, max(1, self.config.sample_size // p), hidden_states.device)
        x = self.patch_embed(patchify(hidden_states, p)) + positions.to(hidden_states.dtype)  # (B, T*S, D)

        timestep = torch.as_tensor(timestep, device=x.device, dtype=torch.float32)
        timestep = (timestep[:, None] if timestep.ndim == 1 else timestep).expand(B, T)
        t_emb = self.time_embedding(self.time_proj(timestep.reshape(-1)).to(x.dtype)).view(B, T, dim)
        temb = self.time_modulation(t_emb)  # (B, T, 12*D)

        plan = plan.to(x.dtype)
        plan_h, plan_w = plan.shape[2:4]
        cross = plan.reshape(B * T, plan_h * plan_w, -1)  # (B*T, S_plan, D_plan): each frame reads its own plan
        plan_tokens = self.plan_embed(plan).permute(0, 1, 4, 2, 3).reshape(B * T, dim, plan_h, plan_w)
        if (plan_h, plan_w) != (h, w):
            plan_tokens = F.interpolate(plan_tokens, size=(h, w), mode="bilinear", align_corners=False)
        plan_tokens = plan_tokens.view(B, T, dim, h * w).transpose(2, 3).reshape(B, T * h * w, dim)

        identity = reference.to(x.device) if reference is not None and self.config.identity_attention else None
        for block in self.transformer_blocks:
            args = (x, cross, plan_tokens, temb, T, identity)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, *args)
            else:
                x = block(*args)

        shift, scale = (self.scale_shift_out[None, None] + t_emb[:, :, None]).unbind(2)  # (B, T, D) each
        x = modulate(self.norm_out(x).view(B, T, h * w, dim), shift[:, :, None], scale[:, :, None])
        sample = unpatchify(self.proj_out(x).view(B, T * h * w, -1), T, h, w, p)
        if not return_dict:
            return (sample,)
        return Transformer2DModelOutput(sample=sample)


__all__ = ["MarDiniGenerator", "MarDiniGeneratorBlock"]
