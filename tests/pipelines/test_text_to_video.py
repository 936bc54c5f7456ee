import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from reelkit.errors import PromptError, ReelkitError, ShapeError
from reelkit.pipelines.text_to_video import TextToVideoPipeline, load_text_to_video, tiny_pipeline

SMALL = dict(num_frames=5, height=32, width=32, num_inference_steps=3)


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_pipeline()
    for parameter in pipe.transformer.parameters():  # open adaLN-zero's gates so text and noise matter
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    return pipe


def run(pipe, prompt="a red circle moving right", seed=0, **kwargs):
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), **{**SMALL, **kwargs}).frames


def test_same_seed_same_video_other_seed_other_video(pipe):
    a, b, c = run(pipe), run(pipe), run(pipe, seed=1)
    assert a.shape == (1, 3, 5, 32, 32) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_guidance_and_negative_prompt_change_the_result(pipe):
    guided = run(pipe, guidance_scale=5.0)
    assert not torch.equal(guided, run(pipe, guidance_scale=1.0))
    assert not torch.equal(guided, run(pipe, guidance_scale=5.0, negative_prompt="a blue square"))


def test_output_types_and_batches(pipe):
    assert run(pipe, output_type="np").shape == (1, 5, 32, 32, 3)
    pil = run(pipe, output_type="pil")
    assert len(pil) == 1 and len(pil[0]) == 5 and pil[0][0].size == (32, 32)
    assert run(pipe, output_type="latent").shape == (1, 8, 2, 4, 4)
    videos = pipe(["a red circle", "a blue star"], num_videos_per_prompt=2, **SMALL).frames
    assert videos.shape[0] == 4


def test_every_step_runs_in_a_cache_context_per_branch(pipe, monkeypatch):
    contexts = []
    original = type(pipe.transformer).cache_context

    def spy(self, name, **kwargs):
        contexts.append((name, kwargs["step_index"], kwargs["num_inference_steps"]))
        return original(self, name, **kwargs)

    monkeypatch.setattr(type(pipe.transformer), "cache_context", spy)
    run(pipe, guidance_scale=4.0)
    assert contexts == [(branch, i, 3) for i in range(3) for branch in ("cond", "uncond")]


def test_a_guidance_interval_skips_the_unconditional_branch_at_low_noise(pipe, monkeypatch):
    plain = run(pipe, num_inference_steps=4)
    pipe.enable_guidance_interval(0.0)  # every level: guidance at every step, the plain output
    assert torch.equal(run(pipe, num_inference_steps=4), plain)
    contexts = []
    original = type(pipe.transformer).cache_context

    def spy(self, name, **kwargs):
        contexts.append((name, kwargs["step_index"]))
        return original(self, name, **kwargs)

    monkeypatch.setattr(type(pipe.transformer), "cache_context", spy)
    pipe.enable_guidance_interval(0.5)
    limited = run(pipe, num_inference_steps=4)
    guided = [i for i, sigma in enumerate(pipe.scheduler.sigmas[:4].tolist()) if sigma >= 0.5]
    assert 0 < len(guided) < 4  # the late, low-noise steps run one branch
    assert [c for c in contexts if c[0] == "uncond"] == [("uncond", i) for i in guided]
    assert len(contexts) == 4 + len(guided) and not torch.equal(limited, plain)
    pipe.disable_guidance_interval()
    assert pipe.guidance_interval is None and torch.equal(run(pipe, num_inference_steps=4), plain)
    with pytest.raises(ReelkitError, match="guidance interval"):
        pipe.enable_guidance_interval(0.6, 0.4)


def test_guidance_reuse_skips_the_unconditional_branch_and_reuses_the_last_difference(pipe, monkeypatch):
    steps = 6
    plain = run(pipe, num_inference_steps=steps)
    uncond_steps = []
    original = type(pipe.transformer).cache_context

    def spy(self, name, **kwargs):
        if name == "uncond":
            uncond_steps.append(kwargs["step_index"])
        return original(self, name, **kwargs)

    monkeypatch.setattr(type(pipe.transformer), "cache_context", spy)
    pipe.enable_guidance_reuse(0.5, steps=[1])
    reused = run(pipe, num_inference_steps=steps)
    sigmas = pipe.scheduler.sigmas[:steps].tolist()
    low = [i for i, sigma in enumerate(sigmas) if sigma < 0.5]
    assert low and low[0] > 2  # step 1 given, then every other low-noise step from the first
    expected = [1] + low[::2]
    assert pipe.guidance_reused_steps == tuple(expected)
    assert uncond_steps == [i for i in range(steps) if i not in expected]
    assert not torch.equal(reused, plain) and (reused - plain).abs().max() < 0.5

    # a reused step is the guided output with the unconditional branch rebuilt from the kept difference
    deltas = []

    def record(self, latents, t, pe, npe, g, i, n, guidance_delta=None):
        out = TextToVideoPipeline.predict(self, latents, t, pe, npe, g, i, n, guidance_delta)
        deltas.append((i, guidance_delta, out[1]))
        return out

    monkeypatch.setattr(pipe, "predict", record.__get__(pipe))
    run(pipe, num_inference_steps=steps)
    kept = {i: delta for i, given, delta in deltas if given is None}
    for i, given, _ in deltas:
        if given is not None:
            assert torch.equal(given, kept[max(k for k in kept if k < i)])
    monkeypatch.undo()

    pipe.disable_guidance_reuse()
    assert pipe.guidance_reuse is None and torch.equal(run(pipe, num_inference_steps=steps), plain)
    assert pipe.guidance_reused_steps == ()
    with pytest.raises(ReelkitError, match="noise level in"):
        pipe.enable_guidance_reuse(0.0)
    with pytest.raises(ReelkitError, match="once every >= 2 steps"):
        pipe.enable_guidance_reuse(0.5, every=1)


