import pytest
import torch
from safetensors.torch import load_file, save_file

from reelkit.data.video_io import read_video, write_frames, write_video
from reelkit.data.world import render_clip


@pytest.fixture
def clip_file(tmp_path):
    path = tmp_path / "in.mp4"
    write_video(render_clip(seed=3, num_frames=17, size=32).video, path, fps=8)
    return path


def test_reconstruct_prints_psnr_ssim_and_writes_side_by_side(cli, clip_file, model_dirs, tmp_path):
    _, cvvae_dir = model_dirs
    out = tmp_path / "side.mp4"
    code, stdout, err = cli("vae", "reconstruct", clip_file, "-o", out, "--size", "32", "--frames", "9",
                            "--model", cvvae_dir)
    assert code == 0, err
    assert "PSNR" in stdout and "SSIM" in stdout and "9 frames -> 3 latent frames" in stdout
    assert read_video(out).shape == (3, 9, 32, 64)  # input | reconstruction


def test_reconstruct_rounds_frames_down_with_a_notice_and_chunks_on_request(cli, clip_file, model_dirs, tmp_path):
    _, cvvae_dir = model_dirs
    code, _, err = cli("vae", "reconstruct", clip_file, "-o", tmp_path / "o.gif", "--size", "32", "--frames", "11",
                       "--model", cvvae_dir, "--chunk-frames", "4", "--tile", "16")
    assert code == 0, err
    assert "notice: 11 frames is not 1+4k; using 9" in err
    assert read_video(tmp_path / "o.gif").shape[1] == 9


def test_an_image_is_reconstructed_as_one_frame(cli, model_dirs, tmp_path):
    _, cvvae_dir = model_dirs
    frames = write_frames(render_clip(seed=1, num_frames=1, size=32).video, tmp_path / "frames")
    image = next(frames.glob("*.png"))
    code, stdout, err = cli("vae", "reconstruct", image, "-o", tmp_path / "o.mp4", "--size", "32",
                            "--model", cvvae_dir)
    assert code == 0, err
    assert "1 frames -> 1 latent frames" in stdout
    assert "is an image; treating it as 1 frame" in err


def test_encode_then_decode_round_trip(cli, clip_file, model_dirs, tmp_path):
    _, cvvae_dir = model_dirs
    latents = tmp_path / "z.safetensors"
    code, _, err = cli("vae", "encode", clip_file, "-o", latents, "--size", "32", "--frames", "17",
                       "--model", cvvae_dir)
    assert code == 0, err
    assert load_file(latents)["latents"].shape == (8, 5, 4, 4)
    code, _, err = cli("vae", "decode", latents, "-o", tmp_path / "d.mp4", "--model", cvvae_dir)
    assert code == 0, err
    assert read_video(tmp_path / "d.mp4").shape == (3, 17, 32, 32)
    code, _, err = cli("vae", "decode", latents, "-o", tmp_path / "i.mp4", "--model", cvvae_dir, "--image-mode")
    assert code == 0, err
    assert read_video(tmp_path / "i.mp4").shape[1] == 5


def test_bad_inputs_exit_2_with_one_line(cli, clip_file, model_dirs, tmp_path, one_line_error):
    image_dir, cvvae_dir = model_dirs
    line = one_line_error(*cli("vae", "reconstruct", clip_file, "-o", tmp_path / "o.mp4", "--model", image_dir)[::2])
    assert "not a CVVAE" in line
    line = one_line_error(*cli("vae", "reconstruct", tmp_path / "absent.mp4", "-o", tmp_path / "o.mp4",
                               "--model", cvvae_dir)[::2])
    assert "no such file" in line
    (tmp_path / "corrupt.mp4").write_bytes(b"not a video at all")
    one_line_error(*cli("vae", "reconstruct", tmp_path / "corrupt.mp4", "-o", tmp_path / "o.mp4",
                        "--model", cvvae_dir)[::2])
    line = one_line_error(*cli("vae", "reconstruct", clip_file, "-o", tmp_path / "o.mp4", "--size", "30",
                               "--model", cvvae_dir)[::2])
    assert "multiple of 8" in line
    line = one_line_error(*cli("vae", "reconstruct", clip_file, "-o", tmp_path / "o.txt", "--model", cvvae_dir)[::2])
    assert ".mp4" in line
    line = one_line_error(*cli("vae", "reconstruct", clip_file, "-o", tmp_path / "o.mp4", "--model", cvvae_dir,
                               "--chunk-frames", "6")[::2])
    assert "multiple of 4" in line


