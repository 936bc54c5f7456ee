"""End-to-end checks of the bundled teacher (src/reelkit/assets/teacher) and judge (assets/judge)."""

import pytest
import torch

from reelkit.data.datasets import heldout_seeds
from reelkit.data.world import random_scene, render_clip
from reelkit.eval.adherence import judge_clips, label_accuracy, mean_adherence, prompt_adherence
from reelkit.models.judge import load_judge
from reelkit.paths import bundled_models
from reelkit.pipelines.text_to_video import load_text_to_video

# Floors well under the measured figures (docs/bench/generate.json): the judge reads 100% of held-out
# clips right; the teacher (rebuilt latent space, 2,900 CPU steps) reads 0.87 on colours and 0.73 on object
# counts over 64 prompts; shapes and motions are not yet above chance, so they get no floor.
JUDGE_FLOOR = {"shape": 0.95, "color": 0.95, "motion": 0.95}
TEACHER_FLOOR = {"color": 0.6, "count": 0.5}


@pytest.fixture(scope="module")
def judge():
    return load_judge()


def test_teacher_and_judge_are_bundled_and_listed():
    assert {"teacher", "judge"} <= set(bundled_models())


def test_judge_reads_real_heldout_clips(judge):
    clips = [render_clip(seed, 17, 64) for seed in heldout_seeds(48)]
    seen, _ = judge_clips(judge, torch.stack([c.video for c in clips]))
    accuracy = label_accuracy(seen, [c.labels["objects"] for c in clips])
    assert accuracy["color"] >= JUDGE_FLOOR["color"] and accuracy["motion"] >= JUDGE_FLOOR["motion"], accuracy
    assert accuracy["shape"] >= JUDGE_FLOOR["shape"], accuracy


def test_teacher_follows_heldout_prompts(judge):
    pipe = load_text_to_video()
    pipe.set_progress_bar_config(disable=True)
    prompts = [random_scene(seed)[1] for seed in heldout_seeds(8)]
    generators = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    videos = pipe(prompts, num_inference_steps=25, guidance_scale=5.0, generator=generators).frames
    assert videos.shape == (8, 3, 17, 64, 64)
    seen, _ = judge_clips(judge, videos)
    scores = mean_adherence(prompt_adherence(p, s) for p, s in zip(prompts, seen, strict=True))
    assert all(scores[k] >= floor for k, floor in TEACHER_FLOOR.items()), scores
    assert torch.isfinite(videos).all() and videos.flatten(1).std(1).min() > 0.05  # pictures, not flat frames
