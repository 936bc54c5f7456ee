"""VideoDiT: the text-to-video teacher, a DiT over CV-VAE latents with factorised attention.

Each block runs, on the token layout ``(B, T*S, C)`` it receives and returns:

1. spatial self-attention within each frame (tokens viewed as ``(B*T, S, C)``),
2. temporal self-attention across frames at each location (``(B*S, T, C)``),
3. cross-attention to the text tokens,
4. a feed-forward MLP,

each as ``x = x + gate * branch(modulate(norm(x)))`` with adaLN-zero modulation from the timestep
(DiT, Peebles & Xie 2023; the shared modulation table of PixArt-alpha). The attention modules are
diffusers ``Attention`` and the blocks are registered with diffusers' ``TransformerBlockRegistry`` and
live in ``transformer_blocks``, so diffusers' caches (PyramidAttentionBroadcast, FasterCache,
FirstBlockCache, MagCache, TaylorSeer) and reelkit's accelerators find them unchanged.

>>> import torch
>>> from reelkit.models.dit import VideoDiT
>>> model = VideoDiT(num_layers=2, num_attention_heads=2, attention_head_dim=16, text_dim=24).eval()
>>> latents = torch.randn(1, 8, 5, 8, 8)                  # (B, C, 1+k, H/8, W/8) CV-VAE latents
>>> text = torch.randn(1, 12, 24)                          # (B, L, text_dim) text-encoder states
>>> model(latents, torch.tensor([500.0]), text).sample.shape   # the flow-matching velocity
torch.Size([1, 8, 5, 8, 8])
"""

from __future__ import annotations

import functools

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.loaders import PeftAdapterMixin
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.cache_utils import CacheMixin
from diffusers.models.embeddings import (
    TimestepEmbedding,
    Timesteps,
    get_1d_sincos_pos_embed_from_grid,
    get_2d_sincos_pos_embed,
)
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from reelkit.errors import ShapeError

NUM_BRANCHES = 4  # spatial attention, temporal attention, cross-attention, MLP


class SpatialAttnProcessor:
    """Self-attention within frames through diffusers' attention dispatcher, so context parallelism applies to it.

    Under ``enable_parallelism`` every rank holds all frames but only a slice of each frame's locations
    (``VideoDiT._cp_plan``), so this is the one attention whose sequence is sharded: diffusers sets
    ``_parallel_config`` here and runs Ulysses (or ring) attention over the slices. Temporal attention and
    cross-attention keep the plain processor: their sequences (a location's frames, the text) are whole on every
    rank. Without parallelism this is the same computation as diffusers' ``AttnProcessor2_0``.
    """

    _attention_backend = None
    _parallel_config = None

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, **kwargs) -> torch.Tensor:
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        n, S, _ = hidden_states.shape  # (B*T, S, C)
        query, key, value = (proj(hidden_states).view(n, S, attn.heads, -1)
                             for proj in (attn.to_q, attn.to_k, attn.to_v))  # (B*T, S, heads, head_dim)
        query, key = attn.norm_q(query), attn.norm_k(key)
        out = dispatch_attention_fn(query, key, value, backend=self._attention_backend,
                                    parallel_config=self._parallel_config)
        out = out.flatten(2).to(query.dtype)  # (B*T, S, C)
        return attn.to_out[1](attn.to_out[0](out))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def patchify(latents: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, C, T, H, W)`` latents to ``(B, T*h*w, C*p*p)`` tokens, patchified in space only."""
    B, C, T, H, W = latents.shape
    h, w = H // p, W // p
    return latents.view(B, C, T, h, p, w, p).permute(0, 2, 3, 5, 1, 4, 6).reshape(B, T * h * w, C * p * p)


def unpatchify(tokens: torch.Tensor, num_frames: int, h: int, w: int, p: int) -> torch.Tensor:
    """The inverse of :func:`patchify`: ``(B, T*h*w, C*p*p)`` to ``(B, C, T, h*p, w*p)``."""
    B = tokens.shape[0]
    C = tokens.shape[-1] // (p * p)
    return tokens.view(B, num_frames, h, w, C, p, p).permute(0, 4, 1, 2, 5, 3, 6).reshape(
        B, C, num_frames, h * p, w * p)


def check_latents(name: str, latents: torch.Tensor, in_channels: int, p: int) -> None:
    """A one-line :class:`ShapeError` unless ``latents`` is ``(B, in_channels, T, H, W)`` with sides divisible
    by the patch ``p``."""
    if latents.ndim != 5 or latents.shape[1] != in_channels or latents.shape[3] % p or latents.shape[4] % p:
        raise ShapeError(f"{name} expects (B, C, T, H, W) latents with {in_channels} channels and sides divisible "
                         f"by {p}; got {tuple(latents.shape)}")


def sincos_factors(dim: int, num_frames: int, h: int, w: int, base_size: int, device=None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The two terms of :func:`sincos_positions`: ``(T, dim)`` over frames and ``(h*w, dim)`` within them."""
    spatial = get_2d_sincos_pos_embed(dim, (h, w), base_size=base_size, device=device)  # (S, C)
    frames = torch.arange(num_frames, device=device, dtype=torch.float32)
    return get_1d_sincos_pos_embed_from_grid(dim, frames), spatial  # (T, C), (S, C)


