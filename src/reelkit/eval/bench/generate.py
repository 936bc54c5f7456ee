"""Bench suite ``generate``: the text-to-video teacher on held-out prompts, graded by the judge.

Prompts are the captions of the first ``NUM_PROMPTS`` held-out clips (``seed`` ``i`` for prompt ``i``);
the reference set for FVD-demo is the held-out clips after them, rendered. Rows:

* ``teacher_<steps>`` for each of ``STEPS``, with guidance ``GUIDANCE``: ``latency_s`` (one clip, prompt to
  pixels, median), ``adherence_shape`` / ``_color`` / ``_motion`` / ``_count`` (see
  :mod:`reelkit.eval.adherence`), ``fvd_demo``;
* ``real_clips``: the rendered clips of the same prompts read by the judge: its accuracy against the
  true labels (``adherence_*``) and the FVD-demo floor; ``judge_accuracy_*`` over every held-out clip
  not in the reference set.
* ``vae_ceiling``: the same clips after a round trip through the pipeline's VAE, scored against their
  prompts like a generated clip (``adherence_*``; ``judge_*`` against the labels; ``psnr_db``): the most
  a generator decoding through that VAE can reach (see :mod:`reelkit.eval.ceiling`);
* ``teacher_<steps>_from_noise_<s>`` for each of ``NOISE_LEVELS``: the same prompts generated from their own
  clips noised to ``s`` (:mod:`reelkit.eval.noise_levels`), ``adherence_*``: the noise level where the teacher
  decides, or loses, each attribute.

With a report path, a contact sheet of the first 8 clips of the most-step row is saved next to it
(columns are clips, time runs down).
"""

from __future__ import annotations

import torch

from reelkit.data.datasets import HELDOUT_SIZE, heldout_seeds
from reelkit.data.world import render_clip
from reelkit.eval.adherence import frechet_distance, judge_clips, label_accuracy, mean_adherence, prompt_adherence
from reelkit.eval.bench import BenchContext

NUM_PROMPTS = {False: 64, True: 8}
STEPS = {False: (10, 25, 50), True: (10,)}
NOISE_LEVELS = {False: (0.3, 0.5, 0.7, 0.9), True: (0.5,)}
GUIDANCE = 5.0
FRAMES, SIZE = 17, 64
BATCH = 8
PIPELINE = None  # a loader returning the pipeline to bench (tests swap in a tiny one); None: bundled teacher
JUDGE = None  # likewise for the judge


def _load():
    from reelkit.eval.bench.harness import load_generator_and_judge

    return load_generator_and_judge(PIPELINE, JUDGE)


def heldout_prompts(count: int) -> list[str]:
    """The captions of the first ``count`` held-out clips."""
    from reelkit.data.world import random_scene

    return [random_scene(seed)[1] for seed in heldout_seeds(count)]


@torch.no_grad()
def _generate(pipe, prompts: list[str], steps: int, advance) -> torch.Tensor:
    clips = []
    for start in range(0, len(prompts), BATCH):
        batch = prompts[start:start + BATCH]
        generators = [torch.Generator().manual_seed(start + i) for i in range(len(batch))]
        clips.append(pipe(batch, num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=steps,
                          guidance_scale=GUIDANCE, generator=generators).frames.cpu())
        for _ in batch:
            advance()
    return torch.cat(clips)


def _adherence_figures(scores: dict[str, float]) -> dict[str, float]:
    return {f"adherence_{key}": value for key, value in scores.items()}


def real_clip_features(ctx: BenchContext, judge, count: int, reference_seeds: list[int]):
    """The judge's reading of the rendered held-out clips: the ``count`` prompts' own clips, then the
    reference set. Returns ``(seen, labels, features)``."""
    advance = ctx.progress("rendering real held-out clips", count + len(reference_seeds))
    real, labels = [], []
    for seed in heldout_seeds(count) + reference_seeds:
        clip = render_clip(seed, FRAMES, SIZE)
        real.append(clip.video)
        labels.append(clip.labels["objects"])
        advance()
    seen, features = judge_clips(judge, torch.stack(real).to(ctx.device))
    return seen, labels, features


