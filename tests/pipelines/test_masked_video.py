"""MaskedVideoPipeline: known frames in, the full clip out; seeded; guidance on the plan; long and extended clips."""

import pytest
import torch

from reelkit.errors import ReelkitError, ShapeError
from reelkit.pipelines.masked_video import load_masked_video, save_masked_video_pipeline, tiny_masked_pipeline


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_masked_pipeline()
    generator = torch.Generator().manual_seed(1)
    for model in (pipe.planner, pipe.transformer):  # open the adaLN-zero gates so every input matters
        for parameter in model.parameters():
            parameter.data = torch.randn(parameter.shape, generator=generator) * 0.2
    return pipe


def frames(count: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, count, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_known_frames_come_back_untouched_and_seeds_repeat(pipe):
    known = frames(2)
    out = pipe(known, [0, 8], 9, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).frames
    again = pipe(known, [0, 8], 9, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).frames
    other = pipe(known, [0, 8], 9, num_inference_steps=2, generator=torch.Generator().manual_seed(1)).frames
    assert out.shape == (1, 3, 9, 32, 32)
    assert torch.equal(out[:, :, 0], known[:, :, 0]) and torch.equal(out[:, :, 8], known[:, :, 1])
    assert torch.equal(out, again) and not torch.equal(out, other)
    assert out.min() >= -1 and out.max() <= 1


def test_known_frames_may_come_in_any_order(pipe):
    known = frames(2)
    a = pipe(known, [0, 8], 9, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).frames
    b = pipe(known.flip(2), [8, 0], 9, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).frames
    assert torch.equal(a, b)


def test_guidance_and_the_planner_change_the_result(pipe):
    image = frames(1)[:, :, 0]
    run = dict(num_frames=5, num_inference_steps=2)
    guided = pipe.animate(image, guidance_scale=2.5, generator=torch.Generator().manual_seed(0), **run).latents
    plain = pipe.animate(image, guidance_scale=1.0, generator=torch.Generator().manual_seed(0), **run).latents
    alone = pipe.animate(image, use_planner=False, generator=torch.Generator().manual_seed(0), **run).latents
    assert not torch.allclose(guided, plain) and not torch.allclose(plain, alone)


def test_generator_only_never_runs_the_planner(pipe, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the planner ran")

    monkeypatch.setattr(pipe, "planner", refuse)
    assert pipe.interpolate(frames(1)[:, :, 0], frames(1, seed=1)[:, :, 0], 5, num_inference_steps=1,
                            use_planner=False).frames.shape[2] == 5


def test_long_clips_keep_every_known_frame(pipe):
    first, last = frames(1)[:, :, 0], frames(1, seed=1)[:, :, 0]
    out = pipe.long(torch.stack([first, last], 2), [0, 40], 41, window=9, num_inference_steps=1).frames
    assert out.shape == (1, 3, 41, 32, 32)
    assert torch.equal(out[:, :, 0], first) and torch.equal(out[:, :, 40], last)


def test_extend_continues_the_clip(pipe):
    video = frames(9)
    out = pipe.extend(video, add=12, context=5, window=9, num_inference_steps=1).frames
    assert out.shape[2] == 21 and torch.equal(out[:, :, :9], video)


@pytest.mark.parametrize(("call", "message"), [
    (lambda p: p.interpolate(frames(1)[:, :, 0], frames(1, size=48)[:, :, 0]), "differ in size"),
    (lambda p: p(frames(2), [0, 9], 9), "out of range"),
    (lambda p: p(frames(2), [0, 1], 2), "too few"),
    (lambda p: p(frames(1, size=40), [0], 5), "multiples of 16"),
    (lambda p: p(frames(2), [0], 5), "indices"),
    (lambda p: p.extend(frames(5), add=0), "at least one"),
])
def test_bad_inputs_are_one_line_errors(pipe, call, message):
    with pytest.raises(ShapeError, match=message):
        call(pipe)


def test_saved_pipeline_loads_with_the_bundled_image_vae(pipe, tmp_path):
    folder = save_masked_video_pipeline(pipe.planner, pipe.transformer, tmp_path / "model")
    assert not (folder / "vae").exists()
    loaded = load_masked_video(folder)
    assert torch.equal(next(loaded.transformer.parameters()), next(pipe.transformer.parameters()))
    assert loaded.vae.config.latent_channels == 8


def test_a_folder_saved_before_the_rename_still_loads(pipe, tmp_path):
    """The generator network used to be the pipeline's ``generator`` component (a name that clashed with the
    random number generator); folders saved then load as before, the network as ``transformer``."""
    import json

    folder = save_masked_video_pipeline(pipe.planner, pipe.transformer, tmp_path / "model")
    (folder / "transformer").rename(folder / "generator")
    index = json.loads((folder / "model_index.json").read_text())
    index["generator"] = index.pop("transformer")
    (folder / "model_index.json").write_text(json.dumps(index))
    loaded = load_masked_video(folder)
    assert torch.equal(next(loaded.transformer.parameters()), next(pipe.transformer.parameters()))


def test_missing_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(ReelkitError, match="not a MarDini pipeline"):
        load_masked_video(tmp_path)
