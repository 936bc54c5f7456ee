"""Every launch command written in a config's header parses: its config loads with its key=value overrides (so
an ablation written as one line in a header cannot silently rot)."""

import importlib
import shlex
from pathlib import Path

import pytest

from reelkit.cli.train import RECIPES
from reelkit.train.common import load_config, parse_overrides

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def header_commands(path: Path) -> list[list[str]]:
    commands = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("# ")
        if text.startswith("reelkit train") and "--config" in text:
            commands.append(shlex.split(text.split("  #")[0]))
    return commands


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_header_command_loads_its_config(path, monkeypatch):
    monkeypatch.chdir(path.parents[1])
    commands = header_commands(path)
    assert commands, f"{path.name} has no launch command in its header"
    for words in commands:
        recipe = importlib.import_module(RECIPES[words[2]].module)
        config_class = next(v for k, v in vars(recipe).items() if k.endswith("Config") and isinstance(v, type)
                            and v.__module__ == recipe.__name__)
        options = {"output_dir": None, "max_steps": None, "init_from": None}
        rest = words[words.index("--config") + 2:]
        pairs = []
        while rest:
            word = rest.pop(0)
            if word.startswith("--"):
                options[word[2:].replace("-", "_")] = rest.pop(0)
            else:
                pairs.append(word)
        config = load_config(config_class, words[words.index("--config") + 1],
                             **parse_overrides(pairs), **{k: v for k, v in options.items() if v is not None})
        assert config.output_dir
