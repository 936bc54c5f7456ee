"""``reelkit tune``: the fastest mix of steps, guidance and accelerators that keeps a quality (and memory) target.

Every candidate is measured by real generations on the user's prompts against a reference (by default the
teacher at 50 steps, same seeds): median seconds a clip, mean PSNR against the reference clips, optionally the
judge's adherence and the peak memory. The fastest candidate that meets every target wins; it is measured again
on held-out prompts that the search never saw, and both figures go into the :class:`~reelkit.accel.recipe.Recipe`.
Measurements are kept in a state file beside the recipe as they are made, so an interrupted search resumes.

>>> from reelkit.eval.tune import candidates
>>> [c.key() for c in candidates(["student"])][:2]
['student/2/g5', 'student/4/g5']
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from reelkit.accel.options import AccelerationOptions, apply_acceleration, remove_acceleration
from reelkit.accel.recipe import Recipe, codebook_from_dict, model_fingerprint
from reelkit.errors import ReelkitError
from reelkit.files import atomic_path
from reelkit.metrics import video_psnr

TEACHER_STEPS = (50, 40, 30, 25, 20, 15)
STUDENT_STEPS = (2, 4, 8)
REHASH_FRACTIONS = (0.2, 0.3, 0.4, 0.5)  # Step Rehash budgets: these shares of the steps run the full model
SLICE_CHUNKS = ("2", "4", "8")
GUIDANCE_INTERVALS = (0.2, 0.4)  # classifier-free guidance only above these noise levels (one call a step below)
GUIDANCE_REUSE = (0.5, 0.7)  # below these noise levels every other step (and every rehash step) reuses guidance
CALIBRATED = "adacache-calibrated"  # AdaCache with a codebook fitted on the search prompts against the reference
CALIBRATION_MIN_STEPS = 5  # AdaCache computes its first and last 2 steps: calibration needs steps in between
MAX_PSNR = 100.0
FINALISTS = 3  # the fastest candidates meeting the targets that are re-timed in alternation (with the best single)
RETIME_ROUNDS = 8


class TuneError(ReelkitError):
    """Targets out of range or out of reach (one ``error:`` line on the command line)."""


@dataclass(frozen=True)
class Candidate:
    """One way to generate: a model, its steps and guidance, and the accelerators on it."""

    model: str
    steps: int
    guidance: float = 5.0
    cache: str | None = None
    moreg: bool = False
    rehash: int | None = None
    slicing: str | None = None
    guidance_interval: float | None = None
    guidance_reuse: float | None = None
    vae_chunk_frames: int | None = None
    vae_tile: int | None = None

    def key(self) -> str:
        parts = [self.model, str(self.steps), f"g{self.guidance:g}"]
        parts += [p for p in (self.cache, "moreg" if self.moreg else None,
                              f"rehash{self.rehash}" if self.rehash else None,
                              f"slice{self.slicing}" if self.slicing else None,
                              f"gi{self.guidance_interval:g}" if self.guidance_interval else None,
                              f"gr{self.guidance_reuse:g}" if self.guidance_reuse else None,
                              f"chunk{self.vae_chunk_frames}" if self.vae_chunk_frames else None,
                              f"tile{self.vae_tile}" if self.vae_tile else None) if p]
        return "/".join(parts)

    def options(self, codebook=None) -> AccelerationOptions:
        """The accelerators; a calibrated candidate (``cache`` ``CALIBRATED``) takes its fitted ``codebook``."""
        calibrated = self.cache == CALIBRATED
        if calibrated and codebook is None:
            raise ReelkitError(f"{self.key()}: calibrate its codebook first (Tuner.codebook)")
        return AccelerationOptions(cache=None if calibrated else self.cache, codebook=codebook if calibrated else None,
                                   moreg=self.moreg, rehash=self.rehash, slicing=self.slicing,
                                   guidance_interval=self.guidance_interval, guidance_reuse=self.guidance_reuse,
                                   vae_chunk_frames=self.vae_chunk_frames, vae_tile=self.vae_tile)


def candidates(models: Sequence[str], guidance: float = 5.0, steps_choices: Sequence[int] = TEACHER_STEPS
               ) -> list[Candidate]:
    """The search space: a many-step model (the teacher, or a folder) at each of ``steps_choices``, alone, with
    AdaCache (fast, slow, with MoReg, or a codebook calibrated at that step count to the target against the
    reference, ``CALIBRATED``) or with Step Rehash budgets, and each of the plain, AdaCache (fast) and
    largest-budget Step Rehash runs with guidance limited to the noise levels above each of ``GUIDANCE_INTERVALS``,
    and the plain run with the guidance difference reused below each of ``GUIDANCE_REUSE`` (every Step Rehash budget
    with it reused below the last);
    the few-step student at 2, 4 and 8 steps (caches give nothing at a few steps; it runs no unconditional branch
    to skip)."""
    found = []
    for model in models:
        if model == "student":
            found += [Candidate(model, steps, guidance) for steps in STUDENT_STEPS]
            continue
        for steps in steps_choices:
            found.append(Candidate(model, steps, guidance))
            found += [Candidate(model, steps, guidance, cache=c) for c in ("adacache-fast", "adacache-slow")]
            if steps > CALIBRATION_MIN_STEPS:
                found.append(Candidate(model, steps, guidance, cache=CALIBRATED))
            found.append(Candidate(model, steps, guidance, cache="adacache-fast", moreg=True))
            budgets = [k for k in sorted({max(2, round(steps * share)) for share in REHASH_FRACTIONS}) if k < steps]
            found += [Candidate(model, steps, guidance, rehash=k) for k in budgets]
            found += [Candidate(model, steps, guidance, guidance_reuse=below) for below in GUIDANCE_REUSE]
            found += [Candidate(model, steps, guidance, rehash=k, guidance_reuse=GUIDANCE_REUSE[-1]) for k in budgets]
            for low in GUIDANCE_INTERVALS:
                found.append(Candidate(model, steps, guidance, guidance_interval=low))
                found.append(Candidate(model, steps, guidance, cache="adacache-fast", guidance_interval=low))
                if budgets:
                    found.append(Candidate(model, steps, guidance, rehash=budgets[-1], guidance_interval=low))
    return found


def techniques(candidate: Candidate, reference_steps: int) -> int:
    """How many techniques a candidate mixes: fewer steps, the student, AdaCache (MoReg included), Step Rehash,
    limited guidance, guidance reuse."""
    return sum((candidate.model == "student", candidate.model != "student" and candidate.steps < reference_steps,
                candidate.cache is not None, candidate.rehash is not None, candidate.guidance_interval is not None,
                candidate.guidance_reuse is not None))


@dataclass(frozen=True)
class Finalists:
    """What :meth:`Tuner.pick` chose: the winner with its figures (``latency_s`` re-timed), every finalist's
    re-timed seconds by key, and the fastest single technique meeting the targets with its seconds (or None)."""

    chosen: Candidate
    figures: dict
    retimed: dict[str, float]
    single: Candidate | None
    single_latency_s: float | None


@dataclass
class TuneSettings:
    frames: int = 17
    size: int = 64
    seed: int = 0
    target_psnr: float = 30.0
    target_adherence: float | None = None
    max_memory: int | None = None  # bytes


def check_targets(settings: TuneSettings) -> None:
    if not 10 <= settings.target_psnr <= 60:
        raise TuneError(f"--target-psnr must lie in 10 .. 60 dB, got {settings.target_psnr:g}")
    if settings.target_adherence is not None and not 0 < settings.target_adherence <= 1:
        raise TuneError(f"--target-adherence must lie in (0, 1], got {settings.target_adherence:g}")
    if settings.max_memory is not None and settings.max_memory <= 0:
        raise TuneError("--max-memory must be a positive size such as 4GiB")


class _State:
    """Measured figures by (prompt set, candidate key), saved after each measurement: a search resumes."""

    def __init__(self, path: Path | None, fingerprint: dict):
        self.path, self.data = path, {"fingerprint": fingerprint, "measured": {}}
        if path is not None and path.is_file():
            try:
                saved = json.loads(path.read_text())
            except json.JSONDecodeError:
                saved = {}
            if saved.get("fingerprint") == fingerprint:
                self.data = saved

    def get(self, key: str) -> dict | None:
        return self.data["measured"].get(key)

    def put(self, key: str, figures: dict) -> None:
        self.data["measured"][key] = figures
        if self.path is not None:
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps(self.data, indent=1))


def _codebook_key(candidate: Candidate) -> str:
    """Where the state keeps a calibrated candidate's codebook (one serves every way of fitting its memory)."""
    return f"codebook:{replace(candidate, slicing=None, vae_chunk_frames=None, vae_tile=None).key()}"


