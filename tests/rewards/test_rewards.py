import json

import pytest
import torch
import yaml

from reelkit.errors import ReelkitError
from reelkit.rewards import (
    DemoImageTextReward,
    DemoVideoTextReward,
    HPSReward,
    RewardModel,
    ViCLIPReward,
    load_reward,
    register_reward,
)
from reelkit.rewards.demo import world_tokenizer
from reelkit.train.rewards import export_reward, info_nce, perturb_caption

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"channels": (8, 8, 16), "embed_dim": 16, "text_dim": 16, "text_layers": 1, "text_heads": 2, "size": 16}
PROMPTS = ["a red ball rises on a grey background", "a blue box falls on grass"]


def tiny_image(**kwargs):
    torch.manual_seed(0)
    return DemoImageTextReward(**{**TINY, **kwargs}).eval()


def tiny_video(**kwargs):
    torch.manual_seed(0)
    return DemoVideoTextReward(**{**TINY, "num_frames": 5, **kwargs}).eval()


def random_video(batch=2, frames=9, size=24):
    torch.manual_seed(1)
    return (torch.rand(batch, 3, frames, size, size) * 2 - 1).requires_grad_()


@pytest.mark.parametrize("make, kind", [(tiny_image, "image"), (tiny_video, "video")])
def test_demo_rewards_score_clips_differentiably(make, kind):
    reward, video = make(), random_video()
    assert isinstance(reward, RewardModel) and reward.kind == kind
    scores = reward.score(video, PROMPTS)
    assert scores.shape == (2,) and scores.abs().max() <= 1 + 1e-5  # cosine
    scores.sum().backward()
    assert video.grad is not None and video.grad.abs().sum() > 0
    assert all(p.grad is None for p in reward.text_encoder.parameters())  # text branch without gradients
    with pytest.raises(ReelkitError, match="2 videos but 1 prompts"):
        reward.score(video, PROMPTS[:1])
    with pytest.raises(ReelkitError, match="scores videos"):
        reward.score(video[:, :, 0], PROMPTS)


def test_image_reward_samples_m_frames_and_reduces_them():
    reward, video = tiny_image(num_sampled_frames=3), random_video(batch=1)
    mean = reward.score(video, PROMPTS[:1], generator=torch.Generator().manual_seed(5))
    mean.sum().backward()
    touched = video.grad.abs().sum((0, 1, 3, 4)) > 0
    assert int(touched.sum()) == 3  # only the M sampled frames get gradients
    reward.frame_reduction = "sum"
    total = reward.score(video, PROMPTS[:1], generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(total, 3 * mean.detach())
    reward.frame_reduction = "max"
    with pytest.raises(ReelkitError, match="frame_reduction"):
        reward.score(video, PROMPTS[:1])


def test_a_few_training_steps_rank_the_matching_prompt_first():
    from reelkit.data.world import render_clip

    clips = [render_clip(seed, 5, 16) for seed in (0, 1, 2, 3)]
    video = torch.stack([c.video for c in clips])
    captions = [c.caption for c in clips]
    reward = tiny_image(num_sampled_frames=2).train()
    optimizer = torch.optim.Adam(reward.parameters(), lr=3e-3)
    for _ in range(40):
        loss, _ = info_nce(reward, video[:, :, 0], captions, [])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    reward.eval()
    with torch.no_grad():
        matched = reward.score(video, captions)
        mismatched = reward.score(video, captions[1:] + captions[:1])
    assert (matched > mismatched).all(), (matched, mismatched)


def test_hard_negatives_change_one_attribute():
    import numpy as np

    from reelkit.data.captions import parse_prompt
    from reelkit.data.world import random_scene

    rng = np.random.default_rng(0)
    for seed in range(20):
        scene, caption = random_scene(seed)
        negative = perturb_caption(scene, rng, motion=seed % 2 == 0)
        assert parse_prompt(negative) != parse_prompt(caption)


def test_demo_reward_saves_fp16_and_loads_back(tmp_path):
    from safetensors.torch import load_file

    reward = tiny_video()
    folder = export_reward(reward, tmp_path / "video")
    weights = load_file(folder / "diffusion_pytorch_model.safetensors")
    assert all(t.dtype == torch.float16 for t in weights.values())
    loaded = load_reward(folder)
    assert isinstance(loaded, DemoVideoTextReward) and loaded.dtype == torch.float32 and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    video = random_video()
    with torch.no_grad():
        torch.testing.assert_close(loaded.score(video, PROMPTS), reward.score(video, PROMPTS), atol=5e-3, rtol=0)
    image = load_reward(export_reward(tiny_image(), tmp_path / "image"), num_sampled_frames=2)
    assert image.kind == "image" and image.num_sampled_frames == 2


def test_bad_reward_files_are_one_line_errors(tmp_path, monkeypatch):
    import reelkit.paths

    def error(target, **kwargs) -> str:
        with pytest.raises(ReelkitError) as info:
            load_reward(target, **kwargs)
        assert "\n" not in str(info.value)
        return str(info.value)

    assert "no such reward model folder" in error(tmp_path / "absent")
    (tmp_path / "file.pt").write_bytes(b"x")
    assert "not a file" in error(tmp_path / "file.pt")
    (tmp_path / "empty").mkdir()
    assert "no config.json" in error(tmp_path / "empty")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{not json")
    assert "corrupt" in error(corrupt)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"_class_name": "WorldJudge"}))
    assert "not a reward model" in error(other)
    truncated = export_reward(tiny_image(), tmp_path / "truncated")
    weights = truncated / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert "does not match" in error(truncated) or "corrupt" in error(truncated)
    assert "adapter" in error(export_reward(tiny_image(), tmp_path / "demo"), adapter="hps")
    monkeypatch.setattr(reelkit.paths, "ASSETS_DIR", tmp_path / "no_assets")
    assert "reelkit train rewards" in error("demo-video")


