"""The studio's page: text to video with any accelerator, and a compare switch that runs the plain model on
the same seed beside it (latency, speedup, PSNR / SSIM against the plain clip, computed / reused steps, and the
judge's reading of each clip against the prompt); the committed benchmark tables and plots.

Safe by default: it binds to 127.0.0.1; the page takes uploads only (a codebook file), never a server path;
each browser session writes into its own temporary folder, removed when the session ends; one generation
runs at a time through Gradio's queue, whose bounded length turns extra requests away with a busy message.
Every user mistake (unknown words, wrong sizes, a file that is not a codebook) shows as a message in the page,
and the app keeps serving.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from reelkit.errors import ReelkitError
from reelkit.studio import tasks

MODELS = ("teacher", "student")
CACHES = ("off", "adacache-fast", "adacache-slow")
MAX_UPLOAD = "32mb"  # images, short clips and codebooks; larger uploads are refused by the server
BENCH_DIR = Path(__file__).resolve().parents[3] / "docs" / "bench"


@dataclass
class Clip:
    video: torch.Tensor  # (C, T, H, W) in [-1, 1]
    seconds: float
    steps: tuple[int, int] | None  # computed, reused denoiser calls (a cache), else None


class Generator:
    """The pipelines (loaded once each) and the one lock that keeps generations one at a time."""

    def __init__(self, default_model: str | None = None):
        self.default_model = default_model
        self.pipes: dict[str, object] = {}
        self.lock = threading.Lock()

    def pipe(self, name: str):
        from reelkit.pipelines.text_to_video import load_text_to_video

        name = name or self.default_model or "teacher"
        if name not in self.pipes:
            pipe = load_text_to_video(name)
            pipe.set_progress_bar_config(disable=True)
            self.pipes[name] = pipe
        return self.pipes[name]

    def run(self, pipe, prompt: str, negative: str | None, steps: int, guidance: float, seed: int, frames: int,
            size: int, options, on_step) -> Clip:
        from reelkit.accel.options import apply_acceleration, computed_and_reused, remove_acceleration

        def callback(pipeline, step, timestep, tensors):
            on_step(step + 1)
            return tensors

        apply_acceleration(pipe, options, steps, bundled_teacher=pipe is self.pipes.get("teacher"))
        try:
            started = time.perf_counter()
            video = pipe(prompt, negative_prompt=negative or None, num_frames=frames, height=size, width=size,
                         num_inference_steps=steps, guidance_scale=guidance,
                         generator=torch.Generator().manual_seed(seed), callback_on_step_end=callback).frames[0]
            return Clip(video, time.perf_counter() - started, computed_and_reused(pipe))
        finally:
            remove_acceleration(pipe)


@functools.cache
def _judge():
    """The bundled judge, loaded once per process (each compare reads two clips)."""
    from reelkit.models.judge import load_judge

    return load_judge()


def _judge_reading(prompt: str, video: torch.Tensor) -> dict[str, float]:
    from reelkit.eval.adherence import judge_clips, prompt_adherence

    seen, _ = judge_clips(_judge(), video[None])
    return prompt_adherence(prompt, seen[0])


def _figures(prompt: str, fast: Clip, plain: Clip | None) -> str:
    """The figures as a Markdown table (accelerated clip, and the plain one when compared)."""
    from reelkit.metrics import video_psnr, video_ssim

    rows = [("accelerated" if plain is not None else "clip", fast)] + ([("plain", plain)] if plain else [])
    lines = ["| clip | latency (s) | computed / reused calls | judge: shape | colour | motion | count |",
             "|---|---|---|---|---|---|---|"]
    for name, clip in rows:
        reading = _judge_reading(prompt, clip.video)
        calls = f"{clip.steps[0]} / {clip.steps[1]}" if clip.steps else "all computed"
        lines.append(f"| {name} | {clip.seconds:.2f} | {calls} | " + " | ".join(
            "-" if math.isnan(reading[k]) else f"{reading[k]:.2f}" for k in ("shape", "color", "motion", "count"))
            + " |")
    if plain is not None:
        psnr, ssim = video_psnr(fast.video, plain.video), video_ssim(fast.video, plain.video)
        quality = "identical clips" if math.isinf(psnr) else f"PSNR {psnr:.2f} dB, SSIM {ssim:.4f}"
        lines.append(f"\n**speedup {plain.seconds / fast.seconds:.2f}x**, {quality} (accelerated against plain, "
                     "same seed)")
    return "\n".join(lines)


def _session_folder(root: Path, folder: str | None) -> Path:
    """The browser session's own folder (made on its first clip; ``_remove_folder`` deletes it with the session)."""
    path = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="session-", dir=root))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _remove_folder(folder: str | None) -> None:
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def _write(video: torch.Tensor, folder: Path, name: str) -> str:
    from reelkit.data.video_io import write_video

    path = folder / f"{name}_{time.time_ns()}.mp4"
    write_video(video, path, fps=8.0)
    return str(path)


