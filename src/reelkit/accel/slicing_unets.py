"""Feature Slicing for the video UNets: fused up blocks and SVD's spatio-temporal transformer.

What a sliced UNet still held at full size, and what this module does about it:

* **The skip concatenation.** Before each ResNet an up block runs ``torch.cat([hidden, skip], dim=1)``, a
  full-resolution tensor with the channels of both. :func:`slice_up_block` re-runs the up block's own
  sequence (diffusers' ``forward`` step by step, as :func:`~reelkit.accel.slicing_models.
  slice_temporal_decoder` does for the VAE) and feeds each ResNet slice by slice: a slice of ``B*F`` rows
  concatenates only its own rows, so the full concatenation never exists (concatenation and a per-row
  ResNet commute with slicing rows: exact).
* **The up block's input.** The UNet's loop holds the input of the running up block (the upsampled features
  of the level below, twice the block's width at the top level) until the block returns. Inside a sliced
  UNet (:func:`slice_unet`) that input is dead afterwards, so the block writes its ResNets', attentions' and
  motion modules' outputs over its storage instead of allocating new full-size tensors. Called on its own,
  an up block leaves its inputs intact.
* **SVD's ``TransformerSpatioTemporalModel``**, whose forward keeps about six full-size tensors alive, runs
  as two operator groups around one inner tensor (:func:`slice_spatio_temporal_transformer`).

Served: AnimateDiff's ``UpBlockMotion`` / ``CrossAttnUpBlockMotion`` and SVD's ``UpBlockSpatioTemporal`` /
``CrossAttnUpBlockSpatioTemporal`` in ``UNetMotionModel`` / ``UNetSpatioTemporalConditionModel``. FreeU
(which rescales ``hidden`` and ``skip`` before the concatenation), gradient checkpointing and another hook on
a block run the block's own forward; pipelined CUDA slices never write over their input.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
from diffusers.models.resnet import SpatioTemporalResBlock
from diffusers.models.transformers.transformer_temporal import (
    TransformerSpatioTemporalModel,
    TransformerTemporalModelOutput,
)
from diffusers.models.unets.unet_3d_blocks import CrossAttnUpBlockSpatioTemporal, UpBlockSpatioTemporal
from diffusers.models.unets.unet_motion_model import CrossAttnUpBlockMotion, UNetMotionModel, UpBlockMotion
from diffusers.models.unets.unet_spatio_temporal_condition import UNetSpatioTemporalConditionModel
from torch import nn

from reelkit.accel._diffusers_compat import get_hook, hook_names
from reelkit.accel.slicing import _BLOCK_HOOK, SliceRunner, chunk_slices, cut_rows, register_slicer


def _unhooked(module: nn.Module) -> Callable | None:
    """``module``'s forward below its Feature Slicing hook, or None when another hook wraps it too."""
    if hook_names(module) != {_BLOCK_HOOK}:
        return None
    return get_hook(module, _BLOCK_HOOK).fn_ref.original_forward


def _concat_rows(runner: SliceRunner, forward: Callable, hidden: torch.Tensor, skip: torch.Tensor,
                 temb: torch.Tensor | None, reuse: bool) -> torch.Tensor:
    """``forward(torch.cat([hidden, skip], 1)[s], temb[s])`` for slices ``s`` of the ``B*F`` rows.

    With ``reuse`` (``hidden`` is dead after this call) the output is written from the front of
    ``hidden``'s own storage: output rows ``[a, b)`` are copied in once computed and cover at most input
    rows ``[0, b)``, all consumed by then, since an output row is no larger than an input row."""
    rows = hidden.shape[0]
    out = None
    for s in chunk_slices(rows, runner.frame_chunks):
        y = forward(torch.cat([hidden[s], skip[s]], dim=1), cut_rows(temb, s, rows))
        if out is None:
            shape = (rows, *y.shape[1:])
            fits = reuse and hidden.is_contiguous() and hidden.dtype == y.dtype and y[0].numel() <= hidden[0].numel()
            out = hidden.view(-1)[:math.prod(shape)].view(shape) if fits else y.new_empty(shape)
        out[s] = y
    return out