def sincos_positions(dim: int, num_frames: int, h: int, w: int, base_size: int, device=None) -> torch.Tensor:
    """``(T*h*w, dim)``: a 2D sin-cos grid within frames (laid out for ``base_size``; other sizes
    interpolate) plus a 1D sin-cos over frames."""
    temporal, spatial = sincos_factors(dim, num_frames, h, w, base_size, device)
    return (temporal[:, None] + spatial[None]).reshape(num_frames * h * w, dim)


class VideoDiTBlock(nn.Module):
    """One factorised block; ``forward`` maps ``(B, T*S, C)`` to ``(B, T*S, C)``."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, text_dim: int,
                 mlp_ratio: float = 4.0):
        super().__init__()
        heads = dict(heads=num_attention_heads, dim_head=attention_head_dim, qk_norm="rms_norm", eps=1e-6,
                     bias=True, out_bias=True)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn1 = Attention(query_dim=dim, processor=SpatialAttnProcessor(), **heads)  # spatial
        self.norm_temporal = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn_temporal = Attention(query_dim=dim, **heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn2 = Attention(query_dim=dim, cross_attention_dim=text_dim, **heads)  # text
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim, mult=mlp_ratio, activation_fn="gelu-approximate")
        # per-block offsets added to the shared timestep modulation: (shift, scale, gate) per branch
        self.scale_shift_table = nn.Parameter(torch.randn(3 * NUM_BRANCHES, dim) / dim**0.5)

    # The four branches, each ``x + gate * branch(modulate(norm(x)))`` on any slice of the tokens whose shift,
    # scale and gate broadcast against it: ``forward`` runs them on the whole batch, Feature Slicing on slices.

    def modulation(self, temb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(shift, scale, gate)``, each ``(B, 4, 1, C)``: one row per branch."""
        B, C = temb.shape[0], self.scale_shift_table.shape[-1]
        modulation = (self.scale_shift_table[None] + temb.view(B, 3 * NUM_BRANCHES, C)).unsqueeze(2)
        return modulation.view(B, NUM_BRANCHES, 3, 1, C).unbind(2)

    def spatial_branch(self, frames: torch.Tensor, shift, scale, gate) -> torch.Tensor:
        """Self-attention within frames: ``frames`` ``(n, S, C)``."""
        return frames + gate * self.attn1(modulate(self.norm1(frames), shift, scale))

    def temporal_branch(self, locations: torch.Tensor, shift, scale, gate) -> torch.Tensor:
        """Self-attention across frames at each location: ``locations`` ``(n, T, C)``."""
        return locations + gate * self.attn_temporal(modulate(self.norm_temporal(locations), shift, scale))

    def text_branch(self, tokens: torch.Tensor, shift, scale, gate, encoder_hidden_states: torch.Tensor
                    ) -> torch.Tensor:
        """Cross-attention to the text: ``tokens`` ``(b, L, C)``."""
        h = modulate(self.norm2(tokens), shift, scale)
        return tokens + gate * self.attn2(h, encoder_hidden_states=encoder_hidden_states)

    def mlp_branch(self, tokens: torch.Tensor, shift, scale, gate) -> torch.Tensor:
        return tokens + gate * self.ff(modulate(self.norm3(tokens), shift, scale))

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor,
                num_frames: int) -> torch.Tensor:
        x = hidden_states  # (B, T*S, C)
        B, N, C = x.shape
        T, S = num_frames, N // num_frames
        shift, scale, gate = self.modulation(temb)  # each (B, 4, 1, C)

        def per(rows: int, branch: int) -> tuple[torch.Tensor, ...]:  # each (B*rows, 1, C)
            return tuple(m[:, branch].repeat_interleave(rows, 0) for m in (shift, scale, gate))

        x = self.spatial_branch(x.reshape(B * T, S, C), *per(T, 0))  # (B*T, S, C)
        x = x.view(B, T, S, C).transpose(1, 2).reshape(B * S, T, C)
        x = self.temporal_branch(x, *per(S, 1))  # (B*S, T, C)
        x = x.view(B, S, T, C).transpose(1, 2).reshape(B, N, C)
        x = self.text_branch(x, shift[:, 2], scale[:, 2], gate[:, 2], encoder_hidden_states)
        return self.mlp_branch(x, shift[:, 3], scale[:, 3], gate[:, 3])