def test_callback_sees_every_step_and_can_replace_latents(pipe):
    steps = []

    def callback(pipeline, i, t, tensors):
        steps.append(i)
        return {"latents": torch.zeros_like(tensors["latents"])}

    zeroed = run(pipe, callback_on_step_end=callback, output_type="latent")
    assert steps == [0, 1, 2] and zeroed.abs().max() == 0


def test_a_diffusers_ddim_scheduler_drops_in(pipe):
    ddim = TextToVideoPipeline(pipe.transformer, pipe.vae, pipe.text_encoder, pipe.tokenizer,
                               DDIMScheduler(prediction_type="v_prediction"))
    ddim.set_progress_bar_config(disable=True)
    assert run(ddim).shape == (1, 3, 5, 32, 32)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"prompt": "a red circel"}, PromptError, "did you mean circle"),
    ({"prompt": ""}, PromptError, "empty"),
    ({"negative_prompt": "a dragon"}, PromptError, "'dragon'"),
    ({"num_frames": 6}, ShapeError, "not 1+4k"),
    ({"height": 24}, ShapeError, "multiples of 16"),
    ({"guidance_scale": 0.5}, ReelkitError, "at least 1"),
    ({"num_inference_steps": 0}, ReelkitError, "at least 1"),
    ({"output_type": "gif"}, ReelkitError, "output_type"),
])
def test_bad_inputs_raise_clear_errors(pipe, kwargs, error, message):
    with pytest.raises(error, match=message.replace("+", r"\+")):
        run(pipe, **kwargs)


def test_save_and_load_without_a_vae_folder(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    import shutil

    shutil.rmtree(tmp_path / "p" / "vae")
    loaded = load_text_to_video(tmp_path / "p", vae=pipe.vae)
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(run(loaded).numpy(), run(pipe).numpy())


def test_a_folder_records_which_bundled_vae_it_decodes_with(pipe, tmp_path):
    import json

    from reelkit.loading import save_pipeline_without_vae
    from reelkit.vae import load_cvvae

    folder = save_pipeline_without_vae(TextToVideoPipeline(pipe.transformer, load_cvvae("cvvae_f4"), pipe.text_encoder,
                                                           pipe.tokenizer, pipe.scheduler), tmp_path / "p")
    assert not (folder / "vae").exists()
    assert json.loads((folder / "model_index.json").read_text())["_reelkit_vae"] == "cvvae_f4"
    assert load_text_to_video(folder).vae.spatial_compression == 4
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_reelkit_vae": "no_such_vae"}))
    with pytest.raises(ReelkitError, match="unknown bundled VAE"):
        load_text_to_video(folder)


def test_loading_a_folder_that_is_not_a_pipeline_fails_cleanly(tmp_path):
    with pytest.raises(ReelkitError, match="no model_index.json"):
        load_text_to_video(tmp_path)
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(ReelkitError, match="cannot load"):
        load_text_to_video(tmp_path)


# ------------------------------------------------------------------ guidance-distilled students (T2V-Turbo)

def test_lcm_steps_are_t2v_turbos_timesteps_on_the_50_level_grid():
    from reelkit.pipelines.text_to_video import lcm_sigmas

    # T2V-Turbo's 4 steps: timesteps 999, 759, 519, 279 of 1000 (grid levels 0, 12, 24, 36 of 50)
    assert [round(s * 1000) for s in lcm_sigmas(4)] == [1000, 755, 511, 266]
    assert len(lcm_sigmas(8)) == 8 and lcm_sigmas(1) == [1.0]
    assert [round(s, 4) for s in lcm_sigmas(8)] == [round(1 - i * 6 * 0.999 / 49, 4) for i in range(8)]


def test_a_student_runs_one_call_per_step_with_the_guidance_as_input(monkeypatch):
    student = tiny_pipeline(open_gates=True, student=True)
    assert student.guidance_distilled and student.consistency_sampling
    calls = []
    forward = student.transformer.forward
    monkeypatch.setattr(student.transformer, "forward",
                        lambda *a, **k: calls.append(k.get("guidance")) or forward(*a, **k))
    for steps in (1, 4, 8):
        calls.clear()
        video = run(student, num_inference_steps=steps, guidance_scale=6.0)
        assert video.shape == (1, 3, 5, 32, 32) and len(calls) == steps
        assert all(torch.equal(w, torch.tensor([6.0])) for w in calls)
    assert not torch.equal(run(student, guidance_scale=2.0), run(student, guidance_scale=8.0))
    assert torch.equal(run(student, seed=1), run(student, seed=1))  # the re-noising is seeded
    with pytest.raises(ReelkitError, match="at most lcm_origin_steps=50"):
        run(student, num_inference_steps=51)


def test_a_teacher_refuses_guidance_input_and_a_student_needs_it():
    x, text = torch.randn(1, 8, 2, 4, 4), torch.randn(1, 24, 16)
    with pytest.raises(ShapeError, match="no guidance embedding"):
        tiny_pipeline().transformer(x, 500.0, text, guidance=5.0)
    with pytest.raises(ShapeError, match="guidance-distilled: pass guidance"):
        tiny_pipeline(student=True).transformer(x, 500.0, text)
