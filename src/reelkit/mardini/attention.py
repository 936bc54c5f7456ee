"""Identity Attention (MarDini, section 2.3.2) and 3D rotary positions, as one diffusers attention processor.

Identity Attention: query rows of [REF] tokens (clean, known frames) see only themselves, rows of [NOISE]
(generator) or [MASK] (planner) tokens see every token. A softmax over a single key is 1, so a [REF]
row's output is exactly its own value vector: the processor runs ordinary attention for every row and
then substitutes ``v_i`` on [REF] rows, which never builds an ``N x N`` mask.

>>> import torch
>>> from diffusers.models.attention_processor import Attention
>>> from reelkit.mardini.attention import IdentityAttnProcessor
>>> attn = Attention(query_dim=16, heads=2, dim_head=8, processor=IdentityAttnProcessor())
>>> x = torch.randn(1, 5, 16)                                    # (B, N, C)
>>> reference = torch.tensor([[True, False, False, False, True]])  # first and last tokens are [REF]
>>> y = attn(x, reference=reference)
>>> torch.allclose(y[:, 0], attn.to_out[0](attn.to_v(x))[:, 0], atol=1e-6)  # [REF] row = its own value
True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb, get_1d_rotary_pos_embed


def rotary_3d(head_dim: int, num_frames: int, height: int, width: int, theta: float = 10000.0,
              device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each ``(T*h*w, head_dim)``: rotary positions over frames, rows and columns, the head
    dimension split between the three axes (a quarter each for rows and columns, the rest for frames)."""
    quarter = head_dim // 8 * 2  # even, as rotary pairs need
    axis_dims = [head_dim - 2 * quarter, quarter, quarter]
    grids = torch.meshgrid(torch.arange(num_frames), torch.arange(height), torch.arange(width), indexing="ij")
    cos, sin = [], []
    for axis_dim, grid in zip(axis_dims, grids, strict=True):
        c, s = get_1d_rotary_pos_embed(axis_dim, grid.reshape(-1).float(), theta=theta, use_real=True)
        cos.append(c)
        sin.append(s)
    return torch.cat(cos, -1).to(device), torch.cat(sin, -1).to(device)


class IdentityAttnProcessor:
    """Self- or cross-attention with optional Identity Attention (``reference``: ``(B, N)`` bool, true on
    [REF] query rows) and optional rotary positions (``rotary_emb``: (cos, sin) of ``(N, head_dim)``)."""

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, reference: torch.Tensor | None = None,
                 rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, N, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = attn.to_q(hidden_states).unflatten(-1, (attn.heads, -1)).transpose(1, 2)  # (B, heads, N, d)
        k = attn.to_k(context).unflatten(-1, (attn.heads, -1)).transpose(1, 2)
        v = attn.to_v(context).unflatten(-1, (attn.heads, -1)).transpose(1, 2)
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        if rotary_emb is not None:
            q, k = apply_rotary_emb(q, rotary_emb), apply_rotary_emb(k, rotary_emb)
        if attention_mask is not None:
            attention_mask = attention_mask[:, None] if attention_mask.ndim == 3 else attention_mask
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)  # (B, heads, N, d)
        if reference is not None:
            if encoder_hidden_states is not None:
                raise ValueError("Identity Attention applies to self-attention only")
            out = torch.where(reference[:, None, :, None], v.to(out.dtype), out)
        out = out.transpose(1, 2).flatten(2).to(q.dtype)
        return attn.to_out[1](attn.to_out[0](out))


__all__ = ["IdentityAttnProcessor", "rotary_3d"]
