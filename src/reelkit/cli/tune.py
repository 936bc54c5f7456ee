"""``reelkit tune``: search steps, guidance and accelerators for the fastest mix that meets the targets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from reelkit.cli.app import app
from reelkit.cli.common import check_number, check_output, check_seed, console, load_generator, progress_bars
from reelkit.errors import ReelkitError

HELDOUT_PROMPTS = 8


@app.command()
def tune(
    prompts: Annotated[Path, typer.Option("--prompts", help="Search prompts, one per line.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Recipe JSON to write.")] = Path("recipe.json"),
    model: Annotated[str, typer.Option(help="Models to search: teacher, student, both comma-separated, or a "
                                       "pipeline folder.")] = "teacher,student",
    target_psnr: Annotated[float, typer.Option(help="Mean PSNR (dB) against the reference clips.")] = 30.0,
    reference: Annotated[str, typer.Option(help="The clips to match: MODEL@STEPS.")] = "teacher@50",
    target_adherence: Annotated[float | None, typer.Option(help="Also keep the judge's mean adherence (0..1).")
                                ] = None,
    max_memory: Annotated[str | None, typer.Option(help="Peak memory budget, e.g. 4GiB; Feature Slicing and VAE "
                                                   "chunking are added where a candidate needs them.")] = None,
    heldout: Annotated[Path | None, typer.Option(help="Held-out prompts for the final check (default: the demo "
                                                 "world's held-out prompts).")] = None,
    steps: Annotated[str, typer.Option(help="Step counts to try on many-step models, comma-separated (the "
                                       "student tries 2, 4 and 8).")] = "50,40,30,25,20,15",
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 5.0,
    frames: Annotated[int, typer.Option(help="Frame count, 1+4k.")] = 17,
    size: Annotated[int, typer.Option(help="Height and width, a multiple of 16.")] = 64,
    seed: Annotated[int, typer.Option(help="Noise seed of the first prompt (then seed + line index).")] = 0,
) -> None:
    """Find the fastest way to generate that keeps --target-psnr (and --target-adherence, --max-memory) against
    the reference; writes a recipe for 'reelkit generate --recipe'. An interrupted search resumes."""
    from reelkit.accel.slicing import parse_bytes
    from reelkit.conventions import check_size, check_video_fits, is_valid_frame_count
    from reelkit.eval.tune import Tuner, TuneSettings, candidates, check_targets
    from reelkit.generation import read_prompts

    if not is_valid_frame_count(frames):
        raise ReelkitError(f"--frames {frames} is not 1+4k (1, 5, 9, 13, 17, ...)")
    check_video_fits(frames, check_size(size), size)
    check_number("--guidance", guidance, 1.0, 100.0)
    check_seed(seed)
    ref_model, _, ref_steps = reference.partition("@")
    if not ref_model or not ref_steps.isdigit() or int(ref_steps) < 1:
        raise ReelkitError(f"--reference takes MODEL@STEPS such as teacher@50, got {reference!r}")
    settings = TuneSettings(frames, size, seed, target_psnr, target_adherence,
                            parse_bytes(max_memory) if max_memory else None)
    check_targets(settings)
    check_output(output, (".json",), prompts, heldout)
    prompt_list = read_prompts(prompts)
    if heldout is not None:
        heldout_list = read_prompts(heldout)
    else:
        from reelkit.eval.bench.harness import heldout_prompts

        pool, _ = heldout_prompts(HELDOUT_PROMPTS + len(prompt_list))
        heldout_list = [p for p in pool if p not in prompt_list][:HELDOUT_PROMPTS]
    models = [m.strip() for m in model.split(",") if m.strip()]
    judge = None
    if target_adherence is not None:
        from reelkit.models.judge import load_judge

        judge = load_judge()
    try:
        steps_choices = sorted({int(n) for n in steps.split(",") if n.strip()}, reverse=True)
    except ValueError:
        raise ReelkitError(f"--steps takes step counts such as 50,30,20, got {steps!r}") from None
    if not steps_choices or min(steps_choices) < 1:
        raise ReelkitError(f"--steps takes step counts >= 1, got {steps!r}")
    space = candidates(models, guidance, steps_choices)
    state = output.with_name(output.name + ".state")
    console.print(f"tuning {len(space)} candidates on {len(prompt_list)} prompts against {reference} "
                  f"(state: {state}; rerun to resume)")
    tuner = Tuner(load_generator, settings, (ref_model, int(ref_steps)), guidance, judge, state,
                  progress=lambda message: console.print(message, highlight=False))
    for name in {*models, ref_model}:
        tuner.pipe(name)  # a bad model name fails before any measurement
    with progress_bars() as task:
        recipe = tuner.search(space, prompt_list, heldout_list, advance=task("candidates", len(space)))
    from reelkit.eval.bench.harness import machine_info

    recipe.machine = machine_info("cpu")
    recipe.save(output)
    search, held = recipe.measured["search"], recipe.measured["heldout"]
    console.print(f"wrote {output}: {recipe.describe()}; search {search['psnr_db']:.1f} dB, "
                  f"{search['speedup']:.2f}x vs {reference}; held-out {held['psnr_db']:.1f} dB, "
                  f"{held['speedup']:.2f}x")
    if recipe.measured.get("speedup_vs_best_single"):
        console.print(f"finalists re-timed in alternation: {recipe.measured['speedup_vs_best_single']:.2f}x faster "
                      f"than the fastest single technique meeting the targets", highlight=False)
    if not held["meets_targets"]:
        from reelkit.cli.common import err_console

        err_console.print(f"warning: on the {held['prompts']} held-out prompts the recipe misses the targets "
                          f"({held['psnr_db']:.1f} dB); tune on more prompts", highlight=False)