def test_decode_refuses_latents_that_do_not_fit_the_model(cli, model_dirs, tmp_path, one_line_error):
    _, cvvae_dir = model_dirs
    save_file({"latents": torch.zeros(4, 2, 4, 4)}, str(tmp_path / "four.safetensors"))
    line = one_line_error(*cli("vae", "decode", tmp_path / "four.safetensors", "-o", tmp_path / "o.mp4",
                               "--model", cvvae_dir)[::2])
    assert "4 channels; this VAE expects 8" in line
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    line = one_line_error(*cli("vae", "decode", tmp_path / "junk.safetensors", "-o", tmp_path / "o.mp4",
                               "--model", cvvae_dir)[::2])
    assert "not a reelkit latents file" in line
    save_file({"other": torch.zeros(8, 2, 4, 4)}, str(tmp_path / "other.safetensors"))
    one_line_error(*cli("vae", "decode", tmp_path / "other.safetensors", "-o", tmp_path / "o.mp4",
                        "--model", cvvae_dir)[::2])


def test_train_vae_bad_config_exits_2(cli, tmp_path, one_line_error):
    line = one_line_error(*cli("train", "vae", "--config", tmp_path / "absent.yaml")[::2])
    assert "no such config file" in line


def test_export_writes_fp16_safetensors_that_load_back(cli, model_dirs, tmp_path, one_line_error):
    image_dir, cvvae_dir = model_dirs
    for source, name in ((cvvae_dir, "CVVAE"), (image_dir, "AutoencoderKL")):
        out = tmp_path / f"bundle_{name}"
        out.mkdir()
        (out / "config.json").write_text("{}")  # an older export
        (out / "stale.txt").write_text("replaced in place")
        code, stdout, err = cli("train", "export", source, "-o", out)
        assert code == 0, err
        assert f"({name}, fp16)" in stdout and not (out / "stale.txt").exists()
        weights = load_file(out / "diffusion_pytorch_model.safetensors")
        assert all(t.dtype == torch.float16 for t in weights.values())
    from reelkit.vae import load_cvvae

    assert load_cvvae(tmp_path / "bundle_CVVAE").dtype == torch.float32  # loaded for CPU inference
    line = one_line_error(*cli("train", "export", tmp_path, "-o", tmp_path / "x")[::2])
    assert "not a trained model folder" in line


def test_eval_ceiling_reads_round_trips_of_either_vae_class(cli, model_dirs, tmp_path, one_line_error):
    """`reelkit eval ceiling` prints the judge's reading of the round trips through an image VAE or a CV-VAE."""
    for folder in model_dirs:
        code, out, err = cli("eval", "ceiling", folder, "--clips", 2, "--frames", 5, "--size", 32)
        assert code == 0, err
        assert "2 held-out clips of 5x32px" in out and "shape" in out and "count" in out and "PSNR" in out
    one_line_error(*cli("eval", "ceiling", model_dirs[0], "--clips", 0)[::2])
    one_line_error(*cli("eval", "ceiling", model_dirs[0], "--clips", 2, "--size", 30)[::2])
    one_line_error(*cli("eval", "ceiling", tmp_path / "absent")[::2])
    (tmp_path / "judge.json").write_text("{}")
    one_line_error(*cli("eval", "ceiling", tmp_path)[::2])
