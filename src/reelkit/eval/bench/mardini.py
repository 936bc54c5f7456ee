"""Bench suite ``mardini``: interpolation, image-to-video, the asymmetric design's cost, Identity Attention.

Rows, by ``task``:

* ``interpolation`` on ``demo_world`` (held-out clips, 9 frames at 64 px: first and last known, 7 made,
  as VIDIM-Bench) and on ``real_clips`` (9-frame windows at 15 fps of the clips in ``../shared/data``,
  centre-cropped to 64 px). Methods: ``mardini`` (planner + generator, 25 steps, no guidance, the paper's
  setting), ``generator_only`` (the same generator on the null plan: the diffusion model alone),
  ``linear_blend`` and ``optical_flow`` (OpenCV DIS flow, Super SloMo warping; :mod:`reelkit.eval.interpolation`),
  and ``vae_ceiling`` (the true frames through the frame VAE: what a perfect latent-space interpolator scores).
  Figures: ``psnr_db`` and ``ssim`` on the middle frame (VIDIM-Bench's protocol), ``psnr_db_all`` over
  every made frame, ``fvd_demo`` (judge features of the clips vs other held-out clips; demo world only).
* ``image_to_video``: held-out clips' first frame -> 17 frames (guidance 2.5). The judge reads the
  clips: ``shape_accuracy`` / ``color_accuracy`` / ``count_accuracy`` against the objects in the given
  image, ``motion_confidence`` (mean top probability of the judge's motion head: does the clip move like
  one of the world's motions), ``motion_match`` (reads as the clip's true motion, which one image leaves
  open: chance is 1/9) and ``fvd_demo``. Reference rows: ``real_clips`` (the true continuations) and
  ``still_image`` (the image repeated: shape and colour kept, no motion).
* ``efficiency``: ``asymmetric`` (planner at half the generator's resolution, the design) vs
  ``symmetric`` (planner at the generator's resolution), image-to-video at 17 frames, equal steps (25,
  guidance 2.5), at 64 px (the bundled model's size) and 256 px: ``latency_s`` and ``peak_mem_bytes`` of
  planning + denoising (the frame VAE is the same in both and left out), ``planner_tokens``.
* ``training``: the generator's warm-up loss with and without Identity Attention, same seed and data, once
  with reelkit's per-frame timestep (known frames at t = 0: ``runs/mardini``, ``runs/mardini_no_identity``)
  and with the paper's shared timestep (``runs/mardini_shared_t``, ``..._no_identity``), also with
  spatio-temporal attention as in the paper's stage (b) (``runs/mardini_st_shared_t``, ``..._no_identity``);
  ``loss_first`` / ``loss_last`` (mean of the first / last tenth of the stage) and the curves in
  ``<report>_identity_attention.png``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from reelkit.eval.adherence import frechet_distance, judge_clips, label_accuracy
from reelkit.eval.bench import BenchContext

SIZE = 64
INTERPOLATION_FRAMES = 9  # VIDIM-Bench: first and last known, 7 in between
I2V_FRAMES = 17
STEPS = 25  # MarDini's DDIM steps
I2V_GUIDANCE = 2.5
CLIPS = {False: 64, True: 8}  # held-out clips per task (full, quick)
REAL_WINDOWS = {False: 8, True: 2}  # windows per real clip
REAL_FPS = 15.0
EFFICIENCY_SIZES = {False: (64, 256), True: (64,)}
WARMUP_STAGE = "generator_warmup"
RUNS = {  # the generator's warm-up, with and without Identity Attention, per-frame (ours) or shared (paper) timestep
    "with_identity_attention": "runs/mardini",
    "without_identity_attention": "runs/mardini_no_identity",
    "shared_timestep_with_identity_attention": "runs/mardini_shared_t",
    "shared_timestep_without_identity_attention": "runs/mardini_shared_t_no_identity",
    "spatiotemporal_shared_timestep_with_identity_attention": "runs/mardini_st_shared_t",
    "spatiotemporal_shared_timestep_without_identity_attention": "runs/mardini_st_shared_t_no_identity",
}
LOADER = None  # tests swap in ``LOADER() -> MaskedVideoPipeline``; None: the bundled model
JUDGE = None


def _load():
    from reelkit.models.judge import load_judge
    from reelkit.pipelines.masked_video import load_masked_video

    pipe = LOADER() if LOADER is not None else load_masked_video()
    pipe.set_progress_bar_config(disable=True)
    return pipe, (JUDGE() if JUDGE is not None else load_judge())


def _middle_frame_figures(made: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """PSNR / SSIM on the middle frame and PSNR over every in-between frame, ``(B, C, T, H, W)`` each."""
    from reelkit.metrics import video_psnr, video_ssim

    middle = truth.shape[2] // 2
    return {"psnr_db": video_psnr(made[:, :, middle:middle + 1], truth[:, :, middle:middle + 1]),
            "ssim": video_ssim(made[:, :, middle:middle + 1], truth[:, :, middle:middle + 1]),
            "psnr_db_all": video_psnr(made[:, :, 1:-1], truth[:, :, 1:-1])}


def _batched(fn, videos: torch.Tensor, batch: int = 16) -> torch.Tensor:
    return torch.cat([fn(videos[i:i + batch]) for i in range(0, len(videos), batch)])


def interpolators(pipe) -> dict:
    """Method name -> ``fn(clips (B, C, T, H, W)) -> (B, C, T, H, W)`` made from the first and last frames."""
    from reelkit.eval.interpolation import INTERPOLATORS

    def learned(use_planner: bool):
        def fn(clips):
            generator = torch.Generator().manual_seed(0)
            return pipe(clips[:, :, [0, -1]], [0, clips.shape[2] - 1], clips.shape[2], num_inference_steps=STEPS,
                        guidance_scale=1.0, generator=generator, use_planner=use_planner).frames.cpu()
        return fn

    def classical(interpolate):
        return lambda clips: torch.stack([interpolate(c[:, 0], c[:, -1], c.shape[1]) for c in clips])

    return {"mardini": learned(True), "generator_only": learned(False),
            **{name: classical(interpolate) for name, interpolate in INTERPOLATORS.items()}}


@torch.no_grad()
def vae_round_trip(vae, clips: torch.Tensor) -> torch.Tensor:
    """The true clips through the frame VAE, first and last frames kept: the best any latent-space
    interpolator can score."""
    from reelkit.mardini.latents import decode_frames, encode_frames

    made = decode_frames(vae, encode_frames(vae, clips.to(vae.device))).cpu()
    made[:, :, [0, -1]] = clips[:, :, [0, -1]]
    return made


def real_windows(count: int) -> list[torch.Tensor]:
    """``count`` 9-frame windows at 15 fps from each clip of ``../shared/data`` (64 px centre crops)."""
    from reelkit.data.video_io import probe_video, read_video
    from reelkit.paths import shared_data_clips

    windows = []
    for path in shared_data_clips():
        duration = probe_video(path).duration_s
        span = (INTERPOLATION_FRAMES - 1) / REAL_FPS
        for k in range(count):
            start = (duration - span - 0.2) * (k + 0.5) / count
            windows.append(read_video(path, num_frames=INTERPOLATION_FRAMES, fps=REAL_FPS, size=SIZE, start_s=start))
    return windows


def _interpolation_rows(ctx: BenchContext, pipe, judge, count: int, reference: torch.Tensor) -> list[dict]:
    from reelkit.data.datasets import heldout_seeds
    from reelkit.data.world import render_clip

    datasets = {"demo_world": torch.stack([render_clip(s, INTERPOLATION_FRAMES, SIZE).video
                                           for s in heldout_seeds(count)])}
    windows = real_windows(REAL_WINDOWS[ctx.quick])
    if windows:
        datasets["real_clips"] = torch.stack(windows)
    else:
        ctx.settings["missing"].append("interpolation on real_clips: ../shared/data not found")
    rows = []
    for dataset, clips in datasets.items():
        methods = {**interpolators(pipe), "vae_ceiling": lambda clips: vae_round_trip(pipe.vae, clips)}
        for method, fn in methods.items():
            advance = ctx.progress(f"interpolation, {dataset}: {method}", 1)
            made = _batched(fn, clips)
            row = {"task": "interpolation", "dataset": dataset, "method": method, "clips": len(clips),
                   "frames": INTERPOLATION_FRAMES, **_middle_frame_figures(made, clips)}
            if dataset == "demo_world":
                row["fvd_demo"] = frechet_distance(judge_clips(judge, made.to(judge.device))[1], reference)
            rows.append(row)
            advance()
    return rows


@torch.no_grad()
def _judge_motion(judge, videos: torch.Tensor):
    """Per clip: the judge's objects, features, top motion probability (first slot) and motion index."""
    seen, features = judge_clips(judge, videos.to(judge.device))
    motion = torch.cat([judge(videos[i:i + 16].to(judge.device)).motion[:, 0].float().softmax(-1).cpu()
                        for i in range(0, len(videos), 16)])
    return seen, features, motion.max(-1).values, motion.argmax(-1)


