"""Bench suite ``memory``: peak activation memory of Feature Slicing + Operator Grouping.

Subjects (``model`` column), each at three video sizes (``frames`` x ``size``, in pixels; latents are 8x
smaller, 4x for the teacher's CV-VAE) with a classifier-free-guidance batch of 2, fp32:

* ``teacher``: the bundled VideoDiT;
* ``svd_unet``: a diffusers ``UNetSpatioTemporalConditionModel`` (SVD's architecture, narrower, random
  weights: memory and latency depend on shapes, not on the weights' values);
* ``animatediff_unet``: a diffusers ``UNetMotionModel`` (AnimateDiff's architecture, narrower, random).

Rows (``method``): ``plain`` (the unhooked model), ``naive_clip_slicing`` (the clip cut into 4 shorter
clips run one after the other: the paper's baseline, which breaks temporal layers), ``feature_slicing``
(``SlicingConfig(frame_chunks, spatial_chunks)``) and ``feature_slicing_budget`` (``max_memory`` set to a
quarter of the plain peak; the chunk counts it picked are reported). Figures: ``peak_mem_bytes`` (tensors
allocated during one denoiser call: activations and output, weights left out; :func:`reelkit.memory.
peak_activation_bytes`), ``memory_reduction`` (plain / row),
``latency_s`` (median), ``latency_overhead`` (row / plain - 1) and ``max_abs_diff`` against the plain
output. A PNG of peak memory against video size is saved next to
the JSON.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from reelkit.accel.slicing import SlicingConfig, apply_feature_slicing, feature_slicing_chunks, remove_feature_slicing
from reelkit.eval.bench import BenchContext
from reelkit.memory import peak_activation_bytes

BATCH = 2  # a classifier-free-guidance batch
NAIVE_CLIPS = 4
SIZES = {  # (frames, pixel size)
    False: {"teacher": [(17, 256), (33, 256), (33, 512)],
            "svd_unet": [(8, 256), (14, 256), (14, 512)],
            "animatediff_unet": [(8, 256), (16, 256), (16, 512)]},
    True: {"teacher": [(17, 128)], "svd_unet": [(8, 128)], "animatediff_unet": [(8, 128)]},
}
CHUNKS = {"teacher": (16, 16), "svd_unet": (16, 16), "animatediff_unet": (16, 16)}


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _perturbed(model: nn.Module) -> nn.Module:
    """Random weights everywhere (diffusers zero-initialises output convs and temporal mixers)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return model.eval()


@dataclass
class Subject:
    """A denoiser and how to call it on a clip of ``frames`` latent frames, optionally only ``clip`` of them."""

    name: str
    model: nn.Module
    call: Callable[[int, int, slice | None], Callable[[], torch.Tensor]]  # (frames, latent side, clip)
    latent_frames: Callable[[int], int]
    frame_dim: int  # where the frames are in the output
    spatial_compression: int = 8  # pixels per latent pixel of the VAE the denoiser works with


def _load_teacher():
    from reelkit.pipelines.text_to_video import load_text_to_video

    return load_text_to_video()


LOAD_TEACHER = _load_teacher


def _teacher(device: torch.device) -> Subject:
    pipe = LOAD_TEACHER()
    model = pipe.transformer.float().eval().to(device)
    text = _randn(BATCH, 16, model.config.text_dim, seed=1).to(device)

    def call(frames: int, side: int, clip: slice | None):
        latents = _randn(BATCH, model.config.in_channels, frames, side, side).to(device)
        latents = latents if clip is None else latents[:, :, clip]
        return lambda: model(latents, 500.0, text).sample

    return Subject("teacher", model, call, lambda f: 1 + (f - 1) // 4, frame_dim=2,
                   spatial_compression=pipe.vae.spatial_compression)


def _svd_unet(device: torch.device) -> Subject:
    from diffusers import UNetSpatioTemporalConditionModel

    torch.manual_seed(0)
    model = _perturbed(UNetSpatioTemporalConditionModel(
        sample_size=32, in_channels=8, out_channels=4, block_out_channels=(64, 128, 128), layers_per_block=1,
        down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 2 + ("DownBlockSpatioTemporal",),
        up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 2,
        addition_time_embed_dim=32, projection_class_embeddings_input_dim=96, cross_attention_dim=128,
        num_attention_heads=(2, 4, 4), num_frames=14)).to(device)
    image = _randn(BATCH, 1, 128, seed=1).to(device)
    ids = torch.tensor([[6.0, 127.0, 0.02]] * BATCH, device=device)

    def call(frames: int, side: int, clip: slice | None):
        sample = _randn(BATCH, frames, 8, side, side).to(device)
        sample = sample if clip is None else sample[:, clip]
        return lambda: model(sample, 10.0, image, added_time_ids=ids).sample

    return Subject("svd_unet", model, call, lambda f: f, frame_dim=1)


