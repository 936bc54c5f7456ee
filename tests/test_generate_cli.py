import subprocess
import sys

import pytest
import torch

from reelkit.data.video_io import read_video, write_video
from reelkit.data.world import render_clip
from reelkit.models.judge import WorldJudge

SMALL = ("--frames", "5", "--size", "32", "--steps", "2")


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "judge"
    torch.manual_seed(0)
    WorldJudge(channels=(8, 8, 8, 16), feature_dim=8).save_pretrained(folder)
    return folder


def test_generate_writes_the_clip_and_a_sheet(cli, model_dir, tmp_path):
    out = tmp_path / "out.mp4"
    code, stdout, err = cli("generate", "a red circle moving right", "-o", out, "--model", model_dir,
                            "--sheet", tmp_path / "s.png", "--seed", "3", *SMALL)
    assert code == 0, err
    assert read_video(out).shape == (3, 5, 32, 32) and (tmp_path / "s.png").is_file()
    assert "2 steps, guidance 5, seed 3" in stdout


def test_limited_guidance_runs_one_branch_on_the_late_steps(cli, model_dir, tmp_path):
    code, stdout, err = cli("generate", "a red circle", "-o", tmp_path / "out.mp4", "--model", model_dir,
                            "--guidance-interval", "0.6", *SMALL)
    assert code == 0, err
    assert read_video(tmp_path / "out.mp4").shape == (3, 5, 32, 32)


def test_guidance_reuse_on_step_rehash_reports_the_reused_steps(cli, model_dir, tmp_path):
    code, stdout, err = cli("generate", "a red circle", "-o", tmp_path / "out.mp4", "--model", model_dir,
                            "--rehash", "1", "--guidance-reuse", "0.5", *SMALL)
    assert code == 0, err
    assert "guidance reuse: 1 of 2 steps reused" in stdout  # the one rehash step
    assert read_video(tmp_path / "out.mp4").shape == (3, 5, 32, 32)


def test_batch_mode_writes_one_clip_per_prompt_and_resumes(cli, model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving right\na blue star spinning\n\na green square\n")
    code, stdout, err = cli("generate", "--prompts", prompts, "--out-dir", tmp_path / "out", "--model", model_dir,
                            *SMALL)
    assert code == 0, err
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["0000_a-red-circle-moving-right.mp4", "0001_a-blue-star-spinning.mp4",
                     "0002_a-green-square.mp4"]
    (tmp_path / "out" / files[1]).unlink()
    code, stdout, err = cli("generate", "--prompts", prompts, "--out-dir", tmp_path / "out", "--model", model_dir,
                            *SMALL)
    assert code == 0 and "wrote 1 clip(s)" in stdout and "skipped 2" in stdout


def test_batch_mode_shards_prompts_across_two_processes(model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(["a red circle", "a blue star", "a green square", "a pink cross", "a cyan triangle"]))
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                             "-m", "reelkit", "generate", "--prompts", str(prompts), "--out-dir", str(tmp_path / "o"),
                             "--model", str(model_dir), *SMALL], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "process 0/2: wrote 3 clip(s)" in result.stdout and "process 1/2: wrote 2 clip(s)" in result.stdout
    assert len(list((tmp_path / "o").glob("*.mp4"))) == 5


