"""adherence_from_noise: sampling that starts from a held-out clip's own noising path."""

import pytest
import torch

from reelkit.data.datasets import heldout_seeds
from reelkit.data.world import render_clip
from reelkit.errors import ReelkitError
from reelkit.eval.adherence import judge_clips, mean_adherence, prompt_adherence
from reelkit.eval.noise_levels import adherence_from_noise
from reelkit.pipelines.text_to_video import tiny_pipeline

SETTINGS = dict(clips=3, steps=4, frames=5, size=32, batch=2)


@pytest.fixture
def pipe():
    pipe = tiny_pipeline(open_gates=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _reading(judge, videos, clips):
    seen = judge_clips(judge, videos)[0]
    return mean_adherence(prompt_adherence(c.caption, s) for c, s in zip(clips, seen, strict=True))


def test_level_one_is_plain_generation_from_the_same_noise(pipe, tiny_judge):
    judge = tiny_judge()
    clips = [render_clip(seed, 5, 32) for seed in heldout_seeds(3)]
    videos = []
    for start in (0, 2):  # the batches adherence_from_noise draws its noise for
        batch = clips[start:start + 2]
        latents = torch.randn((len(batch), 8, 2, 4, 4), generator=torch.Generator().manual_seed(start))
        videos.append(pipe([c.caption for c in batch], num_frames=5, height=32, width=32, num_inference_steps=4,
                           latents=latents).frames)
    assert adherence_from_noise(pipe, judge, (1.0,), **SETTINGS)[1.0] == _reading(judge, torch.cat(videos), clips)


def test_a_level_below_every_step_returns_the_clips_own_latents(pipe, tiny_judge):
    judge = tiny_judge()
    clips = [render_clip(seed, 5, 32) for seed in heldout_seeds(3)]
    with torch.no_grad():
        video = torch.stack([c.video for c in clips])
        roundtrip = pipe.decode_latents(pipe.vae.encode(video).latent_dist.mean * pipe.vae.config.scaling_factor)
    assert adherence_from_noise(pipe, judge, (1e-9,), **SETTINGS)[1e-9] == _reading(judge, roundtrip, clips)


@pytest.mark.parametrize("levels", [(), (0.0,), (1.5,), (0.5, -0.1)])
def test_levels_outside_zero_one_are_refused(pipe, tiny_judge, levels):
    with pytest.raises(ReelkitError, match="noise levels must lie in"):
        adherence_from_noise(pipe, tiny_judge(), levels, **SETTINGS)


def test_a_consistency_student_is_refused(tiny_judge):
    with pytest.raises(ReelkitError, match="consistency student"):
        adherence_from_noise(tiny_pipeline(student=True), tiny_judge(), (0.5,), **SETTINGS)
