"""CV-VAE: a video VAE (8x spatial, 4x temporal) whose latents the image VAE understands (Zhao et al. 2024).

The architecture mirrors diffusers' ``AutoencoderKL`` module for module, so
:meth:`CVVAE.from_image_vae` can inflate a trained image VAE: every 2D kernel is copied into one
temporal tap of a 3D kernel (the last tap for causal convs, the centre tap otherwise) and the other
taps start at zero. At initialisation a single frame therefore encodes and decodes exactly like the
image VAE, and a clip encodes like the image VAE applied to frames 0, 4, 8, ...

* Encoder: causal temporal convs (output frame t sees frames <= t, so latent frame 0 is a pure image
  latent); temporal stride 2 at two down-sampling levels: ``1+4k`` frames -> ``1+k`` latent frames.
* Decoder: non-causal temporal convs; temporal up-sampling (conv to 2C channels, unfold into two
  frames, drop the first) at the mirrored levels: ``1+k`` -> ``1+4k``.
* "2D+3D" ResBlocks (``half_3d=True``): the first conv is 3D, the second 2D (per frame).
* GroupNorm and the mid-block attention act per frame, which keeps the encoder strictly causal.

>>> import torch
>>> from reelkit.vae.cvvae import CVVAE
>>> from reelkit.vae.image_vae import build_image_vae
>>> image_vae = build_image_vae(block_out_channels=(8, 8, 8, 8), norm_num_groups=4).eval()
>>> vae = CVVAE.from_image_vae(image_vae).eval()
>>> video = torch.rand(1, 3, 9, 32, 32) * 2 - 1  # (B, C, 1+4k, H, W)
>>> z = vae.encode(video).latent_dist.mode()
>>> z.shape  # (B, c, 1+k, H/8, W/8)
torch.Size([1, 8, 3, 4, 4])
>>> vae.decode(z).sample.shape
torch.Size([1, 3, 9, 32, 32])
>>> image = video[:, :, :1]  # a single frame encodes exactly like the image VAE
>>> torch.allclose(vae.encode(image).latent_dist.mode()[:, :, 0],
...                image_vae.encode(image[:, :, 0]).latent_dist.mode(), atol=1e-5)
True
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin

from reelkit.conventions import TEMPORAL_FACTOR, batch_to_frames, frames_to_batch, is_valid_frame_count
from reelkit.errors import ReelkitError, ShapeError


def _per_frame(fn, x: torch.Tensor) -> torch.Tensor:
    """Apply an image op ``fn`` to every frame of ``x`` (B, C, T, H, W)."""
    return batch_to_frames(fn(frames_to_batch(x)), x.shape[0])


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm over each frame alone (statistics never mix frames, so causality holds)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _per_frame(super().forward, x) if x.ndim == 5 else super().forward(x)


class FrameConv2d(nn.Conv2d):
    """A 2D conv applied to every frame of a (B, C, T, H, W) video."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _per_frame(super().forward, x)

    @torch.no_grad()
    def load_image_weights(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight.copy_(weight)
        if bias is not None:
            self.bias.copy_(bias)


class TemporalConv3d(nn.Conv3d):
    """A 3D conv with replicate temporal padding: all at the front when ``causal``, else symmetric.

    ``spatial_padding`` is zero padding on (left, right, top, bottom) like the image VAE's convs.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: tuple = (1, 1, 1),
                 causal: bool = True, spatial_padding: tuple[int, int, int, int] = (1, 1, 1, 1)):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        self.causal = causal
        self.spatial_padding = spatial_padding
        pad = kernel_size - 1
        self.time_padding = (pad, 0) if causal else (pad // 2, pad - pad // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.time_padding):
            x = F.pad(x, (0, 0, 0, 0, *self.time_padding), mode="replicate")
        if any(self.spatial_padding):
            x = F.pad(x, (*self.spatial_padding, 0, 0))
        return super().forward(x)

    @property
    def current_tap(self) -> int:
        """The temporal tap that reads the output frame's own input frame."""
        return self.kernel_size[0] - 1 if self.causal else self.kernel_size[0] // 2

    @torch.no_grad()
    def load_image_weights(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Inflate a 2D kernel (O, I, kh, kw): copy it to the current tap, zero the others."""
        repeats = self.out_channels // weight.shape[0]  # 2 for the temporal up-sampler's frame pair
        self.weight.zero_()
        self.weight[:, :, self.current_tap] = weight.repeat(repeats, 1, 1, 1)
        if bias is not None:
            self.bias.copy_(bias.repeat(repeats))


def _conv(in_channels: int, out_channels: int, temporal: bool, causal: bool, **kwargs) -> nn.Module:
    if temporal:
        return TemporalConv3d(in_channels, out_channels, causal=causal, **kwargs)
    return FrameConv2d(in_channels, out_channels, 3, padding=1)


class ResnetBlock3D(nn.Module):
    """diffusers' ResnetBlock2D with a 3D first conv (``half_3d``) or two 3D convs; no time embedding."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, causal: bool, half_3d: bool = True):
        super().__init__()
        self.norm1 = FrameGroupNorm(groups, in_channels, eps=1e-6)
        self.conv1 = TemporalConv3d(in_channels, out_channels, causal=causal)
        self.norm2 = FrameGroupNorm(groups, out_channels, eps=1e-6)
        self.conv2 = _conv(out_channels, out_channels, temporal=not half_3d, causal=causal)
        self.conv_shortcut = FrameConv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Downsample3D(nn.Module):
    """Stride-2 conv (pad right/bottom like diffusers' Downsample2D); also stride 2 in time if ``temporal``."""

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.temporal = temporal
        if temporal:  # causal: 1+2n frames -> 1+n, frame j from input frames <= 2j
            self.conv = TemporalConv3d(channels, channels, stride=(2, 2, 2), causal=True,
                                       spatial_padding=(0, 1, 0, 1))
        else:
            self.conv = FrameConv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.temporal:
            return self.conv(x)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample3D(nn.Module):
    """Nearest 2x spatial up-sampling and a conv; with ``temporal``, the conv emits two frames per frame
    (channels ``(2 C)`` -> time ``2 T``) and the first is dropped: ``T -> 2T - 1``."""

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.temporal = temporal
        if temporal:
            self.conv = TemporalConv3d(channels, 2 * channels, causal=False)
        else:
            self.conv = FrameConv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")
        x = self.conv(x)
        if not self.temporal:
            return x
        b, c2, t, h, w = x.shape
        x = x.view(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)
        return x[:, :, 1:]


class FrameAttention(Attention):
    """diffusers' single-head VAE attention (``_from_deprecated_attn_block``), applied per frame."""

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return _per_frame(lambda frames: super(FrameAttention, self).forward(frames), x)


class MidBlock3D(nn.Module):
    def __init__(self, channels: int, groups: int, causal: bool, half_3d: bool, add_attention: bool):
        super().__init__()
        self.attentions = nn.ModuleList([FrameAttention(
            channels, heads=1, dim_head=channels, eps=1e-6, norm_num_groups=groups, residual_connection=True,
            bias=True, upcast_softmax=True, _from_deprecated_attn_block=True)] if add_attention else [])
        self.resnets = nn.ModuleList([ResnetBlock3D(channels, channels, groups, causal, half_3d) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x)


class _Stage(nn.Module):
    """One resolution level: ``resnets`` then an optional ``downsamplers``/``upsamplers`` entry."""

    def __init__(self, resnets: list[nn.Module], sampler: nn.Module | None, sampler_name: str):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        setattr(self, sampler_name, nn.ModuleList([sampler] if sampler is not None else []))
        self._sampler_name = sampler_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        for sampler in getattr(self, self._sampler_name):
            x = sampler(x)
        return x


class Encoder3D(nn.Module):
    def __init__(self, in_channels, latent_channels, block_out_channels, layers_per_block, groups, half_3d,
                 temporal_levels, add_attention):
        super().__init__()
        self.conv_in = TemporalConv3d(in_channels, block_out_channels[0], causal=True)
        self.down_blocks = nn.ModuleList()
        channels = block_out_channels[0]
        for i, width in enumerate(block_out_channels):
            resnets = [ResnetBlock3D(channels if j == 0 else width, width, groups, True, half_3d)
                       for j in range(layers_per_block)]
            last = i == len(block_out_channels) - 1
            sampler = None if last else Downsample3D(width, temporal=i in temporal_levels)
            self.down_blocks.append(_Stage(resnets, sampler, "downsamplers"))
            channels = width
        self.mid_block = MidBlock3D(channels, groups, True, half_3d, add_attention)
        self.conv_norm_out = FrameGroupNorm(groups, channels, eps=1e-6)
        self.conv_out = TemporalConv3d(channels, 2 * latent_channels, causal=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder3D(nn.Module):
    def __init__(self, out_channels, latent_channels, block_out_channels, layers_per_block, groups, half_3d,
                 temporal_levels, add_attention):
        super().__init__()
        reversed_channels = list(reversed(block_out_channels))
        levels = len(block_out_channels)
        self.conv_in = TemporalConv3d(latent_channels, reversed_channels[0], causal=False)
        self.mid_block = MidBlock3D(reversed_channels[0], groups, False, half_3d, add_attention)
        self.up_blocks = nn.ModuleList()
        channels = reversed_channels[0]
        for i, width in enumerate(reversed_channels):
            resnets = [ResnetBlock3D(channels if j == 0 else width, width, groups, False, half_3d)
                       for j in range(layers_per_block + 1)]
            last = i == levels - 1
            # up stage i undoes the encoder's down-sampler at level (levels - 2 - i)
            sampler = None if last else Upsample3D(width, temporal=(levels - 2 - i) in temporal_levels)
            self.up_blocks.append(_Stage(resnets, sampler, "upsamplers"))
            channels = width
        self.conv_norm_out = FrameGroupNorm(groups, channels, eps=1e-6)
        self.conv_out = TemporalConv3d(channels, out_channels, causal=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class CVVAE(ModelMixin, ConfigMixin):
    """The CV-VAE video autoencoder; the API follows diffusers' ``AutoencoderKL``.

    ``encode(x)`` takes ``(B, 3, 1+4k, H, W)`` (or a ``(B, 3, H, W)`` image, treated as one frame) and
    returns ``AutoencoderKLOutput(latent_dist)`` over ``(B, c, 1+k, H/8, W/8)``; ``decode(z)`` returns
    ``DecoderOutput(sample)`` with ``1+4(n-1)`` frames (video mode) or ``n`` frames with
    ``image_mode=True`` (each latent decoded on its own, CV-VAE-I). ``scaling_factor`` is the image
    VAE's: multiply latents by it before a diffusion model, as with diffusers VAEs.
    Long or large videos: :meth:`enable_chunking` (see :mod:`reelkit.vae.chunking`).
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(self, in_channels: int = 3, out_channels: int = 3,
                 block_out_channels: tuple[int, ...] = (32, 64, 128, 128), layers_per_block: int = 1,
                 latent_channels: int = 8, norm_num_groups: int = 32, scaling_factor: float = 1.0,
                 shift_factor: float | None = None, half_3d: bool = True,
                 temporal_downsample_levels: tuple[int, ...] = (0, 2), mid_block_add_attention: bool = True,
                 use_quant_conv: bool = True, use_post_quant_conv: bool = True):
        super().__init__()
        levels = len(block_out_channels)
        temporal_levels = tuple(temporal_downsample_levels)
        if len(temporal_levels) != 2 or not all(0 <= level < levels - 1 for level in temporal_levels):
            raise ValueError(f"4x temporal compression needs 2 distinct temporal levels among the {levels - 1} "
                             f"down-sampling levels, got {temporal_levels}")
        common = dict(block_out_channels=block_out_channels, layers_per_block=layers_per_block,
                      groups=norm_num_groups, half_3d=half_3d, temporal_levels=temporal_levels,
                      add_attention=mid_block_add_attention)
        self.encoder = Encoder3D(in_channels, latent_channels, **common)
        self.decoder = Decoder3D(out_channels, latent_channels, **common)
        self.quant_conv = FrameConv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = FrameConv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None
        self.spatial_compression = 2 ** (levels - 1)
        self.temporal_compression = TEMPORAL_FACTOR
        self.chunking = None  # a reelkit.vae.chunking.ChunkingConfig once enable_chunking() is called

    # ----------------------------------------------------------------------------------- inflation

    @classmethod
    def from_image_vae(cls, image_vae, **options) -> CVVAE:
        """Inflate a diffusers ``AutoencoderKL`` into a CVVAE that reproduces it on single frames.

        ``options`` set the video-only config (``half_3d``, ``temporal_downsample_levels``).
        """
        config = image_vae.config
        unknown = set(options) - {"half_3d", "temporal_downsample_levels"}
        if unknown:
            raise ReelkitError(f"unknown CVVAE options: {', '.join(sorted(unknown))}")
        model = cls(in_channels=config.in_channels, out_channels=config.out_channels,
                    block_out_channels=tuple(config.block_out_channels), layers_per_block=config.layers_per_block,
                    latent_channels=config.latent_channels, norm_num_groups=config.norm_num_groups,
                    scaling_factor=config.scaling_factor, shift_factor=config.shift_factor,
                    mid_block_add_attention=config.mid_block_add_attention,
                    use_quant_conv=config.use_quant_conv, use_post_quant_conv=config.use_post_quant_conv, **options)
        source = {k: v.float() for k, v in image_vae.state_dict().items()}
        used = set()
        with torch.no_grad():
            for name, module in model.named_modules():
                if isinstance(module, (TemporalConv3d, FrameConv2d)):
                    weight = source[f"{name}.weight"]
                    bias = source.get(f"{name}.bias")
                    module.load_image_weights(weight, bias)
                    used.update({f"{name}.weight", f"{name}.bias"})
            rest = {k: v for k, v in source.items() if k not in used}
            missing, unexpected = model.load_state_dict(rest, strict=False)
        convs = {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, (TemporalConv3d, FrameConv2d))
                 for p in ("weight", "bias")}
        missing = sorted(set(missing) - convs)
        if unexpected or missing:
            raise ReelkitError(f"image VAE does not match the CVVAE layout (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]})")
        return model

    # ------------------------------------------------------------------------------- encode/decode

    def _as_video(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:  # an image: one frame
            x = x[:, :, None]
        if x.ndim != 5:
            raise ShapeError(f"expected a (B, C, T, H, W) video or (B, C, H, W) image, got {tuple(x.shape)}")
        if not is_valid_frame_count(x.shape[2]):
            raise ShapeError(f"CV-VAE input needs 1+4k frames, got {x.shape[2]} "
                             "(reelkit.conventions.round_down_frames picks the count)")
        h, w = x.shape[-2:]
        if h % self.spatial_compression or w % self.spatial_compression:
            raise ShapeError(f"height and width must be multiples of {self.spatial_compression}, got {h}x{w}")
        return x

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        moments = self.encoder(x)
        return moments if self.quant_conv is None else self.quant_conv(moments)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """Video ``(B, 3, 1+4k, H, W)`` or image ``(B, 3, H, W)`` -> posterior over ``(B, c, 1+k, h, w)``."""
        x = self._as_video(x)
        if self.chunking is not None:
            from reelkit.vae.chunking import chunked_encode

            moments = chunked_encode(self._encode, x, self.chunking, self.spatial_compression)
        else:
            moments = self._encode(x)
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, image_mode: bool = False):
        """Latents ``(B, c, n, h, w)`` -> ``1+4(n-1)`` frames, or ``n`` frames with ``image_mode``."""
        if z.ndim == 4:
            z = z[:, :, None]
        if z.ndim != 5 or z.shape[1] != self.config.latent_channels:
            raise ShapeError(f"expected (B, {self.config.latent_channels}, T, h, w) latents, got {tuple(z.shape)}")
        if image_mode:
            b = z.shape[0]
            frames = self.decode(z.transpose(1, 2).flatten(0, 1)[:, :, None]).sample  # (B*n, 3, 1, H, W)
            video = frames[:, :, 0].unflatten(0, (b, -1)).transpose(1, 2)
            return DecoderOutput(sample=video) if return_dict else (video,)
        if self.chunking is not None:
            from reelkit.vae.chunking import chunked_decode

            video = chunked_decode(self._decode, z, self.chunking, self.spatial_compression)
        else:
            video = self._decode(z)
        return DecoderOutput(sample=video) if return_dict else (video,)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator: torch.Generator | None = None):
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z, return_dict=return_dict)

    # ------------------------------------------------------------------------------------ chunking

    def enable_chunking(self, frames_per_chunk: int = 16, tile_size: int | None = None, tile_overlap: float = 0.25,
                        max_memory: int | None = None) -> None:
        """Encode/decode in temporal chunks of ``1 + frames_per_chunk`` frames (and spatial tiles of
        ``tile_size`` pixels, blended over ``tile_overlap``), bounding peak memory. ``max_memory`` (bytes)
        picks the largest chunk and tile that fit instead. See :mod:`reelkit.vae.chunking`."""
        from reelkit.vae.chunking import ChunkingConfig, plan_chunking

        if max_memory is not None:
            self.chunking = plan_chunking(self, max_memory, tile_overlap)
        else:
            self.chunking = ChunkingConfig(frames_per_chunk, tile_size, tile_overlap)

    def disable_chunking(self) -> None:
        self.chunking = None
