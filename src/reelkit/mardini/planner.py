"""The MarDini planner (MAR): a Llama-style transformer over low-resolution frame latents.

Every latent pixel of every frame is one token (``(B, T*h*w, D)``); the frames to generate have all
their tokens replaced by a learnable [MASK] token. Blocks are pre-norm (RMSNorm) self-attention with
LayerNorm on q and k ("QK-norm") and rotary positions over frames, rows and columns, then a SwiGLU MLP
(MarDini section 2.3.1). Attention is full spatio-temporal, affordable because the planner sees the
clip at low resolution; with ``identity_attention`` the known frames' query rows see only themselves.
The output is the planning signal, one ``(h, w, D)`` map per frame, which the generator cross-attends.

``reconstruction_head`` (f_zeta) maps the output back to latents for the planner's warm-up loss
``|M Z - M f(P(Z_mask))|^2`` (``reconstruct=True``); sampling never uses it.

>>> import torch
>>> from reelkit.mardini.planner import MarDiniPlanner
>>> planner = MarDiniPlanner(num_layers=2, num_attention_heads=2, attention_head_dim=16).eval()
>>> latents = torch.randn(1, 8, 9, 4, 4)                              # (B, C, T, h, w) low-res frame latents
>>> reference = torch.zeros(1, 9, dtype=torch.bool); reference[:, [0, 8]] = True  # first and last known
>>> out = planner(latents, reference, reconstruct=True)
>>> out.plan.shape, out.reconstruction.shape                          # (B, T, h, w, D), (B, C, T, h, w)
(torch.Size([1, 9, 4, 4, 32]), torch.Size([1, 8, 9, 4, 4]))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from reelkit.errors import ShapeError
from reelkit.mardini.attention import IdentityAttnProcessor, rotary_3d


@dataclass
class PlannerOutput(BaseOutput):
    plan: torch.Tensor  # (B, T, h, w, D)
    reconstruction: torch.Tensor | None = None  # (B, C, T, h, w), warm-up only


class PlannerBlock(nn.Module):
    """Pre-norm spatio-temporal self-attention (QK-norm, rotary) and SwiGLU MLP on ``(B, T*S, D)``."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.RMSNorm(dim, eps=1e-6)
        self.attn = Attention(query_dim=dim, heads=num_attention_heads, dim_head=attention_head_dim,
                              qk_norm="layer_norm", eps=1e-6, bias=False, processor=IdentityAttnProcessor())
        self.norm2 = nn.RMSNorm(dim, eps=1e-6)
        self.ff = FeedForward(dim, mult=mlp_ratio, activation_fn="swiglu", bias=False)

    def forward(self, x: torch.Tensor, reference: torch.Tensor | None, rotary_emb) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), reference=reference, rotary_emb=rotary_emb)
        return x + self.ff(self.norm2(x))


class MarDiniPlanner(ModelMixin, ConfigMixin):
    """Masked-autoregressive planner over ``(B, C, T, h, w)`` low-resolution latents.

    ``reference`` is ``(B, T)`` bool, true for known frames; the others are masked whatever their latents
    hold. ``identity_attention=False`` is the ablation without Identity Attention.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, in_channels: int = 8, num_layers: int = 4, num_attention_heads: int = 4,
                 attention_head_dim: int = 32, mlp_ratio: float = 2.0, identity_attention: bool = True,
                 reconstruction_head: bool = True, rope_theta: float = 10000.0):
        super().__init__()
        dim = num_attention_heads * attention_head_dim
        self.patch_embed = nn.Linear(in_channels, dim)
        self.mask_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.blocks = nn.ModuleList(
            PlannerBlock(dim, num_attention_heads, attention_head_dim, mlp_ratio) for _ in range(num_layers))
        self.norm_out = nn.RMSNorm(dim, eps=1e-6)
        self.reconstruction_proj = nn.Linear(dim, in_channels) if reconstruction_head else None
        self.gradient_checkpointing = False

    def forward(self, latents: torch.Tensor, reference: torch.Tensor, reconstruct: bool = False,
                return_dict: bool = True) -> PlannerOutput | tuple:
        B, C, T, h, w = latents.shape
        if self.config.in_channels != C or tuple(reference.shape) != (B, T):
            raise ShapeError(f"the planner expects latents with {self.config.in_channels} channels and a (B, T) "
                             f"reference mask; got {tuple(latents.shape)} and {tuple(reference.shape)}")
        S = h * w
        tokens = self.patch_embed(latents.permute(0, 2, 3, 4, 1).reshape(B, T * S, C))  # (B, T*S, D)
        known = reference.to(tokens.device)[:, :, None].expand(B, T, S).reshape(B, T * S)
        x = torch.where(known[..., None], tokens, self.mask_token.to(tokens.dtype))
        rotary_emb = rotary_3d(self.config.attention_head_dim, T, h, w, self.config.rope_theta, x.device)
        identity = known if self.config.identity_attention else None
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, identity, rotary_emb)
            else:
                x = block(x, identity, rotary_emb)
        x = self.norm_out(x)  # (B, T*S, D)
        reconstruction = None
        if reconstruct:
            if self.reconstruction_proj is None:
                raise ShapeError("this planner has no reconstruction head (reconstruction_head=False)")
            reconstruction = self.reconstruction_proj(x).view(B, T, h, w, C).permute(0, 4, 1, 2, 3)
        plan = x.view(B, T, h, w, -1)
        if not return_dict:
            return plan, reconstruction
        return PlannerOutput(plan=plan, reconstruction=reconstruction)


__all__ = ["MarDiniPlanner", "PlannerBlock", "PlannerOutput"]