def _i2v_rows(ctx: BenchContext, pipe, judge, count: int, reference: torch.Tensor) -> list[dict]:
    from reelkit.data.datasets import heldout_seeds
    from reelkit.data.world import render_clip
    from reelkit.models.judge import MOTIONS

    clips = [render_clip(s, I2V_FRAMES, SIZE) for s in heldout_seeds(count)]
    real = torch.stack([c.video for c in clips])
    labels = [c.labels["objects"] for c in clips]
    true_motion = torch.tensor([MOTIONS.index(objs[0]["motion"]) for objs in labels])

    def mardini(videos):
        return pipe.animate(videos[:, :, 0], I2V_FRAMES, num_inference_steps=STEPS, guidance_scale=I2V_GUIDANCE,
                            generator=torch.Generator().manual_seed(0)).frames.cpu()

    def generator_only(videos):
        return pipe.animate(videos[:, :, 0], I2V_FRAMES, num_inference_steps=STEPS, use_planner=False,
                            generator=torch.Generator().manual_seed(0)).frames.cpu()

    methods = {"mardini": mardini, "generator_only": generator_only, "real_clips": lambda v: v,
               "still_image": lambda v: v[:, :, :1].expand_as(v).clone()}
    rows = []
    for method, fn in methods.items():
        advance = ctx.progress(f"image-to-video: {method}", 1)
        made = _batched(fn, real)
        seen, features, confidence, motion = _judge_motion(judge, made)
        accuracy = label_accuracy(seen, labels)
        rows.append({"task": "image_to_video", "dataset": "demo_world", "method": method, "clips": count,
                     "frames": I2V_FRAMES, "guidance": I2V_GUIDANCE if method == "mardini" else None,
                     "shape_accuracy": accuracy["shape"], "color_accuracy": accuracy["color"],
                     "count_accuracy": accuracy["count"], "motion_confidence": float(confidence.mean()),
                     "motion_match": float((motion == true_motion).float().mean()),
                     "fvd_demo": frechet_distance(features, reference)})
        advance()
    return rows


