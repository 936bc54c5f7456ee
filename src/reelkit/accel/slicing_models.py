"""Feature Slicing for diffusers' video UNets and the temporal VAE decoders (registered on import).

What is sliced, and along which axis (``frame_chunks`` slices of ``B*F`` rows or of time; ``spatial_chunks``
slices of the ``H*W`` locations):

* spatial blocks, rows of ``B*F`` (:func:`~reelkit.accel.slicing.slice_rows`): diffusers' ``ResnetBlock2D``,
  ``Transformer2DModel``, ``BasicTransformerBlock`` (SVD's spatial transformer blocks), ``Downsample2D``,
  ``Upsample2D``;
* SVD's ``SpatioTemporalResBlock`` (U-Net and VAE): the spatial ResNet on rows, then ``temporal_res_block ->
  time_mixer`` as one group on slices of space, with the 5-D GroupNorms normalised by full-tensor statistics;
* SVD's ``TemporalBasicTransformerBlock`` on slices of its token axis (``time_context`` rows alike) and the
  transformer's ``AlphaBlender`` (elementwise) on slices of tokens;
* AnimateDiff's motion module ``AnimateDiffTransformer3D`` on slices of space (full-tensor GroupNorm);
* SVD's VAE ``TemporalDecoder``: its blocks as above, the mid-block attention on rows, the
  ``conv_norm_out -> act -> conv_out`` head on rows and ``time_conv_out`` on slices of height;
* reelkit's CV-VAE: ``ResnetBlock3D``, ``FrameAttention`` and ``Upsample3D`` on slices of time with a halo
  of the frames their temporal convs read (the block's own replicate padding then acts only at the clip's
  true ends), and the ``Decoder3D`` head the same way.

Every slicer is exact: the sliced model computes the plain model's function up to float round-off.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock, TemporalBasicTransformerBlock
from diffusers.models.attention_processor import Attention
from diffusers.models.autoencoders.autoencoder_kl_temporal_decoder import TemporalDecoder
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import AlphaBlender, ResnetBlock2D, SpatioTemporalResBlock
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from diffusers.models.upsampling import Upsample2D
from torch import nn

from reelkit.accel._diffusers_compat import get_hook
from reelkit.accel.slicing import (
    _BLOCK_HOOK,
    SliceRunner,
    _Output,
    _slicer_for,
    chunk_slices,
    group_norm_apply,
    register_slicer,
    slice_rows,
)

# --------------------------------------------------------------------------------------------------------
# Helpers


def _group_stats(norm: nn.GroupNorm, parts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and reciprocal std (each (B, G), float32) of ``norm``'s groups over the tensor whose slices
    (along any axis but 0 and 1) were reduced into ``parts``: (3, B, G) = (count, mean, M2) each, combined
    with Chan's parallel formula, so no full-size copy of the tensor is ever made."""
    count, mean, m2 = parts[0].unbind(0)
    for part in parts[1:]:
        n, m, q = part.unbind(0)
        total = count + n
        delta = m - mean
        mean = mean + delta * (n / total)
        m2 = m2 + q + delta * delta * (count * n / total)
        count = total
    return mean, torch.rsqrt(m2 / count + norm.eps)


