"""``reelkit generate``: text to video with any accelerator, one prompt or a batch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from reelkit.cli.app import app
from reelkit.cli.common import check_number, check_output, check_seed, console, load_generator, progress_bars
from reelkit.errors import ReelkitError

FEW_STEPS = 4  # a consistency student's default step count (T2V-Turbo)


@app.command()
def generate(
    prompt: Annotated[str | None, typer.Argument(help="What to show, in the model's vocabulary.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output .mp4, .gif or .webm.")] = Path("video.mp4"),
    prompts: Annotated[Path | None, typer.Option("--prompts", help="Batch mode: a file with one prompt per line."
                                                 )] = None,
    out_dir: Annotated[Path | None, typer.Option("--out-dir", help="Batch mode: folder for one mp4 per prompt; "
                                                 "existing ones are skipped.")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps (default: 4 for a distilled student, 50 for "
                                              "the teacher).")] = None,
    guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance scale (1 = off; a distilled "
                                                   "student takes it as an input; default 5).")] = None,
    seed: Annotated[int, typer.Option(help="Noise seed (batch mode: seed + line index).")] = 0,
    frames: Annotated[int, typer.Option(help="Frame count, 1+4k.")] = 17,
    size: Annotated[int, typer.Option(help="Height and width, a multiple of 16.")] = 64,
    model: Annotated[str | None, typer.Option(help="'student' (default: the 4-step T2V-Turbo student; the "
                                              "teacher with --cache/--rehash), 'teacher' (50 steps with "
                                              "guidance) or a pipeline folder.")] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="Steer away from this (default: empty).")] = None,
    fps: Annotated[float, typer.Option(help="Frame rate of the written files.")] = 8.0,
    sheet: Annotated[Path | None, typer.Option(help="Also save a contact-sheet PNG here (single prompt).")] = None,
    cache: Annotated[str | None, typer.Option(help="Training-free caching: adacache, adacache-fast or "
                                              "adacache-slow.")] = None,
    moreg: Annotated[bool, typer.Option("--moreg", help="AdaCache: motion regularisation.")] = False,
    codebook: Annotated[Path | None, typer.Option(help="AdaCache: a codebook from 'reelkit calibrate adacache' "
                                                  "(implies --cache adacache).")] = None,
    rehash: Annotated[int | None, typer.Option(help="Step Rehash: run the full model on K key steps only and "
                                               "reuse its deep features on the others.")] = None,
    rehash_schedule: Annotated[Path | None, typer.Option(help="Step Rehash: key steps from 'reelkit calibrate "
                                                         "rehash' (default: the teacher's bundled profile).")] = None,
    slice_: Annotated[str | None, typer.Option("--slice", help="Feature Slicing (exact, lower peak memory): N "
                                               "chunks, a budget such as 2GiB, or auto (fit the free memory).")
                      ] = None,
    guidance_interval: Annotated[float | None, typer.Option(help="Classifier-free guidance only at noise levels "
                                                            "above this one (0..1); the later steps make one "
                                                            "call instead of two.")] = None,
    guidance_reuse: Annotated[float | None, typer.Option(help="Below this noise level (0..1) every other step, "
                                                         "and every Step Rehash rehash step, reuses the last "
                                                         "guidance difference: one call instead of two.")] = None,
    vae_chunk_frames: Annotated[int | None, typer.Option(help="Decode in temporal chunks of this many new frames "
                                                         "(a multiple of 4): a lower decode peak, approximate "
                                                         "at chunk borders.")] = None,
    vae_tile: Annotated[int | None, typer.Option(help="Decode in blended spatial tiles of this many pixels (with "
                                                 "--vae-chunk-frames, or 16-frame chunks).")] = None,
    recipe: Annotated[Path | None, typer.Option(help="A recipe from 'reelkit tune': its model, steps, guidance "
                                                "and accelerators.")] = None,
    parallel: Annotated[str | None, typer.Option(help="Context parallelism: ulysses=N or ring=N splits each "
                                                 "video's tokens over N processes (torchrun --nproc_per_node N "
                                                 "-m reelkit generate ...); batch mode gives each group of N "
                                                 "its own prompts.")] = None,
) -> None:
    """Generate a video from a prompt (or one per line of --prompts) with the text-to-video model."""

    from reelkit.conventions import is_valid_frame_count
    from reelkit.data.video_io import WRITERS, contact_sheet, write_video
    from reelkit.generation import GenerationSettings, generate_batch, generate_video, process_shard, read_prompts

    batch = prompts is not None or out_dir is not None
    if batch and (prompts is None or out_dir is None or prompt is not None):
        raise ReelkitError("batch mode takes --prompts FILE and --out-dir DIR, and no PROMPT")
    if not batch and prompt is None:
        raise ReelkitError("give a PROMPT (or --prompts FILE --out-dir DIR)")
    if not is_valid_frame_count(frames):
        raise ReelkitError(f"--frames {frames} is not 1+4k (1, 5, 9, 13, 17, ...)")
    if steps is not None and steps < 1:
        raise ReelkitError(f"--steps must be at least 1, got {steps}")
    from reelkit.accel.options import AccelerationOptions

    loaded_recipe = None
    options = AccelerationOptions(cache, codebook, moreg, rehash, rehash_schedule, slice_, guidance_interval,
                                  guidance_reuse, vae_chunk_frames, vae_tile)
    if recipe is not None:
        from reelkit.accel.recipe import load_recipe

        if options != AccelerationOptions() or steps or guidance:
            raise ReelkitError("--recipe sets the steps, guidance and accelerators; give it alone (or drop it)")
        loaded_recipe = load_recipe(recipe)
        steps, guidance, model = loaded_recipe.steps, loaded_recipe.guidance, model or loaded_recipe.model
        options = loaded_recipe.options()
    guidance = 5.0 if guidance is None else guidance
    check_number("--guidance", guidance, 1.0, 100.0, "1 turns guidance off")
    check_number("--fps", fps, 0.1, 1000.0)
    check_seed(seed)
    from reelkit.conventions import check_size, check_video_fits

    check_video_fits(frames, check_size(size), size)
    if parallel is not None:
        from reelkit.parallel import ParallelError, launched_processes, parse_parallel

        parallel_setting = parse_parallel(parallel)
        if launched_processes() <= 1:
            raise ParallelError(f"--parallel {parallel} needs several processes: launch with torchrun "
                                f"--nproc_per_node {parallel_setting[1]} -m reelkit generate ...")
        if options.slicing is not None and not options.slicing.strip().isdigit():
            raise ParallelError(f"--slice {options.slicing} plans chunks from each process's own memory; under "
                                "--parallel give a chunk count (--slice 8), so every rank slices alike")
        if not batch and launched_processes() != parallel_setting[1]:
            raise ParallelError(f"one prompt runs on one group of {parallel_setting[1]} processes, not "
                                f"{launched_processes()}: launch --nproc_per_node {parallel_setting[1]}, or "
                                "give --prompts to share a batch between groups")
    if batch:
        prompt_list = read_prompts(prompts)
        if out_dir.exists() and not out_dir.is_dir():
            raise ReelkitError(f"{out_dir}: exists and is not a folder")
        if sheet is not None:
            raise ReelkitError("--sheet saves one prompt's contact sheet; batch mode (--prompts) takes no --sheet")
    else:
        inputs = (Path(model) if model else None, codebook, rehash_schedule)
        check_output(output, WRITERS, *inputs)
        if not output.parent.is_dir():
            raise ReelkitError(f"{output.parent}: no such folder for the output")
        if sheet is not None:
            check_output(sheet, (".png",), output, *inputs)
    from reelkit.accel.options import (
        ada_cache_config,
        apply_acceleration,
        check_guidance_interval,
        check_guidance_reuse,
        computed_and_reused,
        describe_chunking,
        vae_chunking_config,
    )
    from reelkit.accel.slicing import slicing_config_from_option

    ada_cache_config(options.cache, options.moreg, options.codebook)  # option mistakes fail before the model loads
    if options.guidance_interval is not None:
        check_guidance_interval(options.guidance_interval)
    if options.guidance_reuse is not None:
        check_guidance_reuse(options.guidance_reuse)
    slicing_config_from_option(options.slicing)
    vae_chunking_config(options.vae_chunk_frames, options.vae_tile)
    caching = bool(options.cache or options.codebook or options.rehash or options.rehash_schedule)
    # the caches pay off over many steps: without --model they run on the teacher
    pipe = load_generator(model, default="teacher" if caching else "student")
    group_rank = group_size = None
    writer = True  # the one process of a context-parallel group that writes files and prints
    if parallel is not None:
        from reelkit.parallel import enable_context_parallel

        mesh = enable_context_parallel(pipe.transformer, *parallel_setting)
        group_rank, group_size = mesh["dp"].get_local_rank(), mesh["dp"].size()
        writer = not any(mesh.get_coordinate()[1:])  # rank 0 of its group
        console.quiet = not writer
    steps = steps or (FEW_STEPS if pipe.consistency_sampling else 50)
    settings = GenerationSettings(steps, guidance, seed, frames, size, negative_prompt, fps)
    if loaded_recipe is not None:
        from reelkit.accel.recipe import check_recipe_model

        check_recipe_model(pipe, loaded_recipe)
        console.print(f"recipe {recipe}: {loaded_recipe.describe()}", highlight=False)
    applied = apply_acceleration(pipe, options, steps, bundled_teacher=model in (None, "teacher"))
    cache_config, rehash_config, slicing_config = applied.cache, applied.rehash, applied.slicing
    if batch:
        rank, world_size = process_shard() if group_rank is None else (group_rank, group_size)
        mine = len(range(rank, len(prompt_list), world_size))
        totals = [0, 0]

        def on_clip(path):
            advance()
            if cache_config is not None:
                computed, reused = computed_and_reused(pipe)
                totals[0], totals[1] = totals[0] + computed, totals[1] + reused

        with progress_bars() as task:
            advance = task(f"process {rank}/{world_size}: clips", mine)
            written = generate_batch(pipe, prompt_list, out_dir, settings, rank, world_size, on_clip=on_clip,
                                     write=writer)
        console.print(f"process {rank}/{world_size}: wrote {len(written)} clip(s) to {out_dir}, "
                      f"skipped {mine - len(written)} already there")
        if cache_config is not None and written:
            console.print(f"adacache: {totals[0]} denoiser calls computed, {totals[1]} reused over "
                          f"{len(written)} clip(s)")
        if rehash_config is not None and written:
            from reelkit.accel.step_rehash import format_stats as rehash_stats_line
            from reelkit.accel.step_rehash import step_rehash_stats

            console.print(rehash_stats_line(step_rehash_stats(pipe.transformer)), highlight=False)
        return
    (prompt,), settings.negative_prompt = pipe.check_inputs(prompt, negative_prompt, frames, size, size, steps,
                                                            guidance, "pt")
    started = time.perf_counter()
    with progress_bars() as task:
        video = generate_video(pipe, prompt, settings, on_step=task("denoising", steps))
    elapsed = time.perf_counter() - started
    if not writer:
        return
    write_video(video, output, fps=fps)
    if sheet is not None:
        contact_sheet(video, sheet)
    console.print(f"wrote {output} ({frames} frames, {size}x{size}, {steps} steps, guidance {guidance:g}, "
                  f"seed {seed}) in {elapsed:.1f} s")
    if cache_config is not None:
        from reelkit.accel.adacache import ada_cache_stats, format_stats

        console.print(f"adacache: {format_stats(ada_cache_stats(pipe.transformer))}")
    if rehash_config is not None:
        from reelkit.accel.step_rehash import format_stats as rehash_stats_line
        from reelkit.accel.step_rehash import step_rehash_stats

        console.print(rehash_stats_line(step_rehash_stats(pipe.transformer)), highlight=False)
    if slicing_config is not None:
        from reelkit.accel.slicing import feature_slicing_chunks

        chunks = feature_slicing_chunks(pipe.transformer)
        console.print(f"feature slicing: {chunks[0]} frame chunks, {chunks[1]} spatial chunks", highlight=False)
    if (chunking := applied.chunking) is not None:
        console.print(f"vae: {describe_chunking(chunking.frames_per_chunk, chunking.tile_size)}", highlight=False)
    if applied.guidance_reuse is not None:
        reused = pipe.guidance_reused_steps
        console.print(f"guidance reuse: {len(reused)} of {steps} steps reused the guidance difference "
                      f"(one transformer call instead of two)", highlight=False)