def _efficiency_rows(ctx: BenchContext, pipe) -> list[dict]:
    from reelkit.mardini.masking import reference_mask

    rows = []
    for size in EFFICIENCY_SIZES[ctx.quick]:
        image = torch.rand(1, 3, 1, size, size, generator=torch.Generator().manual_seed(size)) * 2 - 1
        reference = reference_mask(I2V_FRAMES, [0]).to(ctx.device)
        pair = {}
        for method, scale in (("asymmetric", pipe.config.planner_scale), ("symmetric", 1)):
            advance = ctx.progress(f"efficiency at {size} px: {method}", 1)
            with torch.no_grad():
                z_ref, z_low = pipe.encode_known(image.to(ctx.device), [0], I2V_FRAMES, scale)

            def plan_and_denoise(z_ref=z_ref, z_low=z_low, reference=reference):
                with torch.no_grad():
                    return pipe.denoise(z_ref, z_low, reference, STEPS, I2V_GUIDANCE,
                                        torch.Generator().manual_seed(0))

            latency = ctx.time(plan_and_denoise).median_s
            peak = ctx.peak_memory(plan_and_denoise, pipe.planner, pipe.transformer)
            pair[method] = row = {"task": "efficiency", "method": method, "size": size,
                                  "planner_size": size // scale, "frames": I2V_FRAMES, "steps": STEPS,
                                  "planner_tokens": int(z_low[0, 0].numel()), "latency_s": latency,
                                  "peak_mem_bytes": peak}
            rows.append(row)
            advance()
        pair["asymmetric"]["speedup_vs_symmetric"] = pair["symmetric"]["latency_s"] / pair["asymmetric"]["latency_s"]
        pair["asymmetric"]["memory_saving_vs_symmetric"] = (pair["symmetric"]["peak_mem_bytes"]
                                                            / pair["asymmetric"]["peak_mem_bytes"])
    return rows