def _reduce(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """(count, mean, M2) of ``norm``'s groups over the slice ``x`` (B, C, ...), stacked as (3, B, G)."""
    groups = x.float().reshape(x.shape[0], norm.num_groups, -1)
    var, mean = torch.var_mean(groups, dim=-1, unbiased=False)
    count = torch.full_like(mean, groups.shape[-1])
    return torch.stack([count, mean, var * groups.shape[-1]])


def _full_stats(norm: nn.GroupNorm, runner: SliceRunner, slices: list[slice],
                slice_of: Callable[[slice], torch.Tensor], device: torch.device):
    """First pass of an exact sliced GroupNorm: reduce every slice, then combine (after all streams)."""
    parts: list[torch.Tensor] = [None] * len(slices)  # type: ignore[list-item]
    index = {(s.start, s.stop): i for i, s in enumerate(slices)}

    def group(s: slice) -> None:
        parts[index[(s.start, s.stop)]] = _reduce(norm, slice_of(s))

    runner.run(group, slices, device)
    return _group_stats(norm, parts)


@contextmanager
def _sliced_descendants(root: nn.Module, runner: SliceRunner,
                        extra: dict[type, Callable] | None = None) -> Iterator[None]:
    """While inside, the outermost registered descendants of ``root`` (and those of the ``extra`` classes)
    run through their slicers, as if they were hooked themselves. A registered container (a whole decoder)
    uses it to slice its blocks while it runs a head of its own."""
    def slicer_of(module: nn.Module):
        for cls, slicer in (extra or {}).items():
            if isinstance(module, cls):
                return slicer
        return _slicer_for(module)

    swapped, inside = [], set()
    for module in root.modules():
        if module is root or id(module) in inside:
            continue
        slicer = slicer_of(module)
        if slicer is None:
            continue
        inside.update(id(child) for child in module.modules())
        if get_hook(module, _BLOCK_HOOK) is not None:
            continue  # hooked already (its parent registered as a container): sliced by its hook
        swapped.append((module, module.__dict__.get("forward")))
        module.forward = functools.partial(slicer, module, runner, module.forward)
    try:
        yield
    finally:
        for module, previous in swapped:
            if previous is None:
                del module.forward
            else:
                module.forward = previous


def _space(x: torch.Tensor, frames: int) -> torch.Tensor:
    """(B*F, C, H, W) -> a (B, C, F, H*W) view (``x`` must be contiguous)."""
    bf, c, h, w = x.shape
    return x.view(bf // frames, frames, c, h * w).transpose(1, 2)


# --------------------------------------------------------------------------------------------------------
# SVD: SpatioTemporalResBlock (U-Net and VAE temporal decoder)


def slice_spatio_temporal_res_block(block: SpatioTemporalResBlock, runner: SliceRunner, forward: Callable,
                                    hidden_states: torch.Tensor, temb: torch.Tensor | None = None,
                                    image_only_indicator: torch.Tensor | None = None,
                                    spatial_output: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
    """The spatial ResNet on ``B*F`` rows, then ``temporal_res_block -> time_mixer`` per slice of space.
    ``spatial_output`` computes the spatial ResNet's output instead (an up block's, fused with its skip
    concatenation, :mod:`reelkit.accel.slicing_unets`).

    ``TemporalResnetBlock`` is re-run here op by op (norm1, conv1, +temb, norm2, conv2, shortcut: its own
    forward) because its two GroupNorms span space: norm1 takes statistics of the full input, norm2 of the
    full ``conv1`` output, reduced in a first pass over the slices (``conv1`` is then recomputed per slice
    rather than kept whole). Its (3, 1, 1) convs never mix locations. The result is written in place into
    the spatial ResNet's output, which this block owns: each slice reads only its own locations."""
    frames = image_only_indicator.shape[-1]
    rows = hidden_states.shape[0]
    space = hidden_states.shape[-2] * hidden_states.shape[-1]
    slices = chunk_slices(space, runner.spatial_chunks)
    if spatial_output is None and len(slices) == 1 and len(chunk_slices(rows, runner.frame_chunks)) == 1:
        return forward(hidden_states, temb, image_only_indicator=image_only_indicator)

    spatial = block.spatial_res_block
    if spatial_output is None:
        out = slice_rows(spatial, runner, spatial.forward, hidden_states, temb).contiguous()
    else:
        out = spatial_output().contiguous()
    video = _space(out, frames)  # (B, C, F, S), a view of ``out``
    batch = video.shape[0]
    tres = block.temporal_res_block
    act = tres.nonlinearity

    temb_t = None
    if temb is not None and tres.time_emb_proj is not None:
        temb_t = tres.time_emb_proj(act(temb.reshape(batch, frames, -1))).transpose(1, 2)[..., None]  # (B, C, F, 1)

    def conv(layer: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:  # (B, C, F, n) through a (k, 1, 1) conv
        return layer(x.unsqueeze(-2)).squeeze(-2)

    mean1, rstd1 = _full_stats(tres.norm1, runner, slices, lambda s: video[..., s], out.device)

    def first(s: slice) -> torch.Tensor:
        h = conv(tres.conv1, act(group_norm_apply(tres.norm1, video[..., s], mean1, rstd1)))
        return h if temb_t is None else h + temb_t

    mean2, rstd2 = _full_stats(tres.norm2, runner, slices, first, out.device)

    def group(s: slice) -> None:
        x = video[..., s]
        h = conv(tres.conv2, tres.dropout(act(group_norm_apply(tres.norm2, first(s), mean2, rstd2))))
        residual = x if tres.conv_shortcut is None else conv(tres.conv_shortcut, x)
        mixed = block.time_mixer(x_spatial=x.unsqueeze(-2), x_temporal=(residual + h).unsqueeze(-2),
                                 image_only_indicator=image_only_indicator)
        video[..., s] = mixed.squeeze(-2)

    runner.run(group, slices, out.device)
    return out


# --------------------------------------------------------------------------------------------------------
# SVD: TransformerSpatioTemporalModel's temporal block and mixer


def slice_temporal_transformer_block(block: TemporalBasicTransformerBlock, runner: SliceRunner, forward: Callable,
                                     hidden_states: torch.Tensor, num_frames: int,
                                     encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
    """Its own forward on slices of the token axis of (B*F, S, C); ``encoder_hidden_states`` (the
    ``time_context``, (B*S, L, C)) is sliced at the same tokens."""
    rows, tokens, _ = hidden_states.shape
    slices = chunk_slices(tokens, runner.spatial_chunks)
    if len(slices) == 1:
        return forward(hidden_states, num_frames, encoder_hidden_states=encoder_hidden_states)
    batch = rows // num_frames
    context = None
    if encoder_hidden_states is not None and encoder_hidden_states.shape[0] == batch * tokens:
        context = encoder_hidden_states.view(batch, tokens, *encoder_hidden_states.shape[1:])
    output = _Output(tokens, dim=1)

    def group(s: slice) -> None:
        ctx = encoder_hidden_states if context is None else context[:, s].flatten(0, 1)
        output.write(s, forward(hidden_states[:, s], num_frames, encoder_hidden_states=ctx))

    runner.run(group, slices, hidden_states.device)
    return output.value


def slice_alpha_blender(blender: AlphaBlender, runner: SliceRunner, forward: Callable, x_spatial: torch.Tensor,
                        x_temporal: torch.Tensor, image_only_indicator: torch.Tensor | None = None) -> torch.Tensor:
    """Elementwise: slices of tokens (3-D (B*F, S, C)) or of width (5-D), so ``alpha`` (per ``B*F`` row or
    per frame) always broadcasts whole, whatever the batch and chunk counts."""
    dim = 1 if x_spatial.ndim == 3 else x_spatial.ndim - 1
    size = x_spatial.shape[dim]
    slices = chunk_slices(size, runner.spatial_chunks)
    if len(slices) == 1:
        return forward(x_spatial, x_temporal, image_only_indicator=image_only_indicator)
    output = _Output(size, dim=dim)

    def group(s: slice) -> None:
        n = s.stop - s.start
        output.write(s, forward(x_spatial.narrow(dim, s.start, n), x_temporal.narrow(dim, s.start, n),
                                image_only_indicator=image_only_indicator))

    runner.run(group, slices, x_spatial.device)
    return output.value


# --------------------------------------------------------------------------------------------------------
# AnimateDiff: the motion module


def slice_motion_module(module: AnimateDiffTransformer3D, runner: SliceRunner, forward: Callable,
                        hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                        timestep: torch.Tensor | None = None, class_labels: torch.Tensor | None = None,
                        num_frames: int = 1, cross_attention_kwargs: dict | None = None,
                        overwrite: bool = False) -> torch.Tensor:
    """``norm -> proj_in -> transformer blocks -> proj_out -> +residual`` as one group per slice of space;
    with ``overwrite`` (its caller owns the input) each slice's result is written back over the input.

    Re-run op by op (the module's own sequence) because its GroupNorm spans space (statistics of the full
    input come first) and its reshape moves locations into the batch axis; everything after the norm
    is per location (attention across frames), so slices of locations are exact."""
    bf, channels, height, width = hidden_states.shape
    space = height * width
    slices = chunk_slices(space, runner.spatial_chunks)
    if len(slices) == 1:
        return forward(hidden_states, encoder_hidden_states, timestep, class_labels, num_frames,
                       cross_attention_kwargs)
    batch = bf // num_frames
    x = hidden_states.contiguous()
    video = _space(x, num_frames)  # (B, C, F, S)
    # each slice reads only its own locations (the norm's statistics are taken first), so it can replace them
    out = x if overwrite else torch.empty_like(x)
    out_frames = out.view(batch, num_frames, channels, space)
    x_frames = x.view(batch, num_frames, channels, space)
    context = None
    if encoder_hidden_states is not None and encoder_hidden_states.shape[0] == batch * space:
        context = encoder_hidden_states.view(batch, space, *encoder_hidden_states.shape[1:])
    mean, rstd = _full_stats(module.norm, runner, slices, lambda s: video[..., s], x.device)

    def group(s: slice) -> None:
        n = s.stop - s.start
        h = group_norm_apply(module.norm, video[..., s], mean, rstd)  # (B, C, F, n)
        h = module.proj_in(h.permute(0, 3, 2, 1).reshape(batch * n, num_frames, channels))
        ctx = encoder_hidden_states if context is None else context[:, s].flatten(0, 1)
        for block in module.transformer_blocks:
            h = block(hidden_states=h, encoder_hidden_states=ctx, timestep=timestep,
                      cross_attention_kwargs=cross_attention_kwargs, class_labels=class_labels)
        h = module.proj_out(h).view(batch, n, num_frames, channels).permute(0, 2, 3, 1)  # (B, F, C, n)
        out_frames[..., s] = h + x_frames[..., s]

    runner.run(group, slices, x.device)
    return out


# --------------------------------------------------------------------------------------------------------
# SVD's VAE: TemporalDecoder


def slice_temporal_decoder(decoder: TemporalDecoder, runner: SliceRunner, forward: Callable, sample: torch.Tensor,
                           image_only_indicator: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
    """Its blocks sliced (mid-block attention on rows), then the head grouped: ``conv_norm_out -> act ->
    conv_out`` on ``B*F`` rows, ``time_conv_out`` on slices of height. Re-runs the decoder's short forward
    because the head's three per-frame ops would otherwise each leave a full-resolution intermediate."""
    if torch.is_grad_enabled() and decoder.gradient_checkpointing:
        return forward(sample, image_only_indicator=image_only_indicator, num_frames=num_frames)
    with _sliced_descendants(decoder, runner, {Attention: slice_rows}):
        sample = decoder.conv_in(sample)
        upscale_dtype = next(itertools.chain(decoder.up_blocks.parameters(), decoder.up_blocks.buffers())).dtype
        sample = decoder.mid_block(sample, image_only_indicator=image_only_indicator).to(upscale_dtype)
        for up_block in decoder.up_blocks:
            sample = up_block(sample, image_only_indicator=image_only_indicator)

    def head(x: torch.Tensor) -> torch.Tensor:
        return decoder.conv_out(decoder.conv_act(decoder.conv_norm_out(x)))

    sample = slice_rows(decoder, runner, head, sample).contiguous()
    bf, channels, height, width = sample.shape
    batch = bf // num_frames
    out = torch.empty_like(sample)
    src = sample.view(batch, num_frames, channels, height, width).transpose(1, 2)
    dst = out.view(batch, num_frames, channels, height, width).transpose(1, 2)

    def group(s: slice) -> None:
        dst[:, :, :, s] = decoder.time_conv_out(src[:, :, :, s])

    runner.run(group, chunk_slices(height, runner.spatial_chunks), sample.device)
    return out


# --------------------------------------------------------------------------------------------------------
# reelkit CV-VAE: slices of time with a halo


def _time_halo(module: nn.Module) -> tuple[int, int]:
    """Frames before and after a slice that ``module``'s stride-1 temporal convs read (their paddings add
    up along the chain)."""
    from reelkit.vae.cvvae import TemporalConv3d

    front = back = 0
    for conv in module.modules():
        if isinstance(conv, TemporalConv3d) and conv.stride[0] == 1:
            front += conv.time_padding[0]
            back += conv.time_padding[1]
    return front, back


def _slice_time(runner: SliceRunner, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                front: int = 0, back: int = 0, scale: int = 1, drop: int = 0) -> torch.Tensor:
    """``fn`` on slices of the time axis of (B, C, T, H, W): frames ``[t0 - front, t1 + back)`` (clipped to
    the clip) go in, and the outputs of ``[t0, t1)`` are kept. ``fn`` maps T frames to ``scale * T - drop``
    frames (input frame t -> outputs ``scale * t + k - drop``)."""
    frames = x.shape[2]
    slices = chunk_slices(frames, runner.frame_chunks)
    if len(slices) == 1:
        return fn(x)
    output = _Output(scale * frames - drop, dim=2)

    def group(s: slice) -> None:
        a, b = max(0, s.start - front), min(frames, s.stop + back)
        y = fn(x[:, :, a:b])
        lo, hi = max(0, scale * s.start - drop), scale * s.stop - drop
        output.write(slice(lo, hi), y[:, :, lo - scale * a:hi - scale * a])

    runner.run(group, slices, x.device)
    return output.value


def slice_time_block(module: nn.Module, runner: SliceRunner, forward: Callable, x: torch.Tensor,
                     **kwargs) -> torch.Tensor:
    """A CV-VAE block (ResnetBlock3D, FrameAttention, Upsample3D) on slices of time with its halo."""
    from reelkit.vae.cvvae import Upsample3D

    if x.ndim != 5:
        return forward(x, **kwargs)
    front, back = _time_halo(module)
    if isinstance(module, Upsample3D) and module.temporal:
        return _slice_time(runner, lambda v: forward(v, **kwargs), x, front, back, scale=2, drop=1)
    return _slice_time(runner, lambda v: forward(v, **kwargs), x, front, back)


def slice_decoder3d(decoder: nn.Module, runner: SliceRunner, forward: Callable, z: torch.Tensor) -> torch.Tensor:
    """Its blocks sliced in time, then the full-resolution head ``conv_norm_out -> silu -> conv_out`` as one
    group per slice of time (with ``conv_out``'s halo). Re-runs Decoder3D's 4-line forward for the head."""
    with _sliced_descendants(decoder, runner):
        x = decoder.mid_block(decoder.conv_in(z))
        for block in decoder.up_blocks:
            x = block(x)

    def head(v: torch.Tensor) -> torch.Tensor:
        return decoder.conv_out(F.silu(decoder.conv_norm_out(v)))

    return _slice_time(runner, head, x, *_time_halo(decoder.conv_out))


# --------------------------------------------------------------------------------------------------------
# Registration


def _register() -> None:
    from reelkit.vae.cvvae import Decoder3D, FrameAttention, ResnetBlock3D, Upsample3D

    for spatial in (ResnetBlock2D, Transformer2DModel, BasicTransformerBlock, Downsample2D, Upsample2D):
        register_slicer(spatial, slice_rows)
    register_slicer(SpatioTemporalResBlock, slice_spatio_temporal_res_block)
    register_slicer(TemporalBasicTransformerBlock, slice_temporal_transformer_block)
    register_slicer(AlphaBlender, slice_alpha_blender)
    register_slicer(AnimateDiffTransformer3D, slice_motion_module)
    register_slicer(TemporalDecoder, slice_temporal_decoder)
    for block in (ResnetBlock3D, FrameAttention, Upsample3D):
        register_slicer(block, slice_time_block)
    register_slicer(Decoder3D, slice_decoder3d)


_register()

__all__ = ["slice_alpha_blender", "slice_decoder3d", "slice_motion_module", "slice_spatio_temporal_res_block",
           "slice_temporal_decoder", "slice_temporal_transformer_block", "slice_time_block"]
