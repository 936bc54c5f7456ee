"""``reelkit generate --parallel``: launched with torchrun, two processes write what one process writes, and bad
settings end every rank with one ``error:`` line and exit code 2 (no hang)."""

from __future__ import annotations

import pytest

from reelkit.data.video_io import read_video

SMALL = ("--frames", "5", "--size", "32", "--steps", "3")
PROMPT = "a red circle moving right"


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_two_processes_write_the_clip_one_process_writes(cli, torchrun, model_dir, tmp_path):
    code, _, err = cli("generate", PROMPT, "-o", tmp_path / "alone.mp4", "--model", model_dir, "--cache", "adacache",
                       *SMALL)
    assert code == 0, err
    done = torchrun("-m", "reelkit", "generate", PROMPT, "-o", tmp_path / "split.mp4", "--model", model_dir,
                    "--cache", "adacache", "--parallel", "ulysses=2", *SMALL)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1  # the group's first rank writes and reports, once
    split, alone = read_video(tmp_path / "split.mp4"), read_video(tmp_path / "alone.mp4")
    assert split.shape == alone.shape == (3, 5, 32, 32)
    # the same clip up to float round-off (each rank multiplies its own slice of the tokens), which H.264 can
    # turn into a few quantisation steps (the files' bytes differed once, in a full-suite run beside a training job)
    assert (split - alone).abs().mean() < 0.01


def test_batch_mode_shares_prompts_and_writes_each_clip_once(torchrun, model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving right\na blue star spinning\n")
    done = torchrun("-m", "reelkit", "generate", "--prompts", prompts, "--out-dir", tmp_path / "out",
                    "--model", model_dir, "--parallel", "ulysses=2", *SMALL)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "0000_a-red-circle-moving-right.mp4", "0001_a-blue-star-spinning.mp4"]


@pytest.mark.parametrize("args, words", [
    (("--size", "16"), "do not split over 2 processes"),
    (("--parallel", "ring=2"), "ring attention needs"),
    (("--parallel", "ulysses=4"), "one prompt runs on one group of 4 processes, not 2"),
    (("--slice", "auto"), "give a chunk count"),
])
def test_bad_parallel_settings_end_every_rank_with_one_error_line(torchrun, model_dir, tmp_path, args, words):
    options = dict(zip(("--frames", "--size", "--steps", "--parallel"), ("5", "32", "2", "ulysses=2"), strict=True))
    options.update(dict(zip(args[::2], args[1::2], strict=True)))
    done = torchrun("-m", "reelkit", "generate", PROMPT, "-o", tmp_path / "x.mp4", "--model", model_dir,
                    *[item for pair in options.items() for item in pair])
    assert done.returncode != 0
    errors = _errors(done.stderr)
    assert len(errors) == 2 and errors[0] == errors[1] and words in errors[0], done.stderr[-3000:]
    # torchrun reports the failed launch with its own traceback; no rank printed one
    assert "[rank" not in done.stderr and "reelkit/" not in done.stderr
    assert not (tmp_path / "x.mp4").exists()


def test_parallel_without_torchrun_is_one_error_line(cli, one_line_error, model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    code, _, err = cli("generate", PROMPT, "-o", tmp_path / "x.mp4", "--model", model_dir, "--parallel", "ulysses=2")
    assert "torchrun --nproc_per_node 2" in one_line_error(code, err)


def test_malformed_parallel_setting_is_one_error_line(cli, one_line_error, model_dir, tmp_path):
    code, _, err = cli("generate", PROMPT, "-o", tmp_path / "x.mp4", "--model", model_dir, "--parallel", "tensor=2")
    assert "ulysses=N or ring=N" in one_line_error(code, err)
