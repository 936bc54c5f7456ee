import json
import subprocess
import sys

import pytest
import torch
import yaml

from reelkit.errors import ReelkitError
from reelkit.objectives.consistency import consistency_estimate, pseudo_huber, solver_grid, teacher_solver_step
from reelkit.pipelines.text_to_video import load_text_to_video, tiny_pipeline
from reelkit.rewards import DemoImageTextReward, DemoVideoTextReward
from reelkit.train.distill import DistillConfig, ProcessRoles, build_student, export_student, run

pytestmark = pytest.mark.usefixtures("one_thread")
TINY_REWARD = {"channels": (8, 8, 16), "embed_dim": 16, "text_dim": 16, "text_layers": 1, "text_heads": 2,
               "size": 16}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A saved tiny teacher (gates open, so its output depends on every layer) with its VAE."""
    folder = tmp_path_factory.mktemp("teacher") / "t2v"
    tiny_pipeline(open_gates=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reward_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rewards")
    torch.manual_seed(0)
    DemoImageTextReward(**TINY_REWARD).save_pretrained(root / "image")
    DemoVideoTextReward(**TINY_REWARD, num_frames=5).save_pretrained(root / "video")
    return root / "image", root / "video"


def write_config(tmp_path, teacher_dir, reward_dirs, **overrides):
    config = {"output_dir": str(tmp_path / "run"), "teacher": str(teacher_dir),
              "latent_cache": str(tmp_path.parent / f"{tmp_path.name}_cache"), "cache_clips": 8, "num_frames": 5,
              "size": 32, "num_ddim_timesteps": 10, "lora_rank": 4, "image_reward": str(reward_dirs[0]),
              "video_reward": str(reward_dirs[1]), "reward_frames": 2, "reward_batch_size": 1, "batch_size": 2,
              "learning_rate": 1e-2, "max_steps": 3, "save_every": 2, "log_every": 1, **overrides}
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def inputs(batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 8, 2, 4, 4, generator=generator), torch.rand(batch, generator=generator) * 0.9 + 0.05,
            torch.randn(batch, 24, 16, generator=generator))


def test_the_student_starts_as_its_teacher():
    teacher = tiny_pipeline(open_gates=True).transformer
    student, trainable = build_student(teacher, DistillConfig(lora_rank=4))
    x, sigma, text = inputs()
    with torch.no_grad():
        expected = teacher(x, sigma * 1000, text).sample
        for w in (1.0, 7.0):  # the guidance embedding starts at zero: every w gives the teacher
            assert torch.equal(student.eval()(x, sigma * 1000, text, guidance=torch.full((2,), w)).sample, expected)
    names = {n for n, p in student.named_parameters() if p.requires_grad}
    assert "time_embedding.cond_proj.weight" in names and all("lora" in n or "cond_proj" in n for n in names)
    assert len(trainable) == len(names)
    _, everything = build_student(teacher, DistillConfig(lora_rank=0))
    assert len(everything) > len(trainable)


def test_merged_export_reproduces_the_lora_student(tmp_path):
    teacher_pipe = tiny_pipeline(open_gates=True)
    student, trainable = build_student(teacher_pipe.transformer, DistillConfig(lora_rank=4))
    torch.manual_seed(3)
    for parameter in trainable:
        parameter.data.normal_(0, 0.2)  # as if trained: LoRA B and the guidance embedding non-zero
    x, sigma, text = inputs()
    w = torch.tensor([3.0, 6.0])
    with torch.no_grad():
        expected = student.eval()(x, sigma * 1000, text, guidance=w).sample
    folder = export_student(student, teacher_pipe, tmp_path / "student")
    loaded = load_text_to_video(folder, vae=teacher_pipe.vae)
    assert loaded.guidance_distilled and loaded.consistency_sampling
    weights = set(loaded.transformer.state_dict())
    assert "time_embedding.cond_proj.weight" in weights and not any("lora" in k for k in weights)
    with torch.no_grad():
        merged = loaded.transformer(x, sigma * 1000, text, guidance=w).sample
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=1e-5)


def test_teacher_solver_step_is_a_guided_euler_step():
    teacher = tiny_pipeline(open_gates=True).transformer
    x, sigma, text = inputs()
    uncond = torch.zeros_like(text)
    sigma_next = sigma - 0.05
    with torch.no_grad():
        cond_v = teacher(x, sigma * 1000, text).sample
        uncond_v = teacher(x, sigma * 1000, uncond).sample
        w = torch.tensor([1.0, 4.0])
        stepped = teacher_solver_step(teacher, x, sigma, sigma_next, text, uncond, w)
    velocity = uncond_v + w.view(-1, 1, 1, 1, 1) * (cond_v - uncond_v)
    torch.testing.assert_close(stepped, x + (sigma_next - sigma).view(-1, 1, 1, 1, 1) * velocity)
    torch.testing.assert_close(stepped[0], (x + (sigma_next - sigma).view(-1, 1, 1, 1, 1) * cond_v)[0])


def test_consistency_function_meets_the_boundary_and_grid_ends_at_zero():
    student, _ = build_student(tiny_pipeline(open_gates=True).transformer, DistillConfig(lora_rank=0))
    x, _, text = inputs()
    with torch.no_grad():
        at_zero = consistency_estimate(student.eval(), x, torch.zeros(2), text, torch.full((2,), 5.0))
    assert torch.equal(at_zero, x)  # f(x, 0) = x
    grid = solver_grid(tiny_pipeline().scheduler.config, 50)
    assert len(grid) == 51 and grid[0] == 1 and grid[-1] == 0 and (grid[:-1] > grid[1:]).all()


def test_pseudo_huber_is_quadratic_near_zero_and_linear_far_away():
    zero = torch.zeros(4)
    assert pseudo_huber(zero, zero, 1e-3) == 0
    assert pseudo_huber(torch.full((4,), 1e-4), zero, 1e-3) == pytest.approx(1e-8 / 2e-3, rel=1e-2)
    assert pseudo_huber(torch.full((4,), 2.0), zero, 1e-3) == pytest.approx(2.0 - 1e-3, rel=1e-4)


def test_process_roles_follow_the_config():
    split = DistillConfig(cd_processes=[0], image_reward_processes=[0], video_reward_processes=[1])
    first, second = ProcessRoles(split, 0, 2), ProcessRoles(split, 1, 2)
    assert (first.cd, first.image, first.video) == (True, True, False)
    assert (second.cd, second.image, second.video) == (False, False, True)
    everyone = ProcessRoles(DistillConfig(), 1, 2)
    assert (everyone.cd, everyone.image, everyone.video) == (True, True, True)
    assert not ProcessRoles(DistillConfig(beta_vid=0), 0, 1).video  # a zero weight computes nothing
    with pytest.raises(ReelkitError, match=r"video_reward_processes names ranks \[7\]"):
        ProcessRoles(DistillConfig(video_reward_processes=[7]), 0, 2)
    with pytest.raises(ReelkitError, match="computes no term"):
        ProcessRoles(DistillConfig(cd_processes=[0], image_reward_processes=[0], video_reward_processes=[0]), 1, 2)


def test_recipe_trains_resumes_and_exports_a_few_step_student(tmp_path, teacher_dir, reward_dirs, capsys):
    config = write_config(tmp_path, teacher_dir, reward_dirs, max_steps=4, time_limit_minutes=0)
    run(config)  # the time limit stops it after one step, with a checkpoint
    state = tmp_path / "run" / "checkpoint" / "trainer_state.json"
    assert json.loads(state.read_text())["step"] == 1
    folder = run(write_config(tmp_path, teacher_dir, reward_dirs, max_steps=4))
    out = capsys.readouterr().out
    assert "resumed from" in out and "CD, image reward, video reward" in out
    assert json.loads(state.read_text())["step"] == 4
    rows = (tmp_path / "run" / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,loss_cd,reward_image,reward_video,seconds_per_step" and len(rows) == 5
    assert all(float(row.split(",")[1]) > 0 and float(row.split(",")[3]) != 0 for row in rows[1:])
    student = load_text_to_video(folder)
    assert student.guidance_distilled and type(student.scheduler).__name__ == "FlowMatchLCMScheduler"
    assert student.transformer.time_embedding.cond_proj.weight.abs().sum() > 0  # trained and saved
    for steps in (1, 4, 8):
        video = student("a red circle moving right", num_frames=5, height=32, width=32, num_inference_steps=steps,
                        generator=torch.Generator().manual_seed(0)).frames
        assert video.shape == (1, 3, 5, 32, 32) and torch.isfinite(video).all()


def test_ema_target_and_l2_loss_run(tmp_path, teacher_dir, reward_dirs):
    folder = run(write_config(tmp_path, teacher_dir, reward_dirs, max_steps=2, target="ema", loss="l2",
                              beta_img=0, beta_vid=0, lora_rank=0, skip_steps=2))
    assert (folder / "transformer" / "config.json").is_file()


@pytest.mark.parametrize("override, message", [
    ({"loss": "l1"}, "loss must be one of huber, l2"),
    ({"target": "frozen"}, "target must be one of online, ema"),
    ({"guidance_min": 9.0}, "guidance_min <= guidance_max"),
    ({"beta_vid": -1.0}, "beta_vid must be >= 0"),
    ({"skip_steps": 10}, "skip_steps must be in"),
    ({"learning_rat": 1.0}, "unknown config keys learning_rat"),
])
def test_config_errors_are_one_line(tmp_path, teacher_dir, reward_dirs, cli, one_line_error, override, message):
    config = write_config(tmp_path, teacher_dir, reward_dirs, **override)
    assert message in one_line_error(*cli("train", "distill", "--config", config)[::2])


def test_missing_reward_and_teacher_are_one_line_errors(tmp_path, teacher_dir, reward_dirs, cli, one_line_error):
    config = write_config(tmp_path, teacher_dir, reward_dirs, video_reward=str(tmp_path / "nope"))
    assert "no such reward model folder" in one_line_error(*cli("train", "distill", "--config", config)[::2])
    config = write_config(tmp_path, tmp_path / "no_teacher", reward_dirs)
    assert "not a text-to-video pipeline folder" in one_line_error(*cli("train", "distill", "--config", config)[::2])


def test_two_processes_split_the_terms_between_them(tmp_path, teacher_dir, reward_dirs):
    config = write_config(tmp_path, teacher_dir, reward_dirs, max_steps=2, cd_processes=[0],
                          image_reward_processes=[0], video_reward_processes=[1], threads=1)
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                             "-m", "reelkit", "train", "distill", "--config", str(config)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 process(es)" in result.stdout and "this one computes CD, image reward" in result.stdout
    assert (tmp_path / "run" / "model" / "model_index.json").is_file()
