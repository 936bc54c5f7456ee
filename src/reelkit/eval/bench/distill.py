"""Bench suite ``distill``: the T2V-Turbo student against its 50-step teacher and the ablation students.

Same held-out prompts, seeds and reference set as the ``generate`` suite. Rows:

* ``teacher_50``: the bundled teacher, 50 Euler steps with classifier-free guidance (two calls a step);
* ``turbo_4`` / ``turbo_8``: the bundled student (consistency distillation + image and video rewards),
  4 and 8 LCM steps, one call a step;
* ``vcm_4``: distilled without rewards; ``turbo_4_img_only`` / ``turbo_4_vid_only``: with one reward.
  These students are not bundled (the asset budget holds one): the rows read ``STUDENTS`` folders, the
  outputs of ``reelkit train distill --config configs/<name>.yaml``, and are left out (named in
  ``settings.missing``) when a folder is absent.

Figures: ``latency_s`` (one clip, prompt to pixels, median) and ``speedup`` vs ``teacher_50``;
``denoise_s`` / ``denoise_speedup`` (the same without the VAE decode, which costs the same in every row);
``adherence_*`` per attribute and their mean (the judge, :mod:`reelkit.eval.adherence`); ``fvd_demo``;
``reward_image`` / ``reward_video`` (the bundled demo rewards' mean score; the students were trained on
them, so they show what the reward terms optimised, while adherence and FVD are the independent judge).
"""

from __future__ import annotations

from pathlib import Path

import torch

from reelkit.eval.adherence import frechet_distance, judge_clips, mean_adherence, prompt_adherence
from reelkit.eval.bench import BenchContext
from reelkit.eval.bench.generate import (
    FRAMES,
    GUIDANCE,
    NUM_PROMPTS,
    SIZE,
    _adherence_figures,
    _generate,
    heldout_prompts,
    real_clip_features,
    reference_seeds_for,
)

TEACHER_STEPS = 50
# row -> (pipeline: a bundled name or a run folder, steps)
ROWS = {
    "teacher_50": ("teacher", TEACHER_STEPS),
    "vcm_4": ("runs/vcm/model", 4),
    "turbo_4": ("student", 4),
    "turbo_8": ("student", 8),
    "turbo_4_img_only": ("runs/turbo_img_only/model", 4),
    "turbo_4_vid_only": ("runs/turbo_vid_only/model", 4),
}
LOADER = None  # tests swap in ``LOADER(name) -> pipeline``; None: reelkit's load_text_to_video
JUDGE = None
REWARDS = None  # likewise ``REWARDS() -> (image reward, video reward)``


def _load_pipeline(name: str):
    from reelkit.pipelines.text_to_video import BUNDLED, load_text_to_video

    if LOADER is not None:
        return LOADER(name)
    if name not in BUNDLED and not (Path(name) / "model_index.json").is_file():
        return None
    pipe = load_text_to_video(name)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_rewards():
    from reelkit.rewards import load_reward

    return REWARDS() if REWARDS is not None else (load_reward("demo-image"), load_reward("demo-video"))


@torch.no_grad()
def _mean_rewards(rewards, videos: torch.Tensor, prompts: list[str]) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)  # the image reward's frame draw, the same in every row
    figures = {}
    for name, reward in zip(("reward_image", "reward_video"), rewards, strict=True):
        figures[name] = float(torch.cat([reward.score(videos[i:i + 8], prompts[i:i + 8], generator)
                                         for i in range(0, len(prompts), 8)]).mean())
    return figures


def run(ctx: BenchContext) -> list[dict]:
    from reelkit.models.judge import load_judge

    torch.manual_seed(0)
    judge = (JUDGE() if JUDGE is not None else load_judge()).to(ctx.device)
    rewards = _load_rewards()
    count = NUM_PROMPTS[ctx.quick]
    prompts = heldout_prompts(count)
    reference_seeds = reference_seeds_for(count, ctx.quick)
    reference = real_clip_features(ctx, judge, count, reference_seeds)[2][count:]
    ctx.settings.update({"prompts": count, "frames": FRAMES, "size": SIZE, "guidance": GUIDANCE,
                         "reference_clips": len(reference_seeds), "pipelines": {k: v[0] for k, v in ROWS.items()},
                         "missing": []})

    rows, pipes = [], {}
    for method, (name, steps) in ROWS.items():
        if name not in pipes:
            pipes[name] = _load_pipeline(name)
        pipe = pipes[name]
        if pipe is None:
            ctx.settings["missing"].append(f"{method}: {name} (train it: reelkit train distill --config "
                                           f"configs/{Path(name).parent.name}.yaml)")
            continue
        pipe.to(ctx.device)
        advance = ctx.progress(f"{method}: {count} clips", count)
        videos = _generate(pipe, prompts, steps, advance)
        seen, features = judge_clips(judge, videos.to(ctx.device))
        scores = mean_adherence(prompt_adherence(p, s) for p, s in zip(prompts, seen, strict=True))

        def one_clip(pipe=pipe, steps=steps, output_type="pt"):
            return pipe(prompts[0], num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=steps,
                        guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(0),
                        output_type=output_type).frames

        row = {"method": method, "steps": steps, "guidance": GUIDANCE, "clips": count,
               "model_calls_per_clip": steps * (1 if pipe.guidance_distilled else 2),
               "latency_s": ctx.time(one_clip).median_s,
               "denoise_s": ctx.time(lambda one_clip=one_clip: one_clip(output_type="latent")).median_s,
               **_adherence_figures(scores), "adherence_mean": sum(scores.values()) / len(scores),
               "fvd_demo": frechet_distance(features, reference), **_mean_rewards(rewards, videos, prompts)}
        rows.append(row)
    teacher = next((r for r in rows if r["method"] == "teacher_50"), None)
    for row in rows:
        if teacher is not None:
            row["speedup"] = teacher["latency_s"] / row["latency_s"]
            row["denoise_speedup"] = teacher["denoise_s"] / row["denoise_s"]
    return rows