def test_a_clip_depends_on_its_line_not_on_the_sharding(cli, model_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue star\n")
    cli("generate", "--prompts", prompts, "--out-dir", tmp_path / "batch", "--model", model_dir, *SMALL)
    code, _, err = cli("generate", "a blue star", "-o", tmp_path / "single.mp4", "--seed", "1", "--model", model_dir,
                       *SMALL)
    assert code == 0, err
    batch, single = read_video(tmp_path / "batch" / "0001_a-blue-star.mp4"), read_video(tmp_path / "single.mp4")
    # equal up to float round-off, which H.264 can turn into a few quantisation steps on this noisy tiny model
    assert (batch - single).abs().mean() < 0.01


@pytest.mark.parametrize("args, message", [
    (("a red circel",), "did you mean circle"),
    (("",), "the prompt is empty"),
    (("a red circle", "--frames", "6"), "not 1+4k"),
    (("a red circle", "--size", "40"), "multiples of 16"),
    (("a red circle", "--guidance", "0.5"), "--guidance must be a finite number in"),
    (("a red circle", "--guidance", "nan"), "--guidance must be a finite number in"),
    (("a red circle", "--seed", "-1"), "--seed must lie in"),
    (("a red circle", "--fps", "inf"), "--fps must be a finite number in"),
    (("a red circle", "--steps", "0"), "at least 1"),
    (("a red circle", "--guidance-interval", "1.5"), "--guidance-interval is the lowest noise level"),
    (("a red circle", "--guidance-interval", "0"), "--guidance-interval is the lowest noise level"),
    (("a red circle", "--guidance-reuse", "1.5"), "--guidance-reuse is the noise level"),
    (("a red circle", "--guidance-reuse", "0", "--recipe", "r.json"), "--recipe sets the steps"),
    (("a red circle", "-o", "missing/dir/out.mp4"), "no such folder"),
    (("a red circle", "-o", "out.avi"), "must end in"),
    (("--prompts", "nope.txt", "--out-dir", "o"), "no such prompts file"),
    (("a red circle", "--prompts", "p.txt"), "batch mode takes"),
    ((), "give a PROMPT"),
    (("a red circle", "--model", "not/a/folder"), "not a text-to-video pipeline folder"),
])
def test_bad_input_is_one_line_and_exit_code_2(cli, one_line_error, model_dir, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    model = () if "--model" in args else ("--model", model_dir)
    line = one_line_error(*cli("generate", "--steps", "1", *model, *args)[::2])
    assert message in line


def test_a_bad_line_in_a_prompts_file_names_its_line(cli, one_line_error, model_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na purple dragon\n")
    line = one_line_error(*cli("generate", "--prompts", prompts, "--out-dir", tmp_path / "o", "--model",
                               model_dir)[::2])
    assert "prompt 2 ('a purple dragon')" in line
    assert not (tmp_path / "o").exists()  # checked before any work


def test_eval_adherence_prints_asked_and_seen_per_attribute(cli, judge_dir, tmp_path):
    clip = tmp_path / "clip.mp4"
    write_video(render_clip(0, 17, 64, prompt="a red circle moving right").video, clip)
    code, stdout, err = cli("eval", "adherence", clip, "--prompt", "a red circle moving right", "--judge", judge_dir)
    assert code == 0, err
    assert "red / " in stdout and "circle / " in stdout and "agreement: shape" in stdout


@pytest.mark.parametrize("args, message", [
    (("missing.mp4", "--prompt", "a red circle"), "missing.mp4"),
    (("clip.mp4", "--prompt", "a red circel"), "did you mean circle"),
])
def test_eval_adherence_bad_input(cli, one_line_error, judge_dir, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    write_video(render_clip(0, 5, 32).video, tmp_path / "clip.mp4")
    assert message in one_line_error(*cli("eval", "adherence", *args, "--judge", judge_dir)[::2])


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    from reelkit.pipelines.text_to_video import tiny_pipeline

    folder = tmp_path_factory.mktemp("models") / "tiny_student"
    tiny_pipeline(student=True).save_pretrained(folder)
    return folder


def test_a_distilled_student_defaults_to_four_steps(cli, student_dir, tmp_path):
    out = tmp_path / "s.mp4"
    code, stdout, err = cli("generate", "a red circle moving right", "-o", out, "--model", student_dir, "--frames", "5",
                            "--size", "32")
    assert code == 0, err
    assert "4 steps, guidance 5" in stdout and read_video(out).shape == (3, 5, 32, 32)
    code, stdout, err = cli("generate", "a red circle moving right", "-o", out, "--model", student_dir, "--frames", "5",
                            "--size", "32", "--steps", "60")
    assert code == 2 and "at most lcm_origin_steps=50" in err
