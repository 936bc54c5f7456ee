"""``reelkit calibrate``: fit training-free accelerators (AdaCache codebooks, Step Rehash schedules)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from reelkit.cli.app import app
from reelkit.cli.common import check_number, check_output, check_seed, console, load_generator
from reelkit.errors import ReelkitError

calibrate_app = typer.Typer(help="Calibrate training-free accelerators on a few prompts.", no_args_is_help=True)
app.add_typer(calibrate_app, name="calibrate")



@calibrate_app.command("adacache")
def calibrate_adacache(
    prompts: Annotated[Path, typer.Option("--prompts", help="Calibration prompts, one per line (a few suffice).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Codebook JSON to write.")] = Path("codebook.json"),
    target_psnr: Annotated[float, typer.Option(help="Mean PSNR (dB) the cached videos must keep against the "
                                               "uncached ones.")] = 30.0,
    model: Annotated[str | None, typer.Option(help="'teacher' (default) or a pipeline folder.")] = None,
    steps: Annotated[int, typer.Option(help="Denoising steps the codebook is for.")] = 50,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 5.0,
    frames: Annotated[int, typer.Option(help="Frame count, 1+4k.")] = 17,
    size: Annotated[int, typer.Option(help="Height and width, a multiple of 16.")] = 64,
    seed: Annotated[int, typer.Option(help="Noise seed of the first prompt (then seed + line index).")] = 0,
    moreg: Annotated[bool, typer.Option("--moreg", help="Calibrate for AdaCache with motion regularisation "
                                        "(also re-centres it on this model).")] = False,
) -> None:
    """Find the fastest AdaCache codebook that keeps --target-psnr on these prompts; use it with
    'reelkit generate --codebook'."""
    from reelkit.accel.adacache import AdaCacheConfig
    from reelkit.accel.calibrate import calibrate_ada_cache

    def check_target():
        if not 0 < target_psnr < 100:
            raise ReelkitError(f"--target-psnr must be between 0 and 100 dB, got {target_psnr:g}")

    pipe, prompt_list, settings = _calibration_inputs(prompts, output, model, steps, guidance, frames, size, seed,
                                                      min_steps=6, why="for a codebook to have room to reuse",
                                                      check=check_target)
    result = calibrate_ada_cache(pipe, prompt_list, target_psnr, settings, AdaCacheConfig(moreg=moreg),
                                 progress=lambda message: console.print(message))
    result.save(output, target_psnr=target_psnr, steps=steps, guidance=guidance, frames=frames, size=size,
                model=model or "teacher", prompts=prompt_list, moreg=moreg)
    verdict = "meets" if result.met_target else "MISSES (closest candidate kept)"
    console.print(f"wrote {output}: {result.psnr_db:.2f} dB ({verdict} {target_psnr:g} dB), "
                  f"{result.computed_fraction:.0%} of steps computed; "
                  f"use it with: reelkit generate ... --codebook {output}")


@calibrate_app.command("rehash")
def calibrate_rehash(
    prompts: Annotated[Path, typer.Option("--prompts", help="Calibration prompts, one per line (a few suffice).")],
    budget: Annotated[int, typer.Option(help="Full (key) steps to place, 1 to --steps.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Schedule JSON to write.")] = Path("rehash.json"),
    model: Annotated[str | None, typer.Option(help="'teacher' (default) or a pipeline folder.")] = None,
    steps: Annotated[int, typer.Option(help="Denoising steps the schedule is measured on.")] = 50,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 5.0,
    frames: Annotated[int, typer.Option(help="Frame count, 1+4k.")] = 17,
    size: Annotated[int, typer.Option(help="Height and width, a multiple of 16.")] = 64,
    seed: Annotated[int, typer.Option(help="Noise seed of the first prompt (then seed + line index).")] = 0,
) -> None:
    """Search Step Rehash key steps on these prompts (the deep features' step-to-step similarity); use the
    schedule with 'reelkit generate --rehash K --rehash-schedule FILE' (any K, any step count)."""
    from reelkit.accel.step_rehash import StepRehashError, calibrate_step_rehash

    def check_budget():
        if not 1 <= budget <= steps:
            raise StepRehashError(f"--budget must be between 1 and the number of steps ({steps}), got {budget}")

    pipe, prompt_list, settings = _calibration_inputs(prompts, output, model, steps, guidance, frames, size, seed,
                                                      min_steps=2, why="for rehash steps to exist",
                                                      check=check_budget)
    say = lambda message: console.print(message, highlight=False)  # noqa: E731
    result = calibrate_step_rehash(pipe, prompt_list, budget, settings, progress=say)
    result.save(output, guidance=guidance, frames=frames, size=size, seed=seed, model=model or "teacher",
                prompts=prompt_list)
    say(f"wrote {output}: key steps {', '.join(map(str, result.key_steps))} ({budget} of {steps}); on these "
        f"prompts {result.psnr_db:.2f} dB vs {result.uniform_psnr_db:.2f} dB with uniform key steps; use it with: "
        f"reelkit generate ... --rehash K --rehash-schedule {output}")


def _calibration_inputs(prompts: Path, output: Path, model: str | None, steps: int, guidance: float, frames: int,
                        size: int, seed: int, min_steps: int, why: str, check: Callable[[], None]):
    """Check a calibrate command's options, cheap checks first (``check`` for the command's own); return the
    pipeline, the prompts and the generation settings."""
    from reelkit.conventions import is_valid_frame_count
    from reelkit.generation import GenerationSettings, read_prompts

    prompt_list = read_prompts(prompts)
    if not is_valid_frame_count(frames):
        raise ReelkitError(f"--frames {frames} is not 1+4k (1, 5, 9, 13, 17, ...)")
    if steps < min_steps:
        raise ReelkitError(f"--steps must be at least {min_steps} {why}, got {steps}")
    check()
    check_number("--guidance", guidance, 1.0, 100.0, "1 turns guidance off")
    check_seed(seed)
    check_output(output, (".json",), prompts, Path(model) if model else None)
    if not output.parent.is_dir():
        raise ReelkitError(f"{output.parent}: no such folder for the output")
    pipe = load_generator(model, default="teacher")  # caches pay off over many steps: the teacher
    prompt_list, _ = pipe.check_inputs(prompt_list, None, frames, size, size, steps, guidance, "pt")
    return pipe, prompt_list, GenerationSettings(steps=steps, guidance=guidance, seed=seed, frames=frames, size=size)
