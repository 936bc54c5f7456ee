"""The ladder recipe on tiny settings: trains, judges against CPU-minutes, resumes, warm-starts, refuses."""

import json

import pytest
import yaml

from reelkit.errors import ReelkitError
from reelkit.train.ladder import LadderConfig, build_slice_cache, load_slice_cache, run

TINY = {"size": 32, "cache_clips": 6, "model": {"block_out_channels": [16, 16, 16], "norm_num_groups": 8},
        "text_encoder": {"dim": 16, "num_layers": 1, "num_heads": 2}, "batch_size": 2, "max_steps": 2,
        "warmup_steps": 1, "save_every": 2, "log_every": 1, "eval_every": 2, "eval_prompts": 2, "eval_steps": 2}


def write_config(tmp_path, name="run", **overrides):
    config = {**TINY, "output_dir": str(tmp_path / name), "latent_cache": str(tmp_path / "cache"), **overrides}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_rung_trains_judges_and_exports(tmp_path):
    model = run(write_config(tmp_path))
    assert {p.name for p in model.iterdir()} == {"unet", "text_encoder", "tokenizer", "ladder.json"}
    rows = (tmp_path / "run" / "adherence.csv").read_text().splitlines()
    assert rows[0] == "step,cpu_minutes,shape,color,count,mean" and rows[1].startswith("2,")
    assert 0 <= float(rows[1].split(",")[2]) <= 1
    assert (tmp_path / "run" / "best" / "unet").is_dir()  # the first reading is the best so far
    assert (tmp_path / "run" / "samples" / "step_000002.png").stat().st_size > 0
    assert json.loads((model / "ladder.json").read_text())["world"] == {"rung": 1}

    # resumed with more steps: the CPU-minutes go on from where the last run stopped
    run(write_config(tmp_path, max_steps=4))
    rows = (tmp_path / "run" / "adherence.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "4"]
    assert float(rows[2].split(",")[1]) >= float(rows[1].split(",")[1])

    # the next rung warm-starts from this one; a model of another width is refused
    run(write_config(tmp_path, "next", world={"rung": 2}, init_from=str(model), latent_cache=str(tmp_path / "c2")))
    wide = write_config(tmp_path, "wide", model={"block_out_channels": [16, 16, 32], "norm_num_groups": 8},
                        init_from=str(model))
    with pytest.raises(ReelkitError, match="does not match the config"):
        run(wide)


def test_slots_control_and_a_resume_that_no_longer_matches(tmp_path):
    run(write_config(tmp_path, conditioning="slots", max_steps=1, save_every=1, eval_every=0, object_weight=4.0))
    assert (tmp_path / "run" / "model" / "slots.pt").is_file()
    with pytest.raises(ReelkitError, match="checkpoint does not match"):
        run(write_config(tmp_path, conditioning="slots", max_steps=2, eval_every=0,
                         model={"block_out_channels": [16, 16, 32], "norm_num_groups": 8}))


def test_pooled_condition_modulates_the_resnets(tmp_path):
    model = {"block_out_channels": [16, 16, 16], "norm_num_groups": 8, "class_embed_type": "projection",
             "projection_class_embeddings_input_dim": 16, "resnet_time_scale_shift": "scale_shift"}
    folder = run(write_config(tmp_path, model=model, eval_every=1, max_steps=1))
    import torch
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    assert unet.class_embedding is not None and torch.isfinite(unet.class_embedding.linear_1.weight).all()


def test_the_cache_resumes_and_refuses_other_settings(tmp_path):
    from reelkit.data.ladder import RUNGS
    from reelkit.vae.image_vae import load_image_vae

    vae = load_image_vae("image_vae_f4")
    folder = build_slice_cache(tmp_path / "c", RUNGS[1], 32, 3, vae, shard_size=2)
    latents, captions, labels, coverage = load_slice_cache(folder, 3)
    assert latents.shape[0] == 3 and len(captions) == 3 and labels.shape == (3, 3)
    assert coverage.shape == (3, 8, 8) and 0 < coverage.max() <= 1 and coverage.min() == 0
    with pytest.raises(ReelkitError, match="other settings"):
        build_slice_cache(tmp_path / "c", RUNGS[2], 32, 3, vae, shard_size=2)


@pytest.mark.parametrize("overrides, message", [
    ({"world": {"rung": 7}}, "rung must be one of"),
    ({"world": {"rung": 3}}, "trains stills"),
    ({"world": {"object_scale": 0}}, "object_scale"),
    ({"world": "rung one"}, "world"),
    ({"size": 40}, "multiple of 16"),
    ({"conditioning": "slots", "world": {"rung": 2}}, "slots names one object"),
    ({"conditioning": "clip"}, "conditioning must be"),
    ({"object_weight": -1}, "object_weight"),
])
def test_settings_the_world_or_the_recipe_cannot_take_are_one_error(tmp_path, overrides, message):
    from reelkit.train.common import load_config

    with pytest.raises(ReelkitError, match=message):
        load_config(LadderConfig, write_config(tmp_path, **overrides))


def test_swapped_word_probe_reads_a_trained_rung(tmp_path):
    from reelkit.train.ladder_probe import load_ladder_model, swapped_word_probe

    folder = run(write_config(tmp_path, max_steps=1, eval_every=0))
    denoiser, config = load_ladder_model(folder)
    result = swapped_word_probe(denoiser, config, levels=(0.01, 0.9), prompts=3, steps=2)
    assert set(result) == {0.01, 0.9}
    for figures in result.values():
        assert set(figures) == {"true_shown", "swapped_shown", "swapped_kept"}
        assert all(0 <= v <= 1 for v in figures.values())
    # from almost no noise every model keeps the shape it is given, whatever the word: drawing, not binding
    assert result[0.01]["true_shown"] == result[0.01]["swapped_kept"]
    with pytest.raises(ReelkitError, match="noise levels"):
        swapped_word_probe(denoiser, config, levels=(1.5,), prompts=1, steps=1)
    with pytest.raises(ReelkitError, match="not a ladder model folder"):
        load_ladder_model(tmp_path)