def _animatediff_unet(device: torch.device) -> Subject:
    from diffusers import UNetMotionModel

    torch.manual_seed(0)
    model = _perturbed(UNetMotionModel(
        sample_size=32, block_out_channels=(64, 128, 128), layers_per_block=1, cross_attention_dim=128,
        down_block_types=("CrossAttnDownBlockMotion",) * 2 + ("DownBlockMotion",),
        up_block_types=("UpBlockMotion",) + ("CrossAttnUpBlockMotion",) * 2, num_attention_heads=4,
        motion_num_attention_heads=4, motion_max_seq_length=32)).to(device)
    text = _randn(BATCH, 16, 128, seed=1).to(device)

    def call(frames: int, side: int, clip: slice | None):
        sample = _randn(BATCH, 4, frames, side, side).to(device)
        sample = sample if clip is None else sample[:, :, clip]
        per_frame = text.repeat_interleave(sample.shape[2], 0)  # pipelines repeat the text per frame
        return lambda: model(sample, 10, per_frame).sample

    return Subject("animatediff_unet", model, call, lambda f: f, frame_dim=2)


def _naive(subject: Subject, frames: int, side: int) -> Callable[[], torch.Tensor]:
    """The clip cut into NAIVE_CLIPS shorter clips, each denoised alone, outputs joined."""
    step = math.ceil(frames / NAIVE_CLIPS)
    calls = [subject.call(frames, side, slice(start, start + step)) for start in range(0, frames, step)]
    return lambda: torch.cat([call() for call in calls], dim=subject.frame_dim)


def _measure(ctx: BenchContext, subject: Subject, call: Callable[[], torch.Tensor],
             reference: torch.Tensor | None) -> dict:
    with torch.no_grad():
        output = call()
        peak = peak_activation_bytes(call, subject.model, device=ctx.device)
        timing = ctx.time(call)
    figures = {"peak_mem_bytes": int(peak), "latency_s": timing.median_s}
    if reference is not None:
        figures["max_abs_diff"] = float((output.float() - reference.float()).abs().max())
    return figures


def run(ctx: BenchContext) -> list[dict]:
    builders = {"teacher": _teacher, "svd_unet": _svd_unet, "animatediff_unet": _animatediff_unet}
    sizes = SIZES[ctx.quick]
    ctx.settings.update(batch=BATCH, naive_clips=NAIVE_CLIPS, chunks=CHUNKS, sizes=sizes, dtype="float32")
    advance = ctx.progress("memory", sum(len(v) for v in sizes.values()) * 4)
    rows = []
    for name, build in builders.items():
        subject = build(ctx.device)
        for frames, size in sizes[name]:
            latent_frames, side = subject.latent_frames(frames), size // subject.spatial_compression
            base = {"model": name, "frames": frames, "size": size}
            call = subject.call(latent_frames, side, None)
            with torch.no_grad():
                reference = call()
            plain = _measure(ctx, subject, call, None)
            rows.append({"method": "plain", **base, **plain, "memory_reduction": 1.0, "latency_overhead": 0.0,
                         "max_abs_diff": 0.0})
            advance()
            configs = {"naive_clip_slicing": None,
                       "feature_slicing": SlicingConfig(*CHUNKS[name]),
                       "feature_slicing_budget": SlicingConfig(max_memory=max(1, plain["peak_mem_bytes"] // 4))}
            for method, config in configs.items():
                if config is None:
                    figures = _measure(ctx, subject, _naive(subject, latent_frames, side), reference)
                else:
                    apply_feature_slicing(subject.model, config)
                    try:
                        figures = _measure(ctx, subject, call, reference)
                        figures["chunks"] = list(feature_slicing_chunks(subject.model))
                    finally:
                        remove_feature_slicing(subject.model)
                figures["memory_reduction"] = plain["peak_mem_bytes"] / max(1, figures["peak_mem_bytes"])
                figures["latency_overhead"] = figures["latency_s"] / plain["latency_s"] - 1
                rows.append({"method": method, **base, **figures})
                advance()
        del subject
    plot = ctx.artifact("peak_vs_size.png")
    if plot is not None:
        _plot(rows, plot)
        ctx.settings["plot"] = plot.name
    return rows


def _plot(rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(row["model"] for row in rows))
    figure, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.8), squeeze=False)
    for axis, model in zip(axes[0], models, strict=True):
        for method in dict.fromkeys(row["method"] for row in rows):
            points = [row for row in rows if row["model"] == model and row["method"] == method]
            axis.plot([f"{r['frames']}x{r['size']}" for r in points], [r["peak_mem_bytes"] / 2**20 for r in points],
                      marker="o", label=method)
        axis.set_title(model)
        axis.set_xlabel("frames x pixels")
        axis.set_ylabel("peak activation memory (MiB)")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
