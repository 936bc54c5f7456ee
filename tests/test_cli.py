import json
import subprocess
import sys

import pytest

from reelkit.data.video_io import probe_video, read_video


def test_world_render_writes_an_mp4_with_the_requested_shape(cli, tmp_path):
    out = tmp_path / "clip.mp4"
    code, stdout, _ = cli("world", "render", "a red circle moving right", "--seed", "0", "--frames", "17",
                          "--size", "64", "-o", out)
    assert code == 0
    assert "labels:" in stdout and '"motion": "right"' in stdout
    video = read_video(out)
    assert video.shape == (3, 17, 64, 64)
    assert probe_video(out).codec == "h264"


def test_world_render_random_gif_sheet_and_rectangle(cli, tmp_path):
    code, stdout, _ = cli("world", "render", "--random", "--seed", "4", "--frames", "9", "--size", "32",
                          "--width", "48", "-o", tmp_path / "c.gif", "--sheet", tmp_path / "s.png")
    assert code == 0 and "caption:" in stdout
    assert read_video(tmp_path / "c.gif").shape == (3, 9, 32, 48)
    assert (tmp_path / "s.png").stat().st_size > 0


def test_frame_counts_round_down_with_a_notice(cli, tmp_path):
    code, _, err = cli("world", "render", "--random", "--frames", "19", "--size", "16", "-o", tmp_path / "c.mp4")
    assert code == 0
    assert "notice: 19 frames is not 1+4k; using 17" in err
    assert read_video(tmp_path / "c.mp4").shape[1] == 17


@pytest.mark.parametrize("args, needle", [
    (["world", "render", "--random", "--bogus"], "No such option: --bogus"),
    (["world", "render", "--random", "--size", "60"], "60 is not a positive multiple of 8 (try 56 or 64)"),
    (["world", "render", "--random", "--frames", "0"], "at least 1 frame"),
    (["world", "render", "--random", "--frames", "many"], "'--frames'"),
    (["world", "render", "a red circel movng left"], "'circel' (did you mean circle?)"),
    (["world", "render", "a red circle", "--random"], "PROMPT or --random"),
    (["world", "render"], "PROMPT or --random"),
    (["world", "render", "--random", "-o", "clip.avi"], "must end in .mp4 or .gif or .webm"),
    (["world", "explode"], "No such command 'explode'"),
    (["world", "render", "--random", "--frames", "100001", "--size", "4096"], "GiB of memory is free"),
    (["video", "info", "missing.mp4"], "missing.mp4: no such file"),
    (["video", "convert", "missing.mp4", "-o", "x.mp4"], "no such file"),
    (["bench", "nosuite"], "unknown bench suite 'nosuite'; known suites:"),
    (["bench", "world", "--json", "out.txt"], "must end in .json"),
])
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, monkeypatch, args, needle, one_line_error):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(*cli(*args)[::2])
    assert needle in line
    assert not (tmp_path / "clip.avi").exists()


def test_empty_and_corrupt_files(cli, tmp_path, one_line_error):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "junk.webm").write_bytes(b"\x1a\x45\xdf\xa3" + bytes(500))
    assert "empty" in one_line_error(*cli("video", "info", tmp_path / "empty.mp4")[::2])
    assert "junk.webm" in one_line_error(*cli("video", "convert", tmp_path / "junk.webm", "-o",
                                              tmp_path / "x.mp4")[::2])
    assert not (tmp_path / "x.mp4").exists()


def test_a_failed_render_keeps_the_existing_output(cli, tmp_path):
    out = tmp_path / "keep.mp4"
    out.write_bytes(b"precious")
    cli("world", "render", "a red blob", "-o", out)
    assert out.read_bytes() == b"precious"


def test_video_convert_and_info(cli, tmp_path):
    cli("world", "render", "--random", "--frames", "17", "--size", "64", "-o", tmp_path / "c.mp4", "--fps", "16")
    code, stdout, _ = cli("video", "convert", tmp_path / "c.mp4", "-o", tmp_path / "d.mp4", "--fps", "8",
                          "--size", "32")
    assert code == 0 and "9 frames, 32x32" in stdout
    code, stdout, _ = cli("video", "info", tmp_path / "d.mp4")
    assert code == 0 and "32x32, 8 fps, 9 frames" in stdout
    code, _, _ = cli("video", "convert", tmp_path / "c.mp4", "-o", tmp_path / "sheet.png")
    assert code == 0 and (tmp_path / "sheet.png").exists()


