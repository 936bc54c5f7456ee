"""``reelkit train``: one command per training recipe, built from one table, and ``export``.

(No ``from __future__ import annotations`` here: the recipe commands' option help is built per recipe, so their
annotations must be evaluated where they are defined.)
"""


import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from reelkit.cli.app import app
from reelkit.cli.common import console, same_path
from reelkit.errors import ReelkitError

train_app = typer.Typer(help="Training recipes (YAML configs; accelerate for several processes).",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")



@dataclass(frozen=True)
class Recipe:
    module: str  # a reelkit.train module with run(config_path, **overrides) -> Path
    summary: str
    example: str  # the config a user starts from
    result: str  # what the printed path is
    warm_start: bool = False  # the config has init_from


RECIPES = {
    "vae": Recipe("reelkit.train.vae", "Train the image VAE or the CV-VAE (stage set in the config).",
                  "configs/cvvae_f4.yaml", "trained model", warm_start=True),
    "t2v": Recipe("reelkit.train.t2v", "Train the text-to-video teacher (VideoDiT + text encoder) on a latent "
                  "cache it builds once.", "configs/teacher.yaml", "trained pipeline", warm_start=True),
    "ladder": Recipe("reelkit.train.ladder", "Train one rung of the teacher ladder (a text-conditioned U-Net on "
                     "a slice of the world, judged against CPU-minutes).", "configs/ladder_rung1.yaml",
                     "trained rung model", warm_start=True),
    "judge": Recipe("reelkit.train.judge", "Train the demo-world judge (the independent classifier that grades "
                    "generators).", "configs/judge.yaml", "trained judge"),
    "rewards": Recipe("reelkit.train.rewards", "Train the demo rewards (image-text and video-text dual encoders) "
                      "contrastively on the demo world.", "configs/rewards.yaml", "trained rewards"),
    "distill": Recipe("reelkit.train.distill", "Distil a few-step student from the teacher (T2V-Turbo: "
                      "consistency distillation + reward feedback).", "configs/turbo.yaml", "student pipeline"),
    "mardini": Recipe("reelkit.train.mardini", "Train MarDini's planner and generator through the progressive "
                      "stages named in the config.", "configs/mardini.yaml", "MarDini pipeline"),
}
"""The ``reelkit train`` commands: one per recipe, all with the same options."""


def _recipe_command(name: str, recipe: Recipe):
    def command(
        config: Annotated[Path, typer.Option("--config", "-c", help=f"YAML config, e.g. {recipe.example}.")],
        overrides: Annotated[list[str] | None, typer.Argument(
            metavar="KEY=VALUE", help="Override config keys, e.g. learning_rate=1e-3 model.patch_size=4.",
            show_default=False)] = None,
        output_dir: Annotated[str | None, typer.Option(help="Override the config's output_dir.")] = None,
        max_steps: Annotated[int | None, typer.Option(help="Override the config's max_steps.")] = None,
        init_from: Annotated[str | None, typer.Option(
            "--init-from", help="Warm-start from this model or pipeline folder (e.g. the committed asset) when "
                                "OUTPUT_DIR holds no checkpoint.", hidden=not recipe.warm_start)] = None,
    ) -> None:
        from reelkit.train.common import parse_overrides

        options = {"output_dir": output_dir, "max_steps": max_steps, "init_from": init_from}
        values = {**parse_overrides(overrides), **{k: v for k, v in options.items() if v is not None}}
        result = importlib.import_module(recipe.module).run(config, **values)
        console.print(f"{recipe.result}: {result}")

    command.__doc__ = f"{recipe.summary} Resumes from OUTPUT_DIR/checkpoint."
    command.__name__ = f"train_{name}"
    return command


for _name, _recipe in RECIPES.items():
    train_app.command(_name)(_recipe_command(_name, _recipe))


@train_app.command("export")
def train_export(
    model_dir: Annotated[Path, typer.Argument(help="A trained model or pipeline folder, e.g. runs/teacher/model.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Destination folder (fp16 safetensors).")],
) -> None:
    """Re-save a trained model (VAE, judge) or text-to-video pipeline as fp16 safetensors, e.g. into
    src/reelkit/assets/<name> to bundle it."""
    from reelkit.train.common import export_fp16, export_pipeline_fp16

    if output.exists() and same_path(output, model_dir):
        raise ReelkitError(f"{output}: is the folder being exported; export to another folder")
    if output.exists() and not ((output / "config.json").is_file() or (output / "model_index.json").is_file()):
        raise ReelkitError(f"{output}: exists and is not a model folder; refusing to replace it")
    if (model_dir / "model_index.json").is_file():
        export_pipeline_fp16(model_dir, output)
        console.print(f"wrote {output} (pipeline, fp16)")
        return
    from diffusers import AutoencoderKL

    from reelkit.models.judge import WorldJudge
    from reelkit.vae import CVVAE

    classes = {"AutoencoderKL": AutoencoderKL, "CVVAE": CVVAE, "WorldJudge": WorldJudge}
    config = model_dir / "config.json"
    name = json.loads(config.read_text()).get("_class_name") if config.is_file() else None
    if name not in classes:
        raise ReelkitError(f"{model_dir}: not a trained model folder (expected a pipeline or one of "
                           f"{', '.join(classes)})")
    export_fp16(classes[name], model_dir, output)
    console.print(f"wrote {output} ({name}, fp16)")