def test_registered_names_load():
    register_reward("tiny-test-reward", lambda **kwargs: tiny_image(**kwargs))
    assert load_reward("tiny-test-reward", num_sampled_frames=1).num_sampled_frames == 1


@pytest.fixture
def clip_folder(tmp_path):
    """A tiny randomly initialised transformers CLIP folder with a local tokenizer."""
    from transformers import CLIPConfig, CLIPModel

    tokenizer = world_tokenizer()
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 24},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=8)
    torch.manual_seed(0)
    folder = tmp_path / "clip"
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_hps_adapter_scores_frames_like_clip(clip_folder):
    from transformers import CLIPModel

    from reelkit.rewards.adapters import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    reward = load_reward(clip_folder, num_sampled_frames=1)
    assert isinstance(reward, HPSReward) and reward.kind == "image"
    video = random_video(batch=1, frames=1, size=32)
    score = reward.score(video, PROMPTS[:1])
    score.sum().backward()
    assert video.grad.abs().sum() > 0
    # the same cosine computed by hand through transformers
    clip = CLIPModel.from_pretrained(clip_folder).eval()
    mean, std = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        pixels = ((video[:, :, 0] + 1) / 2 - mean) / std
        image = clip.get_image_features(pixel_values=pixels)
        tokens = world_tokenizer()(PROMPTS[:1], padding="max_length", max_length=24, return_tensors="pt")
        text = clip.get_text_features(**tokens)
    image, text = (getattr(x, "pooler_output", x) for x in (image, text))
    expected = torch.nn.functional.cosine_similarity(image, text)
    torch.testing.assert_close(score.detach(), expected, atol=1e-5, rtol=1e-4)


def test_viclip_adapter_scores_clips(clip_folder):
    (clip_folder / "reward.json").write_text(json.dumps({"adapter": "viclip", "num_frames": 4}))
    reward = load_reward(clip_folder)
    assert isinstance(reward, ViCLIPReward) and reward.kind == "video" and reward.num_frames == 4
    video = random_video(frames=9, size=40)  # resized (short side) and centre-cropped to 32
    scores = reward.score(video, PROMPTS, generator=torch.Generator().manual_seed(0))
    assert scores.shape == (2,)
    scores.sum().backward()
    touched = video.grad.abs().sum((0, 1, 3, 4)) > 0
    assert int(touched.sum()) == 4
    assert isinstance(load_reward(clip_folder, adapter="hps"), HPSReward)
    with pytest.raises(ReelkitError, match="unknown reward adapter"):
        load_reward(clip_folder, adapter="nope")


def test_corrupt_clip_folder_is_an_error(clip_folder):
    (clip_folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ReelkitError, match="cannot read the CLIP model"):
        load_reward(clip_folder)


def test_recipe_trains_exports_and_resumes(tmp_path, capsys):
    from reelkit.train.rewards import run

    tiny = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items() if k != "size"}
    config = {"output_dir": str(tmp_path / "run"), "image_model": tiny, "video_model": tiny, "num_frames": 5,
              "size": 16, "batch_size": 3, "hard_negatives": 1, "max_steps": 2, "warmup_steps": 1,
              "save_every": 1, "log_every": 1, "num_workers": 0}
    path = tmp_path / "rewards.yaml"
    path.write_text(yaml.safe_dump(config))
    output = run(path)
    assert "vid_hard" in capsys.readouterr().out
    assert load_reward(output / "image").kind == "image" and load_reward(output / "video").kind == "video"
    run(path, max_steps=3)
    assert "resumed from" in capsys.readouterr().out
    path.write_text(yaml.safe_dump({**config, "rewards": ["audio"]}))
    with pytest.raises(ReelkitError, match="rewards must be"):
        run(path)


def test_cli_train_rewards_reports_a_missing_config(cli, one_line_error, tmp_path):
    code, _, err = cli("train", "rewards", "--config", tmp_path / "absent.yaml")
    assert "no such config file" in one_line_error(code, err)


@pytest.mark.parametrize("name", ["demo-image", "demo-video"])
def test_the_bundled_rewards_prefer_each_clips_own_caption(name):
    from reelkit.data.datasets import heldout_seeds
    from reelkit.data.world import render_clip

    clips = [render_clip(seed, 9, 64) for seed in heldout_seeds(4)]
    video = torch.stack([clip.video for clip in clips])
    reward = load_reward(name)
    with torch.no_grad():
        scores = torch.stack([reward.score(video, [clip.caption] * 4, generator=torch.Generator().manual_seed(0))
                              for clip in clips], 1)  # (clip, caption)
    assert torch.equal(scores.argmax(1), torch.arange(4))