def _vocabulary() -> str:
    from reelkit.data.captions import vocabulary_groups

    lines = [f"**{title}**: {words}" for title, words in vocabulary_groups()]
    lines.append("Size and speed words (small, big, fast, slowly, ...) are accepted and ignored: every object has one "
                 "size and one speed. Up to two objects, joined by *and*.")
    return "\n\n".join(lines)


def _bench_tables() -> list[tuple[str, list[str], list[list]]]:
    """(suite, columns, rows) of every committed bench report."""
    tables = []
    for path in sorted(BENCH_DIR.glob("*.json")) if BENCH_DIR.is_dir() else []:
        try:
            report = json.loads(path.read_text())
            rows = report["rows"]
        except (ValueError, KeyError, TypeError):
            continue
        columns = list(dict.fromkeys(k for row in rows for k in row))
        tables.append((path.stem, columns, [[row.get(c, "") for c in columns] for row in rows]))
    return tables


def build_app(model: str | None = None, max_queue: int = 4, root: str | Path | None = None):
    """The studio as a ``gradio.Blocks``; ``model`` is the default pipeline (``teacher``, ``student`` or a
    folder), ``max_queue`` the requests waiting past the running one, ``root`` where sessions write."""
    import gradio as gr

    from reelkit.accel.options import AccelerationOptions

    generator = Generator(model)
    models = tasks.Models(generator.lock)  # one lock: one generation at a time, whatever the tab
    root = Path(root or tempfile.mkdtemp(prefix="reelkit-studio-"))
    choices = list(MODELS) + ([str(model)] if model and model not in MODELS else [])

    def generate(prompt, negative, model_name, steps, guidance, seed, frames, size, cache, codebook, moreg,
                 rehash, slicing, compare, recipe, folder, progress=gr.Progress()):  # noqa: B008 (gradio)
        try:
            options = AccelerationOptions(cache=None if cache == "off" else cache, codebook=codebook, moreg=bool(moreg),
                                          rehash=int(rehash) or None, slicing="auto" if slicing else None)
            if options.codebook and options.cache is None:
                options.cache = "adacache"
            tuned = None
            if recipe:  # a recipe from reelkit tune replaces the steps, guidance and accelerators
                from reelkit.accel.recipe import load_recipe

                tuned = load_recipe(recipe)
                steps, guidance, options = tuned.steps, tuned.guidance, tuned.options()
            with generator.lock:
                pipe = generator.pipe(model_name)
                if tuned is not None:
                    from reelkit.accel.recipe import check_recipe_model

                    check_recipe_model(pipe, tuned)
                steps, seed, frames, size = int(steps), int(seed), int(frames), int(size)
                pipe.check_inputs(prompt, negative or None, frames, size, size, steps, float(guidance), "pt")
                total = steps * (2 if compare else 1)

                def tick(offset):
                    return lambda step: progress((offset + step) / total, desc="denoising")

                plain = None
                if compare:
                    plain = generator.run(pipe, prompt, negative, steps, guidance, seed, frames, size,
                                          AccelerationOptions(), tick(0))
                fast = generator.run(pipe, prompt, negative, steps, guidance, seed, frames, size, options,
                                     tick(steps if compare else 0))
            path = _session_folder(root, folder)
            return (_write(fast.video, path, "accelerated" if compare else "clip"),
                    _write(plain.video, path, "plain") if plain is not None else None,
                    _figures(prompt, fast, plain), "", str(path))
        except (ReelkitError, ValueError, OSError) as error:  # a mistake in the page: say it there, keep serving
            message = " ".join(str(error).split())
            return None, None, "", f"**error:** {message}", folder

    with gr.Blocks(title="reelkit studio", delete_cache=(600, 3600)) as app:
        session = gr.State(None, delete_callback=_remove_folder)  # this browser session's output folder
        gr.Markdown("# reelkit studio\nText to video in the demo world, with the training-free accelerators; "
                    "**compare** runs the plain model on the same seed beside the accelerated one.")
        with gr.Tab("Text to video"):
            with gr.Row():
                with gr.Column(scale=2):
                    prompt = gr.Textbox(label="Prompt", value="a red circle moving right and a yellow star spinning",
                                        elem_id="prompt")
                    negative = gr.Textbox(label="Negative prompt", value="")
                    with gr.Row():
                        model_name = gr.Dropdown(choices, value=model or "teacher", label="Model")
                        steps = gr.Slider(1, 100, value=50, step=1, label="Steps", elem_id="steps")
                        guidance = gr.Slider(1, 20, value=5.0, step=0.5, label="Guidance")
                    with gr.Row():
                        seed = gr.Number(value=0, precision=0, label="Seed")
                        frames = gr.Number(value=17, precision=0, label="Frames (1 + 4k)", minimum=1, maximum=129)
                        size = gr.Number(value=64, precision=0, label="Size (px, a multiple of 16)", minimum=16,
                                         maximum=512)
                    with gr.Accordion("Accelerators", open=True):
                        with gr.Row():
                            cache = gr.Dropdown(list(CACHES), value="off", label="AdaCache")
                            moreg = gr.Checkbox(label="MoReg")
                            rehash = gr.Slider(0, 50, value=0, step=1, label="Step Rehash full steps (0: off)")
                            slicing = gr.Checkbox(label="Feature Slicing")
                        codebook = gr.File(label="AdaCache codebook (JSON upload)", file_types=[".json"],
                                           type="filepath", height=90)
                        recipe = gr.File(label="Recipe from reelkit tune (JSON upload; sets steps, guidance and "
                                         "accelerators)", file_types=[".json"], type="filepath", height=90)
                    compare = gr.Checkbox(label="Compare with the plain model", value=True, elem_id="compare")
                    button = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Column(scale=1):
                    gr.Markdown(_vocabulary())
            error = gr.Markdown(elem_id="error")
            with gr.Row():
                fast_video = gr.Video(label="Accelerated", elem_id="accelerated", autoplay=True, loop=True, height=320)
                plain_video = gr.Video(label="Plain (same seed)", elem_id="plain", autoplay=True, loop=True, height=320)
            figures = gr.Markdown(elem_id="figures")
            button.click(generate, [prompt, negative, model_name, steps, guidance, seed, frames, size, cache, codebook,
                                    moreg, rehash, slicing, compare, recipe, session],
                         [fast_video, plain_video, figures, error, session],
                         api_name="generate", concurrency_limit=1)
        with gr.Tab("MarDini"):
            gr.Markdown("Interpolate between two images, animate one, or extend a video (MarDini: a planner at low "
                        "resolution, a light generator at full resolution). Uploads only; videos are read to "
                        f"{tasks.MAX_FRAMES} frames at most.")
            with gr.Row():
                task = gr.Radio(["interpolate", "animate", "extend"], value="interpolate", label="Task")
                m_frames = gr.Number(value=17, precision=0, label="Frames (1 + 4k)")
                m_steps = gr.Number(value=25, precision=0, label="Steps")
                m_seed = gr.Number(value=0, precision=0, label="Seed")
                m_size = gr.Dropdown(list(tasks.SIZES), value=64, label="Size")
                m_add = gr.Number(value=8, precision=0, label="Frames to add (extend)")
            with gr.Row():
                first = gr.Image(type="filepath", label="First frame / image", elem_id="first")
                last = gr.Image(type="filepath", label="Last frame (interpolate)", elem_id="last")
                m_video = gr.Video(label="Video to extend", elem_id="to_extend")
            m_button = gr.Button("Run MarDini", variant="primary", elem_id="mardini")
            m_error = gr.Markdown(elem_id="mardini_error")
            m_out = gr.Video(label="MarDini", elem_id="mardini_out", autoplay=True, loop=True, height=320)
            m_note = gr.Markdown()

            def run_mardini(task, first, last, video, frames, steps, seed, size, add, folder):
                try:
                    clip, note = tasks.mardini_task(models, task, first, last, video, frames, steps, seed, size, add)
                    path = _session_folder(root, folder)
                    return _write(clip, path, "mardini"), note, "", str(path)
                except (ReelkitError, ValueError, OSError) as error:
                    return None, "", f"**error:** {' '.join(str(error).split())}", folder

            m_button.click(run_mardini, [task, first, last, m_video, m_frames, m_steps, m_seed, m_size, m_add, session],
                           [m_out, m_note, m_error, session], api_name="mardini", concurrency_limit=1)
        with gr.Tab("CV-VAE"):
            gr.Markdown("Reconstruct a video with a CV-VAE: the round trip side by side with the input, and its "
                        "PSNR / SSIM.")
            with gr.Row():
                r_video = gr.Video(label="Video", elem_id="to_reconstruct")
                with gr.Column():
                    r_vae = gr.Dropdown(["cvvae_f4", "cvvae"], value="cvvae_f4", label="CV-VAE")
                    r_size = gr.Dropdown(list(tasks.SIZES), value=64, label="Size")
                    r_button = gr.Button("Reconstruct", variant="primary", elem_id="reconstruct")
            r_error = gr.Markdown(elem_id="reconstruct_error")
            r_out = gr.Video(label="Input | reconstruction", elem_id="reconstruction", autoplay=True, loop=True,
                             height=320)
            r_note = gr.Markdown(elem_id="reconstruct_figures")

            def run_reconstruct(video, vae_name, size, folder):
                try:
                    clip, note = tasks.reconstruct_task(models, video, size, vae_name)
                    path = _session_folder(root, folder)
                    return _write(clip, path, "reconstruction"), note, "", str(path)
                except (ReelkitError, ValueError, OSError) as error:
                    return None, "", f"**error:** {' '.join(str(error).split())}", folder

            r_button.click(run_reconstruct, [r_video, r_vae, r_size, session], [r_out, r_note, r_error, session],
                           api_name="reconstruct", concurrency_limit=1)
        with gr.Tab("Benchmarks"):
            tables = _bench_tables()
            if not tables:
                gr.Markdown(f"No committed bench reports found in {BENCH_DIR}.")
            for suite, columns, rows in tables:
                gr.Markdown(f"### `reelkit bench {suite}`")
                gr.Dataframe(value=rows, headers=columns, interactive=False, wrap=True)
            plots = sorted(BENCH_DIR.glob("*.png")) if BENCH_DIR.is_dir() else []
            if plots:
                gr.Gallery([str(p) for p in plots], label="Plots", columns=3)

    app.queue(default_concurrency_limit=1, max_size=max_queue)
    app.reelkit_root = root
    return app


def launch(host: str = "127.0.0.1", port: int = 7860, model: str | None = None, block: bool = True, max_queue: int = 4):
    """Serve the studio; ``block=False`` returns ``(app, url)`` with the server running in the background."""
    app = build_app(model, max_queue)
    allowed = [str(BENCH_DIR)] if BENCH_DIR.is_dir() else []
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, max_file_size=MAX_UPLOAD,
               allowed_paths=allowed, show_error=False, quiet=True)
    return app, f"http://{host}:{port}"


__all__ = ["build_app", "launch"]