def test_info_and_vocab_and_help(cli):
    code, stdout, _ = cli("info")
    assert code == 0 and "diffusers" in stdout and "bundled models" in stdout
    code, stdout, _ = cli("world", "vocab")
    assert code == 0 and "crimson" in stdout
    code, stdout, _ = cli("world", "sample", "--count", "3")
    assert code == 0 and len(stdout.strip().splitlines()) == 3
    for sub in ([], ["world"], ["world", "render"], ["video"], ["bench"]):
        code, stdout, _ = cli(*sub, "--help")
        assert code == 0 and "Usage" in stdout


def test_installed_entry_point_exits_2_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "reelkit", "world", "render", "a red sqare"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: unknown word in prompt: 'sqare' (did you mean square?)"


@pytest.mark.slow
def test_bench_world_quick_writes_the_report(cli, tmp_path):
    path = tmp_path / "world.json"
    code, stdout, _ = cli("bench", "world", "--quick", "--repeats", "1", "--json", path)
    assert code == 0
    report = json.loads(path.read_text())
    assert report["suite"] == "world"
    assert {"cpu", "cores", "gpu", "torch", "diffusers"} <= set(report["machine"])
    assert report["settings"]["quick"] is True
    methods = [row["method"] for row in report["rows"]]
    assert methods.count("render") == 2 and "read_mp4" in methods
    for row in report["rows"]:
        assert row["latency_s"] > 0 and row["frames_per_s"] > 0
    render = next(row for row in report["rows"] if row["method"] == "render")
    assert render["peak_mem_bytes"] > 3 * 17 * 64 * 64 * 4  # at least the output video
    assert next(row for row in report["rows"] if row["method"] == "read_mp4")["psnr_db"] > 30


def test_no_command_writes_over_its_own_input(cli, one_line_error, tmp_path):
    """`-o` naming the input, an existing folder or a path under a file is refused before any work."""
    from reelkit.data.video_io import write_video
    from reelkit.data.world import render_clip

    clip = tmp_path / "clip.mp4"
    write_video(render_clip(0, 5, 32).video, clip)
    original = clip.read_bytes()
    (tmp_path / "folder.mp4").mkdir()
    for output, message in ((clip, "is also an input"), (tmp_path / "folder.mp4", "is a folder"),
                            (clip / "x.mp4", "is a file")):
        assert message in one_line_error(*cli("video", "convert", clip, "-o", output)[::2])
    assert clip.read_bytes() == original


def test_export_never_replaces_a_file_or_its_own_source(cli, one_line_error, tmp_path):
    from reelkit.vae import build_image_vae

    source = tmp_path / "model"
    build_image_vae(block_out_channels=(8, 8), norm_num_groups=4).save_pretrained(source)
    precious = tmp_path / "notes.txt"
    precious.write_text("keep me")
    assert "not a model folder" in one_line_error(*cli("train", "export", source, "-o", precious)[::2])
    assert precious.read_text() == "keep me"
    assert "being exported" in one_line_error(*cli("train", "export", source, "-o", source)[::2])
    code, _, err = cli("train", "export", source, "-o", tmp_path / "exported")
    assert code == 0, err


def test_an_internal_error_is_one_line_with_exit_code_1_and_debug_shows_it(cli, monkeypatch):
    import pytest

    import reelkit.data.world as world

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(world, "render_clip", broken)
    code, _, err = cli("world", "render", "a red circle", "-o", "/tmp/never.mp4")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "internal error (ZeroDivisionError: a bug)" in lines[0]
    assert "--debug" in lines[0] and "Traceback" not in err
    with pytest.raises(ZeroDivisionError):
        cli("--debug", "world", "render", "a red circle", "-o", "/tmp/never.mp4")


def test_video_info_counts_the_frames_that_decode(cli, tmp_path):
    from reelkit.data.video_io import write_video
    from reelkit.data.world import render_clip

    clip = tmp_path / "clip.mp4"
    write_video(render_clip(0, 17, 32).video, clip)
    code, out, err = cli("video", "info", clip)
    assert code == 0 and "17 frames" in out and "header" not in out


def test_json_files_hold_null_where_a_figure_is_not_finite(tmp_path):
    import json

    from reelkit.files import write_json

    path = write_json(tmp_path / "figures.json", {"psnr_db": float("inf"), "rows": [{"x": float("nan"), "y": 1.5}]})

    def strict(token):
        raise ValueError(token)

    assert json.loads(path.read_text(), parse_constant=strict) == {"psnr_db": None, "rows": [{"x": None, "y": 1.5}]}