def vae_ceiling_row(ctx: BenchContext, vae, judge, prompts: list[str]) -> dict:
    """The ``vae_ceiling`` row: the prompts' own clips through ``vae`` and back, read by the judge."""
    from reelkit.eval.ceiling import ceiling_figures, roundtrip_reading
    from reelkit.vae import reconstruct

    clips = [render_clip(seed, FRAMES, SIZE) for seed in heldout_seeds(len(prompts))]
    advance = ctx.progress(f"VAE round trips of {len(clips)} clips", len(clips))
    reading = roundtrip_reading(judge, lambda videos: reconstruct(vae, videos.to(ctx.device)), clips,
                                advance=advance)
    return {"method": "vae_ceiling", "clips": len(clips), "vae": type(vae).__name__,
            **ceiling_figures(reading, clips, prompts)}


def _noise_level_rows(ctx: BenchContext, pipe, judge, count: int, steps: int) -> list[dict]:
    from reelkit.eval.noise_levels import adherence_from_noise

    levels = NOISE_LEVELS[ctx.quick]
    advance = ctx.progress(f"teacher, {steps} steps from noise {', '.join(map(str, levels))}",
                           len(levels) * -(-count // BATCH))
    readings = adherence_from_noise(pipe, judge, levels, clips=count, steps=steps, guidance=GUIDANCE, frames=FRAMES,
                                    size=SIZE, batch=BATCH, advance=advance)
    return [{"method": f"teacher_{steps}_from_noise_{level}", "noise_level": level, "steps": steps,
             "guidance": GUIDANCE, "clips": count, **_adherence_figures(scores)} for level, scores in readings.items()]


def reference_seeds_for(count: int, quick: bool) -> list[int]:
    """The held-out clips after the prompts' own: FVD-demo's reference set."""
    return heldout_seeds(count + 32 if quick else HELDOUT_SIZE)[count:]


def run(ctx: BenchContext) -> list[dict]:
    torch.manual_seed(0)
    pipe, judge = _load()
    pipe.to(ctx.device)
    judge.to(ctx.device)
    count = NUM_PROMPTS[ctx.quick]
    prompts = heldout_prompts(count)
    reference_seeds = reference_seeds_for(count, ctx.quick)
    ctx.settings.update({"prompts": count, "frames": FRAMES, "size": SIZE, "guidance": GUIDANCE,
                         "scheduler": type(pipe.scheduler).__name__, "reference_clips": len(reference_seeds),
                         "prompt_examples": prompts[:3]})

    seen, labels, features = real_clip_features(ctx, judge, count, reference_seeds)
    reference = features[count:]
    rows = [{"method": "real_clips", "clips": count,
             **_adherence_figures(label_accuracy(seen[:count], labels[:count])),
             "fvd_demo": frechet_distance(features[:count], reference),
             **{f"judge_accuracy_{k}": v for k, v in label_accuracy(seen[count:], labels[count:]).items()}}]

    rows.append(vae_ceiling_row(ctx, pipe.vae, judge, prompts))

    sheet_clips = None
    for steps in STEPS[ctx.quick]:
        advance = ctx.progress(f"teacher, {steps} steps: {count} clips", count)
        videos = _generate(pipe, prompts, steps, advance)
        seen, features = judge_clips(judge, videos.to(ctx.device))
        scores = mean_adherence(prompt_adherence(p, s) for p, s in zip(prompts, seen, strict=True))

        def one_clip(steps=steps):
            return pipe(prompts[0], num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=steps,
                        guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(0)).frames

        rows.append({"method": f"teacher_{steps}", "steps": steps, "guidance": GUIDANCE, "clips": count,
                     "latency_s": ctx.time(one_clip).median_s, **_adherence_figures(scores),
                     "fvd_demo": frechet_distance(features, reference)})
        sheet_clips = videos[:8]
    rows += _noise_level_rows(ctx, pipe, judge, count, max(STEPS[ctx.quick]))
    path = ctx.artifact("sheet.png")
    if path is not None and sheet_clips is not None:
        from reelkit.data.video_io import contact_sheet

        contact_sheet(torch.cat(list(sheet_clips), dim=-1), path, columns=1, max_frames=9)
        ctx.settings["contact_sheet"] = path.name
        ctx.settings["contact_sheet_prompts"] = prompts[:8]
    return rows