def stage_losses(csv_path: Path, stage: str = WARMUP_STAGE) -> tuple[list[int], list[float]]:
    """(steps, losses) of one stage from a run's ``loss.csv``."""
    rows = [line.split(",") for line in csv_path.read_text().splitlines()[1:] if line]
    picked = [(int(r[0]), float(r[2])) for r in rows if len(r) > 2 and r[1] == stage]
    return [s for s, _ in picked], [v for _, v in picked]


def _training_rows(ctx: BenchContext) -> list[dict]:
    curves = {}
    for method, folder in RUNS.items():
        csv_path = Path(folder) / "loss.csv"
        if not csv_path.is_file():
            ctx.settings["missing"].append(f"training: {method} ({csv_path}; reelkit train mardini --config "
                                           f"configs/{Path(folder).name}.yaml)")
            continue
        steps, losses = stage_losses(csv_path, WARMUP_STAGE)
        if steps:
            curves[method] = (steps, losses)
    rows = []
    for method, (steps, losses) in curves.items():
        tenth = max(1, len(losses) // 10)
        rows.append({"task": "training", "method": method, "stage": WARMUP_STAGE, "steps": steps[-1],
                     "loss_first": sum(losses[:tenth]) / tenth, "loss_last": sum(losses[-tenth:]) / tenth})
    png = ctx.artifact("identity_attention.png")
    if curves and png is not None:
        _plot_curves(curves, png)
    return rows


def _plot_curves(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for method, (steps, losses) in curves.items():
        smooth, value = [], losses[0]
        for loss in losses:  # an exponential moving average: single windows of 10 steps are noisy
            value = 0.8 * value + 0.2 * loss
            smooth.append(value)
        style = ":" if "spatiotemporal" in method else "--" if "shared" in method else "-"
        ax.plot(steps, smooth, label=method.replace("_", " "), linestyle=style)
    ax.set_xlabel("step (generator warm-up, null plan)")
    ax.set_ylabel("masked flow-matching loss")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(ctx: BenchContext) -> list[dict]:
    from reelkit.data.world import render_clip
    from reelkit.eval.bench.generate import reference_seeds_for

    torch.manual_seed(0)
    pipe, judge = _load()
    pipe.to(ctx.device)
    judge.to(ctx.device)
    count = CLIPS[ctx.quick]
    ctx.settings.update({"clips": count, "size": SIZE, "steps": STEPS, "interpolation_frames": INTERPOLATION_FRAMES,
                         "i2v_frames": I2V_FRAMES, "i2v_guidance": I2V_GUIDANCE, "real_fps": REAL_FPS,
                         "efficiency_sizes": list(EFFICIENCY_SIZES[ctx.quick]), "missing": []})
    reference_seeds = reference_seeds_for(count, ctx.quick)
    ctx.settings["reference_clips"] = len(reference_seeds)
    references = {}
    for frames in (INTERPOLATION_FRAMES, I2V_FRAMES):
        videos = torch.stack([render_clip(s, frames, SIZE).video for s in reference_seeds])
        references[frames] = judge_clips(judge, videos.to(judge.device))[1]
    return (_interpolation_rows(ctx, pipe, judge, count, references[INTERPOLATION_FRAMES])
            + _i2v_rows(ctx, pipe, judge, count, references[I2V_FRAMES])
            + _efficiency_rows(ctx, pipe) + _training_rows(ctx))
