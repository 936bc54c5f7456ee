"""Hand-picked bad and odd inputs across every command: each is one ``error:`` line naming the problem,
exit code 2, no traceback, and no file that existed before is changed."""

import hashlib
import json
import shutil

import pytest
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from reelkit.data.video_io import write_video
from reelkit.data.world import render_clip
from reelkit.pipelines.masked_video import save_masked_video_pipeline, tiny_masked_pipeline
from reelkit.vae import build_image_vae


@pytest.fixture(scope="module")
def ws(tmp_path_factory, model_dir):
    """A workspace: a clip, images, tiny models, odd files, an existing output that must survive."""
    root = tmp_path_factory.mktemp("bad_inputs")
    clip = render_clip(0, 9, 32).video
    write_video(clip, root / "clip.mp4")
    data = (root / "clip.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("not a video at all\n")
    (root / "existing.mp4").write_bytes(b"precious")
    pixels = ((clip[:, 0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
    Image.fromarray(pixels).save(root / "frame.png")
    (root / "folder").mkdir()
    (root / "prompts.txt").write_text("a red circle moving right\n")
    (root / "empty_prompts.txt").write_text("\n\n")
    (root / "binary_prompts.txt").write_bytes(bytes(range(256)))
    (root / "latents.safetensors").write_bytes(b"garbage")
    image_vae = build_image_vae(block_out_channels=(8, 16), norm_num_groups=4)
    image_vae.save_pretrained(root / "image_vae")
    (root / "broken_model").mkdir()
    (root / "broken_model" / "config.json").write_text("{not json")
    (root / "mismatched").mkdir()
    config = json.loads((root / "image_vae" / "config.json").read_text())
    config["latent_channels"] = 16
    (root / "mismatched" / "config.json").write_text(json.dumps(config))
    for name in (root / "image_vae").iterdir():
        if name.suffix == ".safetensors":
            (root / "mismatched" / name.name).write_bytes(name.read_bytes())
    pipe = tiny_masked_pipeline()
    save_masked_video_pipeline(pipe.planner, pipe.transformer, root / "mardini")
    for name, values in {
        "empty.yaml": None, "list.yaml": [1, 2], "zero_save.yaml": {"stage": "image_vae", "save_every": 0},
        "neg_steps.yaml": {"stage": "image_vae", "max_steps": -5}, "nan_lr.yaml": {"learning_rate": float("nan")},
        "str_steps.yaml": {"max_steps": "ten"}, "bool_batch.yaml": {"batch_size": True},
        "typo.yaml": {"max_step": 10}, "bad_stage.yaml": {"stage": "audio"},
        "null_size.yaml": {"size": None}, "huge_frames.yaml": {"num_frames": 10**9},
        "ladder_rung9.yaml": {"world": {"rung": 9}}, "ladder_clips.yaml": {"world": {"rung": 4}},
        "ladder_plaid.yaml": {"world": {"rung": 1, "backgrounds": ["plaid"]}},
        "tiny_image.yaml": {"stage": "image_vae", "output_dir": str(root / "run"), "num_frames": 1, "size": 32,
                            "batch_size": 2, "max_steps": 1, "model": {"block_out_channels": [8, 8, 8, 8],
                                                                        "norm_num_groups": 4}},
    }.items():
        (root / name).write_text(yaml.safe_dump(values) if values is not None else "")
    (root / "tiny_t2v").symlink_to(model_dir)
    shutil.copytree(model_dir, root / "nan_t2v")  # a corrupt download: one weight holds NaN
    weights = next((root / "nan_t2v" / "transformer").glob("*.safetensors"))
    tensors = load_file(weights)
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, weights)
    return root


def snapshot(root):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


CASES = [
    # world render
    (["world", "render", "a red circel", "-o", "{ws}/o.mp4"], "did you mean circle"),
    (["world", "render", "a red circle", "-o", "{ws}/o.txt"], "must end in"),
    (["world", "render", "a red circle", "-o", "{ws}/folder"], "must end in"),
    (["world", "render", "a red circle", "-o", "{ws}/clip.mp4/x.mp4"], "is a file"),
    (["world", "render", "a red circle", "-o", "{ws}/o.mp4", "--size", "30"], "multiple of 8"),
    (["world", "render", "a red circle", "-o", "{ws}/o.mp4", "--size", "0"], "multiple of 8"),
    (["world", "render", "a red circle", "-o", "{ws}/o.mp4", "--frames", "0"], "frame"),
    (["world", "render", "a red circle", "-o", "{ws}/o.mp4", "--frames", "100000001", "--size", "4096"], "GiB"),
    (["world", "render", "a red circle", "-o", "{ws}/o.mp4", "--seed", "-1"], "seed"),
    (["world", "render", "a red circle", "-o", "{ws}/o.mp4", "--fps", "inf"], "fps"),
    (["world", "render", "a red circle", "-o", "{ws}/o.mp4", "--fps", "nan"], "fps"),
    (["world", "render", "a red circle", "-o", "{ws}/o.mp4", "--fps", "0"], "fps"),
    (["world", "render", "a red circle", "--size", "abc"], "valid integer"),
    # video
    (["video", "info", "{ws}/absent.mp4"], "no such"),
    (["video", "info", "{ws}/empty.mp4"], "empty"),
    (["video", "info", "{ws}/text.mp4"], "not a readable video"),
    (["video", "convert", "{ws}/clip.mp4", "-o", "{ws}/clip.mp4"], "is also an input"),
    (["video", "convert", "{ws}/clip.mp4", "-o", "{ws}/folder"], "must end in"),
    (["video", "convert", "{ws}/clip.mp4", "-o", "{ws}/x.avi"], "must end in"),
    (["video", "convert", "{ws}/clip.mp4", "-o", "{ws}/o.gif", "--fps", "inf"], "fps"),
    (["video", "convert", "{ws}/clip.mp4", "-o", "{ws}/o.gif", "--fps", "-2"], "fps"),
    (["video", "convert", "{ws}/clip.mp4", "-o", "{ws}/o.gif", "--start", "nan"], "start"),
    (["video", "convert", "{ws}/clip.mp4", "-o", "{ws}/o.gif", "--start", "-1"], "start"),
    (["video", "convert", "{ws}/clip.mp4", "-o", "{ws}/o.gif", "--size", "9223372036854775808"], "size"),
    (["video", "convert", "{ws}/clip.mp4", "-o", "{ws}/o.gif", "--frames", "33"], "only"),
    (["video", "convert", "{ws}/text.mp4", "-o", "{ws}/o.gif"], "not a readable video"),
    (["video", "convert", "{ws}/folder", "-o", "{ws}/o.gif"], "PNG"),
    # vae
    (["vae", "reconstruct", "{ws}/clip.mp4", "-o", "{ws}/clip.mp4", "--size", "32", "--frames", "9"],
     "is also an input"),
    (["vae", "reconstruct", "{ws}/clip.mp4", "-o", "{ws}/o.mp4", "--model", "{ws}/image_vae"], "not a CVVAE"),
    (["vae", "reconstruct", "{ws}/clip.mp4", "-o", "{ws}/o.mp4", "--model", "{ws}/broken_model"], "corrupt config"),
    (["vae", "reconstruct", "{ws}/clip.mp4", "-o", "{ws}/o.mp4", "--size", "36"], "multiple of 8"),
    (["vae", "reconstruct", "{ws}/truncated.mp4", "-o", "{ws}/o.mp4", "--size", "32", "--frames", "9"], "video"),
    (["vae", "decode", "{ws}/latents.safetensors", "-o", "{ws}/o.mp4"], "latents"),
    (["vae", "encode", "{ws}/clip.mp4", "-o", "{ws}/o.mp4"], "must end in"),
    # generate
    (["generate", "a red circle", "--model", "{ws}/tiny_t2v", "-o", "{ws}/o.mp4", "--guidance", "nan"], "guidance"),
    (["generate", "a red circle", "--model", "{ws}/tiny_t2v", "-o", "{ws}/o.mp4", "--guidance", "inf"], "guidance"),
    (["generate", "a red circle", "--model", "{ws}/tiny_t2v", "-o", "{ws}/o.mp4", "--fps", "inf"], "fps"),
    (["generate", "a red circle", "--model", "{ws}/tiny_t2v", "-o", "{ws}/o.mp4", "--seed", "-3"], "seed"),
    (["generate", "a red circle", "--model", "{ws}/tiny_t2v", "-o", "{ws}/o.mp4", "--steps", "0"], "steps"),
    (["generate", "a red circle", "--model", "{ws}/tiny_t2v", "-o", "{ws}/o.mp4", "--frames", "4"], "1+4k"),
    (["generate", "a red circle", "--model", "{ws}/tiny_t2v", "-o", "{ws}/folder"], "must end in"),
    (["generate", "a red circle", "--model", "{ws}/tiny_t2v", "-o", "{ws}/o.mp4", "--frames", "100001",
      "--size", "4096"], "GiB"),
    (["generate", "a purple dragon", "--model", "{ws}/tiny_t2v", "-o", "{ws}/o.mp4"], "unknown word"),
    (["generate", "a red circle", "--model", "{ws}/absent", "-o", "{ws}/o.mp4"], "absent"),
    (["generate", "a red circle", "--model", "{ws}/broken_model", "-o", "{ws}/o.mp4"], "broken_model"),
    (["generate", "a red circle", "--model", "{ws}/nan_t2v", "-o", "{ws}/o.mp4"], "corrupt"),
    (["generate", "--prompts", "{ws}/empty_prompts.txt", "--out-dir", "{ws}/out"], "holds no prompts"),
    (["generate", "--prompts", "{ws}/binary_prompts.txt", "--out-dir", "{ws}/out"], "not a text file"),
    (["generate", "--prompts", "{ws}/prompts.txt", "--out-dir", "{ws}/out", "--sheet", "{ws}/s.png"], "--sheet"),
    (["generate", "--prompts", "{ws}/prompts.txt", "--out-dir", "{ws}/clip.mp4"], "not a folder"),
    (["generate", "a red circle", "--moreg"], "--moreg"),
    # train
    (["train", "vae", "--config", "{ws}/absent.yaml"], "no such config"),
    (["train", "vae", "--config", "{ws}/empty.yaml"], "empty"),
    (["train", "vae", "--config", "{ws}/list.yaml"], "mapping"),
    (["train", "vae", "--config", "{ws}/zero_save.yaml"], "save_every"),
    (["train", "vae", "--config", "{ws}/neg_steps.yaml"], "max_steps"),
    (["train", "vae", "--config", "{ws}/nan_lr.yaml"], "learning_rate"),
    (["train", "vae", "--config", "{ws}/str_steps.yaml"], "max_steps must be int"),
    (["train", "vae", "--config", "{ws}/bool_batch.yaml"], "batch_size must be int"),
    (["train", "vae", "--config", "{ws}/typo.yaml"], "unknown config keys max_step"),
    (["train", "vae", "--config", "{ws}/bad_stage.yaml"], "stage must be"),
    (["train", "vae", "--config", "{ws}/null_size.yaml"], "size may not be empty"),
    (["train", "vae", "--config", "{ws}/huge_frames.yaml"], "num_frames"),
    (["train", "t2v", "--config", "{ws}/typo.yaml"], "unknown config keys max_step"),
    (["train", "ladder", "--config", "{ws}/ladder_rung9.yaml"], "rung must be one of 1, 2, 3, 4"),
    (["train", "ladder", "--config", "{ws}/ladder_clips.yaml"], "trains stills"),
    (["train", "ladder", "--config", "{ws}/ladder_plaid.yaml"], "backgrounds must be among"),
    (["train", "ladder", "--config", "{ws}/nan_lr.yaml"], "learning_rate"),
    (["train", "vae", "--config", "{ws}/tiny_image.yaml", "--init-from", "{ws}/mardini"], "not a AutoencoderKL"),
    (["train", "vae", "--config", "{ws}/tiny_image.yaml", "--init-from", "{ws}/image_vae"],
     "does not match the config's architecture"),
    (["train", "t2v", "--config", "{ws}/zero_save.yaml", "--init-from", "{ws}/image_vae"], "stage"),
    (["train", "export", "{ws}/image_vae", "-o", "{ws}/existing.mp4"], "not a model folder"),
    (["train", "export", "{ws}/image_vae", "-o", "{ws}/image_vae"], "being exported"),
    (["train", "export", "{ws}/folder", "-o", "{ws}/exported"], "not a trained model folder"),
    # calibrate, eval, bench
    (["calibrate", "adacache", "--prompts", "{ws}/prompts.txt", "-o", "{ws}/prompts.txt"], "must end in"),
    (["calibrate", "rehash", "--prompts", "{ws}/absent.txt", "-o", "{ws}/r.json", "--budget", "5"],
     "no such prompts"),
    (["eval", "ceiling", "{ws}/image_vae", "--clips", "0"], "--clips"),
    (["eval", "ceiling", "{ws}/mismatched"], "does not match"),
    (["eval", "adherence", "{ws}/absent.mp4", "-p", "a red circle"], "no such"),
    (["bench", "nothing"], "unknown bench suite"),
    (["bench", "world", "--repeats", "0"], "--repeats"),
    (["bench", "world", "--json", "{ws}/report.txt"], "must end in"),
    # MarDini
    (["interpolate", "{ws}/frame.png", "{ws}/absent.png", "-o", "{ws}/i.mp4", "--model", "{ws}/mardini"], "absent"),
    (["interpolate", "{ws}/frame.png", "{ws}/frame.png", "-o", "{ws}/frame.png"], "must end in"),
    (["animate", "{ws}/frame.png", "-o", "{ws}/a.mp4", "--model", "{ws}/mardini", "--long", "1000000000"],
     "--long"),
    (["animate", "{ws}/frame.png", "-o", "{ws}/a.mp4", "--model", "{ws}/mardini", "--at", "40"], "--at"),
    (["animate", "{ws}/frame.png", "-o", "{ws}/a.mp4", "--model", "{ws}/mardini", "--guidance", "nan"],
     "guidance"),
    (["extend", "{ws}/clip.mp4", "-o", "{ws}/clip.mp4", "--add", "4", "--model", "{ws}/mardini"],
     "is also an input"),
    (["extend", "{ws}/clip.mp4", "-o", "{ws}/e.mp4", "--add", "4", "--long", "17"], "not both"),
    (["extend", "{ws}/clip.mp4", "-o", "{ws}/e.mp4", "--add", "4", "--read-fps", "inf"], "--read-fps"),
]


@pytest.mark.parametrize("args, message", CASES, ids=[" ".join(a[:3]) + f" [{m}]" for a, m in CASES])
def test_bad_input_is_one_error_line_exit_2_and_changes_nothing(cli, one_line_error, ws, args, message):
    before = snapshot(ws)
    code, _, err = cli(*[a.format(ws=ws) for a in args])
    line = one_line_error(code, err)
    assert message.lower() in line.lower(), line
    assert snapshot(ws) == before