TransformerBlockRegistry.register(
    VideoDiTBlock, TransformerBlockMetadata(return_hidden_states_index=0, return_encoder_hidden_states_index=None))


class VideoDiT(ModelMixin, ConfigMixin, CacheMixin, PeftAdapterMixin):
    """Text-conditioned video DiT over ``(B, C, T, H, W)`` latents, predicting the flow-matching velocity.

    ``patch_size`` patchifies space only (every latent frame keeps its own tokens, so temporal attention
    sees all ``1 + k`` frames). ``sample_size`` is the latent side the positions are laid out for; other
    sizes interpolate the sinusoidal grid. ``timestep`` is ``sigma * 1000`` (diffusers' flow-matching
    schedulers' convention).

    ``guidance_embed=True`` makes a guidance-distilled student (T2V-Turbo / LCM): ``forward`` then takes the
    classifier-free guidance scale ``guidance`` (B,), embedded like a timestep (of ``(w - 1) * 1000``) and
    added through ``time_embedding.cond_proj`` (LCM's ``time_cond_proj``), zero at initialisation so the
    student starts as its teacher. That layer is part of the weights, so it is saved and loaded with them.

    ``pooled_text=True`` also adds the mean of the text states, projected, to the timestep embedding that
    modulates every block (the pooled text vector of SD3 and Flux): each token then reads the whole caption in
    its scale and shift, not only through cross-attention. The projection starts at zero, so a model warm-started
    from one without it starts as that model.

    ``refine_channels=E`` adds a convolutional refiner after the linear head: each token also gives ``E`` feature
    channels per latent pixel, and three 3x3 convs over each frame's latent (the noisy input, the head's output and
    those features) add a correction, so a latent pixel's detail, where the demo world's shapes live, need not
    pass through the patch embedding and an object's outline may cross the patch grid. Its last conv starts at
    zero (the same warm start).
    """

    _supports_gradient_checkpointing = True
    # Context parallelism (diffusers' ``enable_parallelism``) shards each frame's locations: every rank keeps all
    # frames of its slice of locations, so temporal attention, text attention and the MLP stay local and only the
    # spatial attention exchanges tokens (SpatialAttnProcessor). The grid is (B, T, S, D) at both points.
    _cp_plan = {
        "shard_tokens": {0: ContextParallelInput(split_dim=2, expected_dims=4, split_output=True)},
        "gather_tokens": ContextParallelOutput(gather_dim=2, expected_dims=4),
    }
    _no_split_modules = ["VideoDiTBlock"]
    _skip_layerwise_casting_patterns = ["pos_embed", "norm"]

    @register_to_config
    def __init__(self, in_channels: int = 8, out_channels: int | None = None, patch_size: int = 2,
                 num_layers: int = 8, num_attention_heads: int = 4, attention_head_dim: int = 48,
                 text_dim: int = 128, mlp_ratio: float = 4.0, sample_size: int = 8, frequency_dim: int = 256,
                 guidance_embed: bool = False, pooled_text: bool = False, refine_channels: int = 0):
        super().__init__()
        dim = num_attention_heads * attention_head_dim
        out_channels = out_channels or in_channels
        self.patch_embed = nn.Linear(in_channels * patch_size**2, dim)
        self.time_proj = Timesteps(frequency_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(frequency_dim, dim,
                                                cond_proj_dim=frequency_dim if guidance_embed else None)
        self.time_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * NUM_BRANCHES * dim))
        self.text_pool = nn.Linear(text_dim, dim) if pooled_text else None
        self.shard_tokens, self.gather_tokens = nn.Identity(), nn.Identity()  # context-parallel split and gather
        self.transformer_blocks = nn.ModuleList(
            VideoDiTBlock(dim, num_attention_heads, attention_head_dim, text_dim, mlp_ratio) for _ in range(num_layers))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.scale_shift_out = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.proj_out = nn.Linear(dim, out_channels * patch_size**2)
        self.proj_extra, self.refine = None, None
        if refine_channels:
            self.proj_extra = nn.Linear(dim, refine_channels * patch_size**2)
            self.refine = nn.Sequential(nn.Conv2d(in_channels + out_channels + refine_channels, 64, 3, padding=1),
                                        nn.SiLU(), nn.Conv2d(64, 64, 3, padding=1), nn.SiLU(),
                                        nn.Conv2d(64, out_channels, 3, padding=1))
        self.gradient_checkpointing = False
        self._zero_init()

    def _zero_init(self):
        # adaLN-zero: every branch starts closed and the output starts at zero (DiT, section 3.2)
        nn.init.zeros_(self.time_modulation[-1].weight)
        nn.init.zeros_(self.time_modulation[-1].bias)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)
        if self.refine is not None:  # the refiner's correction starts at zero too
            nn.init.zeros_(self.refine[-1].weight)
            nn.init.zeros_(self.refine[-1].bias)
        if self.time_embedding.cond_proj is not None:
            nn.init.zeros_(self.time_embedding.cond_proj.weight)
        if self.text_pool is not None:
            nn.init.zeros_(self.text_pool.weight)
            nn.init.zeros_(self.text_pool.bias)
        for block in self.transformer_blocks:
            block.scale_shift_table.data[2::3].zero_()  # gates

    def positions(self, num_frames: int, height: int, width: int, tokens: slice = slice(None)) -> torch.Tensor:
        """Sinusoidal embeddings ``(n, C)`` of the ``tokens`` of a ``T*S`` clip: a 2D grid within frames plus
        a 1D one over frames. The two grids are memoised (building them costs as much as a few blocks at demo
        sizes, and cached steps would pay it each time); their sum is made per call, for the tokens asked,
        so a sliced model never holds a full-size table."""
        key = (num_frames, height, width, self.device)
        cache = self.__dict__.setdefault("_positions_cache", {})
        if key not in cache:
            dim = self.config.num_attention_heads * self.config.attention_head_dim
            base = max(1, self.config.sample_size // self.config.patch_size)
            cache[key] = sincos_factors(dim, num_frames, height, width, base, self.device)
        temporal, spatial = cache[key]
        index = torch.arange(num_frames * height * width, device=self.device)[tokens]
        S = height * width
        return (temporal[index // S] + spatial[index % S]).to(self.dtype)

    token_chunks: int = 1  # Feature Slicing sets it to run the per-token embedding and output head in slices

    def _per_token(self, fn, num_tokens: int) -> torch.Tensor:
        """``fn(slice(None))``, or the same computed on ``token_chunks`` slices of the token axis and written
        into one tensor, so the head and tail never hold several full-size intermediates at once."""
        if self.token_chunks <= 1:
            return fn(slice(None))
        step = -(-num_tokens // self.token_chunks)
        out = None
        for start in range(0, num_tokens, step):
            s = slice(start, min(start + step, num_tokens))
            part = fn(s)
            if out is None:
                out = part.new_empty(part.shape[0], num_tokens, *part.shape[2:])
            out[:, s] = part
        return out

    def _embed(self, patches: torch.Tensor, grid: tuple[int, int, int], s: slice) -> torch.Tensor:
        return self.patch_embed(patches[:, s]) + self.positions(*grid, s).to(patches.dtype)

    def _head_into_sample(self, head, B: int, T: int, h: int, w: int, p: int) -> torch.Tensor:
        """The output head on ``token_chunks`` slices of whole token rows, each written straight into the
        ``(B, C, T, H, W)`` sample through a strided view, so no full-size token tensor is left to unpatchify."""
        C = self.proj_out.out_features // (p * p)
        sample = None
        rows = T * h  # a row is ``w`` tokens
        step = -(-rows // self.token_chunks)
        for start in range(0, rows, step):
            r = slice(start, min(start + step, rows))
            part = head(slice(r.start * w, r.stop * w))  # (B, n*w, C*p*p)
            if sample is None:
                sample = part.new_empty(B, C, T, h * p, w * p)
                # (B, T*h, w, C, p, p): a view, since T's stride is h times h's stride
                out_rows = sample.view(B, C, T, h, p, w, p).permute(0, 2, 3, 5, 1, 4, 6).flatten(1, 2)
            out_rows[:, r] = part.view(B, r.stop - r.start, w, C, p, p)
        return sample

    def _guidance_condition(self, guidance, batch: int, x: torch.Tensor) -> torch.Tensor | None:
        if (guidance is None) != (not self.config.guidance_embed):
            raise ShapeError("this VideoDiT is guidance-distilled: pass guidance=w" if guidance is None else
                             "this VideoDiT has no guidance embedding (guidance_embed=False): do not pass guidance")
        if guidance is None:
            return None
        w = torch.as_tensor(guidance, device=x.device, dtype=torch.float32).expand(batch)
        return self.time_proj((w - 1) * 1000).to(x.dtype)  # (B, frequency_dim)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor | float, encoder_hidden_states: torch.Tensor,
                guidance: torch.Tensor | float | None = None, return_dict: bool = True
                ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        p = self.config.patch_size
        check_latents("VideoDiT", hidden_states, self.config.in_channels, p)
        B, C, T, H, W = hidden_states.shape
        h, w = H // p, W // p
        patches = patchify(hidden_states, p)
        x = self._per_token(functools.partial(self._embed, patches, (T, h, w)), T * h * w)  # (B, T*S, D)
        del patches  # a copy of the latents, dead from here on
        D = x.shape[-1]
        x = self.shard_tokens(x.view(B, T, h * w, D)).flatten(1, 2)  # (B, T*S/N, D) on each of N parallel ranks

        timestep = torch.as_tensor(timestep, device=x.device, dtype=torch.float32).expand(B)
        t_emb = self.time_embedding(self.time_proj(timestep).to(x.dtype), self._guidance_condition(guidance, B, x))
        encoder_hidden_states = encoder_hidden_states.to(x.dtype)
        if self.text_pool is not None:
            t_emb = t_emb + self.text_pool(encoder_hidden_states.mean(1))  # (B, D): the caption as a whole
        temb = self.time_modulation(t_emb)  # (B, 12*D)
        for block in self.transformer_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, encoder_hidden_states, temb, T)
            else:
                x = block(x, encoder_hidden_states, temb, T)

        x = self.gather_tokens(x.view(B, T, -1, D)).flatten(1, 2)  # (B, T*S, D)
        shift, scale = (self.scale_shift_out[None] + t_emb[:, None]).unbind(1)  # (B, D) each

        def head(s: slice) -> torch.Tensor:  # (B, n, p*p*C_out)
            return self.proj_out(modulate(self.norm_out(x[:, s]), shift[:, None], scale[:, None]))

        if self.refine is not None:
            modulated = modulate(self.norm_out(x), shift[:, None], scale[:, None])
            sample = unpatchify(self.proj_out(modulated), T, h, w, p)  # (B, C, T, H, W)
            features = unpatchify(self.proj_extra(modulated), T, h, w, p)  # (B, E, T, H, W)
            # the noisy latents too: a latent pixel's detail reaches the output without the patch bottleneck
            frames = torch.cat([hidden_states, sample, features], 1).transpose(1, 2).flatten(0, 1)  # (B*T, 2C+E, H, W)
            sample = sample + self.refine(frames).view(B, T, -1, H, W).transpose(1, 2)
        elif self.token_chunks <= 1:
            sample = unpatchify(head(slice(None)), T, h, w, p)
        else:
            sample = self._head_into_sample(head, B, T, h, w, p)
        if not return_dict:
            return (sample,)
        return Transformer2DModelOutput(sample=sample)


__all__ = ["VideoDiT", "VideoDiTBlock", "check_latents", "modulate", "patchify", "sincos_factors", "sincos_positions",
           "unpatchify"]