class Tuner:
    """Measures candidates on prompts against reference clips; ``load(model)`` returns a pipeline by name."""

    def __init__(self, load: Callable[[str], object], settings: TuneSettings, reference: tuple[str, int],
                 guidance: float = 5.0, judge=None, state_path: str | Path | None = None,
                 progress: Callable[[str], None] | None = None):
        self.load, self.settings, self.reference, self.judge = load, settings, reference, judge
        self.guidance = guidance
        self.pipes: dict[str, object] = {}
        self.references: dict[tuple, torch.Tensor] = {}
        self.say = progress or (lambda message: None)
        fingerprint = {"settings": asdict(settings), "reference": list(reference), "guidance": guidance}
        self.state = _State(Path(state_path) if state_path else None, fingerprint)

    def pipe(self, model: str):
        if model not in self.pipes:
            self.pipes[model] = self.load(model)
        return self.pipes[model]

    @contextmanager
    def _generator(self, candidate: Candidate) -> Iterator[Callable[[str, int], tuple[torch.Tensor, float]]]:
        """While open, ``generate(prompt, index)`` is the candidate's clip of ``prompt`` (seed + index) and its
        seconds; the candidate's accelerators are on the pipeline only meanwhile."""
        from reelkit.generation import GenerationSettings, generate_video

        s = self.settings
        pipe = self.pipe(candidate.model)
        settings = GenerationSettings(candidate.steps, candidate.guidance, s.seed, s.frames, s.size)
        saved = self.state.get(_codebook_key(candidate))
        options = candidate.options(codebook_from_dict(saved) if saved else None)

        def generate(prompt: str, index: int) -> tuple[torch.Tensor, float]:
            start = time.perf_counter()
            clip = generate_video(pipe, prompt, settings, seed=s.seed + index).float().cpu()
            return clip, time.perf_counter() - start

        apply_acceleration(pipe, options, candidate.steps, bundled_teacher=candidate.model == "teacher")
        try:
            yield generate
        finally:
            remove_acceleration(pipe)

    def _clips(self, candidate: Candidate, prompts: Sequence[str], peak: bool = False
               ) -> tuple[torch.Tensor, list[float], int | None]:
        """The candidate's clips of ``prompts`` (seed + index), their seconds, and with ``peak`` the peak memory of
        the first clip (measured on its own run, before the timed ones)."""
        from reelkit.memory import peak_memory_bytes

        with self._generator(candidate) as generate:
            pipe = self.pipe(candidate.model)
            peak_bytes = peak_memory_bytes(lambda: generate(prompts[0], 0), pipe.transformer, pipe.vae) if peak \
                else None
            clips, seconds = zip(*(generate(prompt, index) for index, prompt in enumerate(prompts)), strict=True)
        return torch.stack(clips), list(seconds), peak_bytes

    def retime(self, finalists: Sequence[Candidate], prompts: Sequence[str], rounds: int = RETIME_ROUNDS,
               label: str = "search") -> dict[str, float]:
        """Median seconds a clip of each of ``finalists`` (by key), timed in alternation: round r generates prompt
        r mod len(prompts) with every finalist in turn, the order reversed every other round. A search measures
        its candidates minutes apart, and a shared CPU's speed drifts by up to 40% over that time; alternating
        makes the drift hit the finalists alike, so the closest of them are told apart fairly. Kept in the state."""
        key = f"retime:{label}:" + "|".join(sorted(c.key() for c in finalists))
        saved = self.state.get(key)
        if saved is not None:
            return saved
        seconds: dict[str, list[float]] = {c.key(): [] for c in finalists}
        for round_index in range(rounds):
            index = round_index % len(prompts)
            for candidate in finalists if round_index % 2 == 0 else finalists[::-1]:
                with self._generator(candidate) as generate:
                    seconds[candidate.key()].append(generate(prompts[index], index)[1])
        medians = {name: statistics.median(times) for name, times in seconds.items()}
        self.state.put(key, medians)
        return medians

    def reference_clips(self, prompts: Sequence[str]) -> torch.Tensor:
        key = tuple(prompts)
        if key not in self.references:
            model, steps = self.reference
            self.references[key], _, _ = self._clips(Candidate(model, steps, self.guidance), prompts)
        return self.references[key]

    def codebook(self, candidate: Candidate, prompts: Sequence[str]):
        """The AdaCache codebook of a calibrated candidate: the fastest whose clips of ``prompts`` (the search's;
        held-out prompts reuse it) keep the PSNR target against the reference clips at the candidate's steps, so
        the cache spends what quality the fewer steps leave (:func:`reelkit.accel.calibrate.calibrate_ada_cache`).
        Kept in the state, so a resumed search does not calibrate again."""
        from reelkit.accel.adacache import AdaCacheConfig
        from reelkit.accel.calibrate import calibrate_ada_cache
        from reelkit.generation import GenerationSettings

        key = _codebook_key(candidate)
        saved = self.state.get(key)
        if saved is None:
            s = self.settings
            self.say(f"calibrating {candidate.key()} on {len(prompts)} prompts")
            references, pipe = list(self.reference_clips(prompts)), self.pipe(candidate.model)
            # calibrated as it will run: with its guidance limited or reused too
            guidance = AccelerationOptions(guidance_interval=candidate.guidance_interval,
                                           guidance_reuse=candidate.guidance_reuse)
            apply_acceleration(pipe, guidance, candidate.steps, bundled_teacher=candidate.model == "teacher")
            try:
                result = calibrate_ada_cache(
                    pipe, prompts, s.target_psnr,
                    GenerationSettings(candidate.steps, candidate.guidance, s.seed, s.frames, s.size),
                    AdaCacheConfig(moreg=candidate.moreg), references=references)
            finally:
                remove_acceleration(pipe)
            saved = {"thresholds": list(result.codebook.thresholds), "rates": list(result.codebook.rates),
                     "psnr_db": result.psnr_db, "computed_fraction": result.computed_fraction}
            self.state.put(key, saved)
        return codebook_from_dict(saved)

    def measure(self, candidate: Candidate, prompts: Sequence[str], label: str = "search") -> dict:
        """Figures of ``candidate`` on ``prompts`` (from the state when already measured)."""
        key = f"{label}:{candidate.key()}"
        saved = self.state.get(key)
        if saved is not None:
            return saved
        if candidate.cache == CALIBRATED:
            self.codebook(candidate, prompts)
        references = self.reference_clips(prompts)
        budget = self.settings.max_memory is not None
        _, _, peak = self._clips(candidate, prompts[:1], peak=budget)  # the warm-up (and the memory measurement)
        clips, seconds, _ = self._clips(candidate, prompts)
        figures = {"latency_s": statistics.median(seconds),
                   "psnr_db": statistics.fmean(min(video_psnr(a, b), MAX_PSNR) for a, b in zip(clips, references,
                                                                                               strict=True))}
        if budget:
            figures["peak_mem_bytes"] = peak
        if self.judge is not None:
            from reelkit.eval.adherence import judge_clips, mean_adherence, prompt_adherence

            seen, _ = judge_clips(self.judge, clips)
            scores = mean_adherence(prompt_adherence(p, o) for p, o in zip(prompts, seen, strict=True))
            figures["adherence"] = statistics.fmean(scores[k] for k in ("shape", "color", "motion", "count"))
        self.state.put(key, figures)
        return figures

    def meets(self, figures: dict) -> bool:
        s = self.settings
        return (figures["psnr_db"] >= s.target_psnr
                and (s.target_adherence is None or figures.get("adherence", 0.0) >= s.target_adherence)
                and (s.max_memory is None or figures.get("peak_mem_bytes", 0) <= s.max_memory))

    def fit_memory(self, candidate: Candidate, prompts: Sequence[str]) -> tuple[Candidate, dict]:
        """``candidate`` as measured or, over the memory budget, the first of :meth:`memory_fits` whose measured
        figures meet every target (VAE chunking costs quality: a quicker fit may miss the PSNR target), else the
        first whose peak fits, else the last tried (which misses)."""
        figures = self.measure(candidate, prompts)
        budget = self.settings.max_memory
        if budget is None or figures["peak_mem_bytes"] <= budget:
            return candidate, figures
        fitting = None
        for fitted in self.memory_fits(candidate, prompts[0]):
            fitted_figures = self.measure(fitted, prompts)
            if self.meets(fitted_figures):
                return fitted, fitted_figures
            if fitting is None and fitted_figures["peak_mem_bytes"] <= budget:
                fitting = fitted, fitted_figures
        return fitting or (fitted, fitted_figures)

    def memory_fits(self, candidate: Candidate, prompt: str) -> list[Candidate]:
        """``candidate`` with Feature Slicing and VAE chunking that probes put under the memory budget, quickest
        decode first (when none fits: the one with the smallest probed peak). The denoising loop is probed
        at growing slicing chunk counts until it fits; the decode, which holds the peak of a video pipeline at
        larger sizes, at each rung of :func:`~reelkit.vae.chunking.chunking_ladder` (whole clip first) with
        growing slicing from there until one fits (tiles at the fewest); each probe is one run timed and one run
        tracked, kept in the state."""
        from reelkit.vae.chunking import chunking_ladder

        budget, s = self.settings.max_memory, self.settings
        slicings = [None, *SLICE_CHUNKS]
        while True:  # the fewest slicing chunks whose denoising fits (or the most there are)
            denoise = self.probe(replace(candidate, slicing=slicings[0]), prompt, decode=False)
            if denoise["peak_mem_bytes"] <= budget or len(slicings) == 1:
                break
            slicings.pop(0)
        chunkings = [None]
        if hasattr(self.pipe(candidate.model).vae, "enable_chunking"):
            chunkings += chunking_ladder(s.frames, s.size)
        probed = []
        for chunking in chunkings:
            tiled = chunking is not None and chunking.tile_size is not None
            for slicing in slicings[:1] if tiled else slicings:  # tiles bound the decode: more slicing only costs
                fitted = replace(candidate, slicing=slicing,
                                 vae_chunk_frames=chunking.frames_per_chunk if chunking else None,
                                 vae_tile=chunking.tile_size if chunking else None)
                decode = self.probe(fitted, prompt, decode=True)
                probed.append((max(denoise["peak_mem_bytes"], decode["peak_mem_bytes"]), decode["seconds"], fitted))
                if probed[-1][0] <= budget:
                    break  # more slicing chunks on this chunking only cost time
        fits = sorted((item for item in probed if item[0] <= budget), key=lambda item: item[1])
        return [fitted for _, _, fitted in fits] or [min(probed, key=lambda item: item[0])[2]]

    def probe(self, candidate: Candidate, prompt: str, decode: bool) -> dict:
        """Peak bytes (one tracked run) and seconds (one plain run) of ``candidate``'s denoising loop alone, or with
        ``decode`` of its VAE decode alone (only its slicing and chunking matter: the key leaves the rest out)."""
        from reelkit.memory import peak_memory_bytes

        s = self.settings
        key = (f"probe:decode:{candidate.model}:{candidate.slicing}:{candidate.vae_chunk_frames}:{candidate.vae_tile}"
               if decode else f"probe:denoise:{candidate.key()}")
        saved = self.state.get(key)
        if saved is not None:
            return saved
        pipe = self.pipe(candidate.model)

        def denoise(steps: int) -> torch.Tensor:
            return pipe(prompt, num_frames=s.frames, height=s.size, width=s.size, num_inference_steps=steps,
                        guidance_scale=candidate.guidance, generator=torch.Generator().manual_seed(s.seed),
                        output_type="latent").frames

        if decode:
            latents = denoise(1)  # any latents of the clip's shape: a decode's cost does not depend on the values
            run = torch.no_grad()(lambda: pipe.decode_latents(latents))
            options = AccelerationOptions(slicing=candidate.slicing, vae_chunk_frames=candidate.vae_chunk_frames,
                                          vae_tile=candidate.vae_tile)
        else:
            saved_book = self.state.get(_codebook_key(candidate))
            options = candidate.options(codebook_from_dict(saved_book) if saved_book else None)
            run = lambda: denoise(candidate.steps)  # noqa: E731
        apply_acceleration(pipe, options, candidate.steps, bundled_teacher=candidate.model == "teacher")
        try:
            start = time.perf_counter()
            run()
            seconds = time.perf_counter() - start
            figures = {"peak_mem_bytes": peak_memory_bytes(run, pipe.transformer, pipe.vae), "seconds": seconds}
        finally:
            remove_acceleration(pipe)
        self.state.put(key, figures)
        return figures

    def pick(self, passing: Sequence[tuple[Candidate, dict]], prompts: Sequence[str], rounds: int = RETIME_ROUNDS
             ) -> Finalists:
        """The winner among ``passing`` (candidates meeting the targets, with their figures) and the fastest single
        technique among them, by :meth:`retime` of the ``FINALISTS`` fastest and that single (by the search's
        seconds when there is only one to time)."""
        ranked = sorted(passing, key=lambda item: item[1]["latency_s"])
        finalists = ranked[:FINALISTS]
        single = next((item for item in ranked if techniques(item[0], self.reference[1]) == 1), None)
        if single is not None and single not in finalists:
            finalists.append(single)
        retimed = self.retime([c for c, _ in finalists], prompts, rounds) if len(finalists) > 1 else {}

        def seconds(item: tuple[Candidate, dict]) -> float:
            return retimed.get(item[0].key(), item[1]["latency_s"])

        chosen = min(finalists, key=seconds)
        return Finalists(chosen[0], {**chosen[1], "latency_s": seconds(chosen)}, retimed,
                         None if single is None else single[0], None if single is None else seconds(single))

    def search(self, space: Sequence[Candidate], prompts: Sequence[str], heldout: Sequence[str],
               advance: Callable[[], None] | None = None) -> Recipe:
        """Measure every candidate, keep the fastest that meets the targets, re-check it on ``heldout``;
        ``advance()`` is called after each candidate (a progress bar's)."""
        results = []
        for number, candidate in enumerate(space, 1):
            fitted, figures = self.fit_memory(candidate, prompts)
            results.append((fitted, figures))
            if advance is not None:
                advance()
            self.say(f"[{number}/{len(space)}] {fitted.key()}: {figures['latency_s']:.2f} s, "
                     f"{figures['psnr_db']:.1f} dB" + ("" if self.meets(figures) else " (misses)"))
        passing = [(c, f) for c, f in results if self.meets(f)]
        if not passing:
            best_psnr = max(f["psnr_db"] for _, f in results)
            smallest = min((f.get("peak_mem_bytes") for _, f in results if "peak_mem_bytes" in f), default=None)
            reach = f"best PSNR reached {best_psnr:.1f} dB"
            if smallest is not None:
                reach += f", smallest peak memory reached {smallest / 2**30:.2f} GiB"
            raise TuneError(f"no candidate meets the targets ({reach}); relax --target-psnr or --max-memory")
        pick = self.pick(passing, prompts)
        chosen, figures, best_single = pick.chosen, pick.figures, pick.single_latency_s
        baseline = self.measure(Candidate(*self.reference, self.guidance), prompts)
        held = self.measure(chosen, heldout, label="heldout")
        held_baseline = self.measure(Candidate(*self.reference, self.guidance), heldout, label="heldout")
        s = self.settings
        book = self.codebook(chosen, prompts) if chosen.cache == CALIBRATED else None
        return Recipe(
            model=chosen.model, fingerprint=model_fingerprint(self.pipe(chosen.model).transformer),
            steps=chosen.steps, guidance=chosen.guidance, cache=chosen.cache, moreg=chosen.moreg,
            rehash=chosen.rehash, slicing=chosen.slicing, guidance_interval=chosen.guidance_interval,
            guidance_reuse=chosen.guidance_reuse, vae_chunk_frames=chosen.vae_chunk_frames, vae_tile=chosen.vae_tile,
            codebook=None if book is None else {"thresholds": list(book.thresholds), "rates": list(book.rates)},
            measured={"search": {**figures, "speedup": baseline["latency_s"] / figures["latency_s"],
                                 "prompts": len(prompts)},
                      "heldout": {**held, "speedup": held_baseline["latency_s"] / held["latency_s"],
                                  "prompts": len(heldout), "meets_targets": self.meets(held)},
                      "best_single_technique_latency_s": best_single,
                      "speedup_vs_best_single": best_single / figures["latency_s"] if best_single else None,
                      "retimed": pick.retimed,
                      "candidates": {c.key(): f for c, f in results}},
            targets={"psnr_db": s.target_psnr, "adherence": s.target_adherence, "max_memory_bytes": s.max_memory,
                     "reference": f"{self.reference[0]}@{self.reference[1]}", "frames": s.frames, "size": s.size},
        )


__all__ = ["CALIBRATED", "Candidate", "Finalists", "TuneError", "TuneSettings", "Tuner", "candidates", "check_targets",
           "techniques"]