def concat_resnet(resnet: nn.Module, runner: SliceRunner, hidden: torch.Tensor, skip: torch.Tensor,
                  temb: torch.Tensor | None, image_only_indicator: torch.Tensor | None = None,
                  reuse: bool = False) -> torch.Tensor:
    """``resnet(torch.cat([hidden, skip], 1), temb)`` with the concatenation made per slice of rows;
    ``reuse``: ``hidden`` is dead afterwards and its storage may hold the output."""
    forward = _unhooked(resnet)
    if forward is None:
        hidden = torch.cat([hidden, skip], dim=1)
        return resnet(hidden, temb) if image_only_indicator is None else resnet(
            hidden, temb, image_only_indicator=image_only_indicator)
    if isinstance(resnet, SpatioTemporalResBlock):
        from reelkit.accel.slicing_models import slice_spatio_temporal_res_block

        spatial = resnet.spatial_res_block
        return slice_spatio_temporal_res_block(
            resnet, runner, forward, hidden, temb, image_only_indicator=image_only_indicator,
            spatial_output=lambda: _concat_rows(runner, spatial, hidden, skip, temb, reuse))
    return _concat_rows(runner, forward, hidden, skip, temb, reuse)


def _motion_module(module: nn.Module, runner: SliceRunner, hidden: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The motion module over ``hidden``, an intermediate this block owns: written back in place."""
    forward = _unhooked(module)
    if forward is None:
        return module(hidden, num_frames=num_frames)
    from reelkit.accel.slicing_models import slice_motion_module

    return slice_motion_module(module, runner, forward, hidden, num_frames=num_frames, overwrite=not runner.pipelined)


def _rows_in_place(module: nn.Module, runner: SliceRunner, hidden: torch.Tensor, **kwargs) -> torch.Tensor:
    """A per-row module (a per-frame transformer) over ``hidden``, an intermediate this block owns: each
    slice of rows is written back over its input rows (``kwargs`` with ``B*F`` rows are sliced alike)."""
    forward = _unhooked(module)
    if forward is None or runner.pipelined:
        return module(hidden, **kwargs)[0]
    rows = hidden.shape[0]
    for s in chunk_slices(rows, runner.frame_chunks):
        hidden[s] = forward(hidden[s], **{k: cut_rows(v, s, rows) for k, v in kwargs.items()})[0]
    return hidden


def slice_spatio_temporal_transformer(model: TransformerSpatioTemporalModel, runner: SliceRunner, forward: Callable,
                                      hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                                      image_only_indicator: torch.Tensor | None = None, return_dict: bool = True,
                                      overwrite: bool = False):
    """SVD's ``TransformerSpatioTemporalModel`` as two operator groups per block, around one full-size
    inner tensor: ``norm -> proj_in -> spatial block`` on slices of ``B*F`` rows (its GroupNorm is per
    frame), then ``+ frame embedding -> temporal block -> time mixer (-> proj_out + residual)`` on slices of
    locations. Its own forward keeps about six full-size tensors alive; this keeps the input, the inner
    tensor and the output (written over the input with ``overwrite``: the caller owns it)."""
    if torch.is_grad_enabled() and model.gradient_checkpointing or encoder_hidden_states is None:
        return forward(hidden_states, encoder_hidden_states, image_only_indicator, return_dict)
    bf, channels, height, width = hidden_states.shape
    frames = image_only_indicator.shape[-1]
    batch, space = bf // frames, height * width
    x = hidden_states.contiguous()
    residual = x.view(bf, channels, space)
    context = encoder_hidden_states.view(batch, frames, *encoder_hidden_states.shape[1:])[:, 0]  # (B, L, D)
    frame_ids = torch.arange(frames, device=x.device).repeat(batch)
    emb = model.time_pos_embed(model.time_proj(frame_ids).to(x.dtype))[:, None, :]  # (B*F, 1, inner)
    out = residual if overwrite and not runner.pipelined else torch.empty_like(residual)
    inner = None
    last = len(model.transformer_blocks) - 1
    for i, (block, temporal_block) in enumerate(
            zip(model.transformer_blocks, model.temporal_transformer_blocks, strict=True)):
        def spatial(s: slice, block=block, first=i == 0) -> None:
            nonlocal inner
            if first:
                h = model.proj_in(model.norm(x[s]).flatten(2).transpose(1, 2))  # (n, S, inner)
            else:
                h = inner[s]
            h = block(h, encoder_hidden_states=encoder_hidden_states[s])
            if inner is None:
                inner = h.new_empty(bf, space, h.shape[-1])
            inner[s] = h

        def temporal(s: slice, temporal_block=temporal_block, final=i == last) -> None:
            n = s.stop - s.start
            h = inner[:, s]  # (B*F, n, inner)
            ctx = context[:, None].expand(batch, n, *context.shape[1:]).reshape(batch * n, *context.shape[1:])
            mix = temporal_block(h + emb, num_frames=frames, encoder_hidden_states=ctx)
            h = model.time_mixer(x_spatial=h, x_temporal=mix, image_only_indicator=image_only_indicator)
            if final:
                out[..., s] = model.proj_out(h).transpose(1, 2) + residual[..., s]
            else:
                inner[:, s] = h

        runner.run(spatial, chunk_slices(bf, runner.frame_chunks), x.device)
        runner.run(temporal, chunk_slices(space, runner.spatial_chunks), x.device)
    output = out.view(bf, channels, height, width)
    return (output,) if not return_dict else TransformerTemporalModelOutput(sample=output)


def _freeu(block: nn.Module) -> bool:
    return all(getattr(block, name, None) for name in ("s1", "s2", "b1", "b2"))


def slice_up_block(block: nn.Module, runner: SliceRunner, forward: Callable, *args, **kwargs) -> torch.Tensor:
    """An up block with every ResNet's skip concatenation made slice by slice (see the module docstring)."""
    if _freeu(block) or (torch.is_grad_enabled() and block.gradient_checkpointing):
        return forward(*args, **kwargs)
    bound = inspect.signature(type(block).forward).bind(block, *args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    hidden, skips, temb = a["hidden_states"], a["res_hidden_states_tuple"], a["temb"]
    # inside a sliced UNet's own loop the block's input is dead once the block returns (never one of the skips)
    reuse = (runner.overwrite_block_inputs and not runner.pipelined and hook_names(block) == {_BLOCK_HOOK}
             and all(hidden.untyped_storage().data_ptr() != r.untyped_storage().data_ptr() for r in skips))
    motion = isinstance(block, (UpBlockMotion, CrossAttnUpBlockMotion))
    image_only_indicator = None if motion else a["image_only_indicator"]
    attentions = getattr(block, "attentions", None)
    for i, resnet in enumerate(block.resnets):
        hidden = concat_resnet(resnet, runner, hidden, skips[-1 - i], temb, image_only_indicator, reuse)
        reuse = not runner.pipelined  # from here on ``hidden`` is this block's own intermediate
        if motion:
            if attentions is not None:
                hidden = _rows_in_place(attentions[i], runner, hidden,
                                        encoder_hidden_states=a["encoder_hidden_states"],
                                        cross_attention_kwargs=a["cross_attention_kwargs"],
                                        attention_mask=a["attention_mask"],
                                        encoder_attention_mask=a["encoder_attention_mask"], return_dict=False)
            hidden = _motion_module(block.motion_modules[i], runner, hidden, a["num_frames"])
        elif attentions is not None:
            attention, forward_of = attentions[i], _unhooked(attentions[i])
            if forward_of is None:
                hidden = attention(hidden, encoder_hidden_states=a["encoder_hidden_states"],
                                   image_only_indicator=image_only_indicator, return_dict=False)[0]
            else:
                hidden = slice_spatio_temporal_transformer(
                    attention, runner, forward_of, hidden, a["encoder_hidden_states"], image_only_indicator,
                    return_dict=False, overwrite=True)[0]
    for upsampler in block.upsamplers or ():
        if motion:
            hidden = upsampler(hidden_states=hidden, output_size=a["upsample_size"])
        else:
            hidden = upsampler(hidden, a["upsample_size"])
    return hidden


def slice_unet(model: nn.Module, runner: SliceRunner, forward: Callable, *args, **kwargs):
    """The UNet itself runs as written; inside its up loop each up block's input dies with the call, so the
    up blocks may write over it (its blocks are sliced by their own hooks)."""
    runner.overwrite_block_inputs = not torch.is_grad_enabled()
    try:
        return forward(*args, **kwargs)
    finally:
        runner.overwrite_block_inputs = False


def _register() -> None:
    for block in (UpBlockMotion, CrossAttnUpBlockMotion, UpBlockSpatioTemporal, CrossAttnUpBlockSpatioTemporal):
        register_slicer(block, slice_up_block, container=True)
    register_slicer(TransformerSpatioTemporalModel, slice_spatio_temporal_transformer)
    for unet in (UNetMotionModel, UNetSpatioTemporalConditionModel):
        register_slicer(unet, slice_unet, container=True)


_register()

__all__ = ["concat_resnet", "slice_spatio_temporal_transformer", "slice_unet", "slice_up_block"]
