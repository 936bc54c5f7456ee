"""``reelkit eval``: judge-read prompt adherence of clips, and a VAE's ceiling."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from reelkit.cli.app import app
from reelkit.cli.common import console, progress_bars
from reelkit.errors import ReelkitError

eval_app = typer.Typer(help="Evaluate clips: prompt adherence read by the demo-world judge.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")



@eval_app.command("adherence")
def eval_adherence(
    video: Annotated[Path, typer.Argument(help="A clip (mp4, webm, gif or a PNG folder).")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The prompt the clip should show.")],
    judge: Annotated[Path | None, typer.Option(help="Judge folder (default: the bundled one).")] = None,
) -> None:
    """Read a clip with the demo-world judge and print, per object and attribute, asked vs seen."""
    import torch

    from reelkit.data.captions import parse_prompt
    from reelkit.data.video_io import read_video
    from reelkit.eval.adherence import judge_clips, prompt_adherence
    from reelkit.models.judge import ATTRIBUTES, load_judge

    wanted = parse_prompt(prompt).objects
    clip = read_video(video, size=64)
    with torch.no_grad():
        seen, _ = judge_clips(load_judge(judge), clip[None])
    seen = seen[0]
    table = Table(title=f"{video.name}: {len(seen)} object(s) seen, {len(wanted)} asked")
    table.add_column("attribute")
    for i in range(max(len(wanted), len(seen))):
        table.add_column(f"object {i + 1}: asked / seen")
    for name in ATTRIBUTES:
        cells = []
        for i in range(max(len(wanted), len(seen))):
            asked = getattr(wanted[i], name) if i < len(wanted) else None
            cells.append(f"{asked or '-'} / {seen[i][name] if i < len(seen) else '-'}")
        table.add_row(name, *cells)
    console.print(table)
    scores = prompt_adherence(prompt, seen)
    console.print("agreement: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items() if v == v))


@eval_app.command("compare")
def eval_compare(
    models: Annotated[list[str], typer.Argument(help="Pipelines: teacher, student or folders, each MODEL or "
                                                     "MODEL@STEPS; the first is the reference.")],
    prompts: Annotated[int, typer.Option(help="Held-out prompts (1 to 512), the bench's set in its order.")] = 128,
    seed: Annotated[int, typer.Option(help="Prompt i is drawn with seed + i, the same for every model.")] = 1000,
    steps: Annotated[int, typer.Option(help="Sampling steps of a model given without @STEPS.")] = 25,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 5.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures to this JSON file.")] = None,
    judge: Annotated[Path | None, typer.Option(help="Judge folder (default: the bundled one).")] = None,
) -> None:
    """Paired adherence of pipelines on the same held-out prompts and seeds: each figure with its 95% bootstrap
    interval over prompts, and each model's difference to the first, so a gain above the noise is told apart."""
    from reelkit.cli.common import check_number, check_output, check_seed, load_generator
    from reelkit.data.datasets import HELDOUT_SIZE
    from reelkit.eval.bench.generate import heldout_prompts
    from reelkit.eval.compare import ATTRIBUTES, adherence_per_prompt, parse_model_spec, summarise
    from reelkit.files import write_json
    from reelkit.models.judge import load_judge

    if not 1 <= prompts <= HELDOUT_SIZE:
        raise ReelkitError(f"--prompts must lie in 1..{HELDOUT_SIZE}, got {prompts}")
    check_seed(seed)
    check_number("--guidance", guidance, 1.0, 100.0)
    if steps < 1:
        raise ReelkitError(f"--steps must be >= 1, got {steps}")
    if json_out is not None:
        check_output(json_out, (".json",))
    specs = [parse_model_spec(spec, steps) for spec in models]
    pipes = [load_generator(model) for model, _ in specs]  # every folder is checked before any generation
    reader, prompt_list = load_judge(judge), heldout_prompts(prompts)
    rows, reference = [], None
    with progress_bars() as task:
        for (model, model_steps), pipe in zip(specs, pipes, strict=True):
            scores = adherence_per_prompt(pipe, reader, prompt_list, seed, model_steps, guidance,
                                          advance=task(f"{model}@{model_steps}", prompts))
            rows.append({"model": model, "steps": model_steps, **summarise(scores, reference)})
            reference = reference or scores
    table = Table(title=f"adherence on {prompts} held-out prompts (seed {seed} + i, guidance {guidance:g}): "
                        "mean (95% interval)")
    table.add_column("model")
    for name in ATTRIBUTES:
        table.add_column(name)
    for row in rows:
        table.add_row(f"{row['model']}@{row['steps']}",
                      *(f"{row[n]['mean']:.3f} ({row[n]['low']:.2f}-{row[n]['high']:.2f})" for n in ATTRIBUTES))
        if "diff" in row["shape"]:
            table.add_row("  minus the first", *(f"{row[n]['diff']:+.3f} ({row[n]['diff_low']:+.2f} to "
                                                 f"{row[n]['diff_high']:+.2f})" for n in ATTRIBUTES))
    console.print(table)
    if json_out is not None:
        write_json(json_out, {"prompts": prompts, "seed": seed, "guidance": guidance, "rows": rows})
        console.print(f"wrote {json_out}")


@eval_app.command("ceiling")
def eval_ceiling(
    model: Annotated[str, typer.Argument(help="An image VAE or CVVAE folder, or a bundled name (image_vae_f4).")],
    clips: Annotated[int, typer.Option(help="Held-out demo clips to round-trip (1 to 512).")] = 96,
    frames: Annotated[int, typer.Option(help="Frames per clip, 1+4k.")] = 17,
    size: Annotated[int, typer.Option(help="Clip size in pixels (multiple of 8).")] = 64,
    judge: Annotated[Path | None, typer.Option(help="Judge folder (default: the bundled one).")] = None,
) -> None:
    """The judge's reading of held-out clips after a round trip through a VAE: what a generator decoding
    through it can reach at most."""
    from reelkit.conventions import round_down_frames
    from reelkit.data.datasets import HELDOUT_SIZE, heldout_seeds
    from reelkit.data.world import render_clip
    from reelkit.eval.ceiling import ceiling_figures, roundtrip_reading
    from reelkit.models.judge import load_judge
    from reelkit.vae.ops import load_any_vae, roundtrip_fn

    if not 1 <= clips <= HELDOUT_SIZE:
        raise ReelkitError(f"--clips must lie in 1..{HELDOUT_SIZE}, got {clips}")
    frames = round_down_frames(frames)
    vae = load_any_vae(model)
    videos = [render_clip(seed, frames, size) for seed in heldout_seeds(clips)]
    with progress_bars() as task:
        reading = roundtrip_reading(load_judge(judge), roundtrip_fn(vae), videos,
                                    advance=task(f"round trips through {type(vae).__name__}", clips))
    figures = ceiling_figures(reading, videos)
    console.print(f"{model}: {clips} held-out clips of {frames}x{size}px; judge "
                  + ", ".join(f"{k[6:]} {v:.3f}" for k, v in figures.items() if k.startswith("judge_"))
                  + f"; PSNR {figures['psnr_db']:.2f} dB, SSIM {figures['ssim']:.3f}")
