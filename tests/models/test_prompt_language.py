"""The words people write: size and speed words are accepted with a notice, background colours and textures on
objects are refused, and the pipeline, the batch generator, the world and the judge all read prompts the same way."""

import logging

import pytest
import torch

from reelkit.data.captions import UNRENDERED_WORDS, VOCABULARY, drop_unrendered_words, parse_prompt
from reelkit.data.world import random_scene
from reelkit.errors import PromptError
from reelkit.models.text import build_tokenizer, prepare_prompt
from reelkit.pipelines.text_to_video import tiny_pipeline


@pytest.mark.parametrize("prompt, clean", [
    ("a small orange square rotating", "a orange square rotating"),
    ("a tiny red circle moving quickly to the right", "a red circle moving to the right"),
    ("A BIG star, falling fast!", "A star, falling!"),
    ("a large cyan cross bouncing slowly and a little pink box rising", "a cyan cross bouncing and a pink box rising"),
])
def test_size_and_speed_words_are_dropped_with_one_notice(prompt, clean, caplog):
    assert drop_unrendered_words(prompt)[0] == clean
    with caplog.at_level(logging.WARNING, logger="reelkit"):
        assert prepare_prompt(prompt, build_tokenizer()) == clean
    notices = [r.getMessage() for r in caplog.records]
    assert len(notices) == 1 and "ignored" in notices[0]


def test_the_notice_names_the_kinds_of_word_dropped():
    assert "one size;" in drop_unrendered_words("a big red circle")[1]
    assert "one speed;" in drop_unrendered_words("a red circle falling fast")[1]
    assert "one size and one speed" in drop_unrendered_words("a big red circle falling fast")[1]
    assert drop_unrendered_words("a red circle getting bigger") == ("a red circle getting bigger", None)


def test_the_parser_and_the_world_read_them_as_the_plain_prompt():
    assert parse_prompt("a small orange square rotating quickly") == parse_prompt("an orange square rotating")
    assert parse_prompt("a huge ball getting smaller").objects[0].motion == "shrink"  # "smaller" is a motion


def test_the_tokenizer_vocabulary_does_not_change():
    assert not set(UNRENDERED_WORDS) & VOCABULARY  # bundled text encoders keep their token ids


@pytest.mark.parametrize("prompt, word", [
    ("a black circle moving right", "black"),
    ("a white square and a red star", "white"),
    ("a navy triangle on grass", "navy"),
    ("a dark red circle", "dark"),
])
def test_a_background_colour_given_to_an_object_is_refused(prompt, word):
    with pytest.raises(PromptError, match=f"'{word}' is a background colour.*objects are red, orange"):
        parse_prompt(prompt)
    with pytest.raises(PromptError, match="background colour"):
        prepare_prompt(prompt, build_tokenizer())


@pytest.mark.parametrize("prompt, word, example", [
    ("a brick square", "brick", "a red square on a brick wall"),
    ("a grassy green star", "grassy", "a green circle on grass"),
    ("a red circle and a lunar cross", "lunar", "a red cross on the surface of the moon"),
])
def test_a_background_texture_given_to_an_object_is_refused(prompt, word, example):
    with pytest.raises(PromptError, match=f"'{word}' is a background texture.*e.g. '{example}'"):
        parse_prompt(prompt)


def test_every_world_caption_passes_the_object_checks():
    for seed in range(2000):
        parse_prompt(random_scene(seed)[1])


def test_background_colours_still_name_backgrounds():
    parsed = parse_prompt("a red circle on a black background")
    assert parsed.background.colors == ("black",) and parsed.objects[0].color == "red"
    assert parse_prompt("on a navy to white gradient, a pink star spins").background.kind == "gradient"


def test_misspelt_size_words_get_suggestions():
    with pytest.raises(PromptError, match="'smal' .did you mean small"):
        parse_prompt("a smal red circle")


def test_the_pipeline_generates_the_plain_prompts_video():
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)

    def run(prompt):
        return pipe(prompt, num_frames=5, height=16, width=16, num_inference_steps=2,
                    generator=torch.Generator().manual_seed(0)).frames

    torch.testing.assert_close(run("a tiny red circle moving right quickly"), run("a red circle moving right"))
    with pytest.raises(PromptError, match="background colour"):
        run("a white circle moving right")


def test_the_cli_prints_the_notice_and_renders(cli, tmp_path):
    code, out, err = cli("world", "render", "a small green triangle falling slowly", "-o", tmp_path / "w.mp4",
                         "--frames", "5", "--size", "32")
    assert code == 0, err
    assert "notice: the demo world draws every object at one size and one speed" in err
    assert "green triangle" in out


def test_the_cli_refuses_a_background_colour_on_an_object(cli, one_line_error, tmp_path):
    code, out, err = cli("world", "render", "a black star spinning", "-o", tmp_path / "w.mp4")
    assert "background colour" in one_line_error(code, err)
    assert not (tmp_path / "w.mp4").exists()
