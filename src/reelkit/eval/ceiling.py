"""The VAE ceiling: what the judge still reads in a clip after a round trip through a VAE.

Every model of the embedded default generates latents that a VAE decodes, so no generator can score
above the judge's reading of the decoded real clips: that reading is the ceiling each adherence figure is
read against. :func:`roundtrip_reading` runs clips through a round trip and the judge;
:func:`ceiling_figures` turns a reading into the bench's figures: ``judge_<attribute>`` (accuracy against
the clips' true labels), ``adherence_<attribute>`` when prompts are given (as the generation suites score
a generated clip), and ``psnr_db`` / ``ssim`` of the round trip.

>>> import torch
>>> from reelkit.data.world import render_clip
>>> from reelkit.eval.ceiling import ceiling_figures, roundtrip_reading
>>> from reelkit.models.judge import WorldJudge
>>> judge = WorldJudge(channels=(8, 8, 8, 16), feature_dim=32).eval()
>>> clips = [render_clip(seed, 5, 32) for seed in range(2)]
>>> reading = roundtrip_reading(judge, lambda video: video, clips)   # the identity: the clips' own reading
>>> figures = ceiling_figures(reading, clips, prompts=[c.caption for c in clips])
>>> sorted(figures)[:3], figures["psnr_db"] > 60
(['adherence_color', 'adherence_count', 'adherence_motion'], True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from reelkit.data.world import WorldClip
from reelkit.eval.adherence import Objects, judge_clips, label_accuracy, mean_adherence, prompt_adherence
from reelkit.metrics import video_psnr, video_ssim


@dataclass
class RoundtripReading:
    """The judge's objects per round-tripped clip, and the round trip's mean PSNR / SSIM against the clips."""

    seen: list[Objects]
    psnr_db: float
    ssim: float


@torch.no_grad()
def roundtrip_reading(judge, roundtrip: Callable[[torch.Tensor], torch.Tensor], clips: Sequence[WorldClip],
                      batch_size: int = 8, advance: Callable[[], None] | None = None) -> RoundtripReading:
    """``roundtrip`` maps ``(B, C, T, H, W)`` clips to their reconstructions (same shape); the judge reads
    the reconstructions, ``batch_size`` clips at a time."""
    seen, psnrs, ssims = [], [], []
    for start in range(0, len(clips), batch_size):
        videos = torch.stack([clip.video for clip in clips[start:start + batch_size]])  # (B, C, T, H, W)
        output = roundtrip(videos).float().clamp(-1, 1).cpu()
        if output.shape != videos.shape:
            raise ValueError(f"a round trip must keep the clip's shape {tuple(videos.shape)}, "
                             f"got {tuple(output.shape)}")
        seen += judge_clips(judge, output)[0]
        for reconstruction, video in zip(output, videos, strict=True):
            psnrs.append(video_psnr(reconstruction, video))
            ssims.append(video_ssim(reconstruction, video))
            if advance is not None:
                advance()
    return RoundtripReading(seen, sum(psnrs) / len(psnrs), sum(ssims) / len(ssims))


def ceiling_figures(reading: RoundtripReading, clips: Sequence[WorldClip],
                    prompts: Sequence[str] | None = None) -> dict[str, float]:
    """``judge_*`` against the clips' labels, ``adherence_*`` against ``prompts`` (if given), PSNR, SSIM."""
    labels = [clip.labels["objects"] for clip in clips]
    figures = {f"judge_{k}": v for k, v in label_accuracy(reading.seen, labels).items()}
    if prompts is not None:
        scores = mean_adherence(prompt_adherence(p, s) for p, s in zip(prompts, reading.seen, strict=True))
        figures.update({f"adherence_{k}": v for k, v in scores.items()})
    figures.update({"psnr_db": reading.psnr_db, "ssim": reading.ssim})
    return figures


__all__ = ["RoundtripReading", "ceiling_figures", "roundtrip_reading"]
