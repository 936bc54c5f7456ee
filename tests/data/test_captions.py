import numpy as np
import pytest

from reelkit.data.captions import VOCABULARY, parse_prompt, tokenize, write_caption
from reelkit.data.world import render_clip, sample_scene
from reelkit.errors import PromptError


def parsed_labels(caption):
    parsed = parse_prompt(caption)
    return [(o.shape, o.color, o.motion) for o in parsed.objects], parsed.background


@pytest.mark.parametrize("seed", range(300))
def test_every_caption_parses_back_to_its_labels(seed):
    clip_scene = sample_scene(seed)
    caption = write_caption(clip_scene.objects, clip_scene.background, np.random.default_rng([seed, 1]))
    objects, background = parsed_labels(caption)
    assert objects == [(o.shape, o.color, o.motion) for o in clip_scene.objects], caption
    if background.kind is not None:  # some captions leave the background unsaid
        assert background.kind == clip_scene.background.kind, caption
        assert set(background.colors) == set(clip_scene.background.colors), caption
        assert background.texture == clip_scene.background.texture, caption


def test_captions_vary_in_words_and_order():
    captions = [render_clip(s, 1, 8).caption for s in range(200)]
    assert len(set(captions)) == 200
    assert any(c.startswith(("on ", "against ", "over ")) for c in captions)  # background first
    assert any(", " in c.split(" on ")[0] and not c.startswith(("on", "against", "over")) for c in captions)
    words = {w for c in captions for w in tokenize(c)}
    assert {"crimson", "ball", "slides"} & words and {"gray", "grey"} & words


@pytest.mark.parametrize("prompt, expected", [
    ("a red circle moving right", [("circle", "red", "right")]),
    ("a crimson ball slides to the right on a grey background", [("circle", "red", "right")]),
    ("on grass, a violet rhombus is spinning", [("diamond", "purple", "rotate")]),
    ("a box, emerald, getting smaller", [("square", "green", "shrink")]),
    ("a golden star rises while a cobalt plus does not move",
     [("star", "yellow", "up"), ("cross", "blue", "static")]),
    ("a circle and a red square", [("circle", None, None), ("square", "red", None)]),
    ("falling, a pink triangle", [("triangle", "pink", "down")]),
])
def test_prompts_parse_to_labels(prompt, expected):
    assert parsed_labels(prompt)[0] == expected


def test_backgrounds_parse():
    assert parse_prompt("a red dot on a navy to black gradient").background.colors == ("navy", "black")
    assert parse_prompt("a red dot against a gray backdrop").background.kind == "solid"
    assert parse_prompt("a red dot on the moon").background.texture == "moon"


def test_unknown_words_are_named_with_suggestions():
    with pytest.raises(PromptError) as error:
        parse_prompt("a red circel zooming rigth movng")
    message = str(error.value)
    assert "'circel' (did you mean circle?)" in message and "'rigth' (did you mean right?)" in message
    assert "'movng' (did you mean moving?)" in message
    assert "'zooming'" in message and "\n" not in message


@pytest.mark.parametrize("prompt, match", [
    ("a red circle, a blue square and a green star", "1 or 2 objects"),
    ("a red square moving left and right", "belongs to no object"),
    ("a red square moving left, rising", "two motions"),
    ("a red circle rotating", "rotating circle"),
    ("a red dot on grass on a grey background", "texture"),
])
def test_impossible_scenes_are_refused(prompt, match):
    with pytest.raises(PromptError, match=match):
        parse_prompt(prompt)


def test_prompt_attributes_are_kept_and_the_rest_drawn_from_the_seed():
    a = render_clip(1, 1, 8, prompt="a blue square")
    b = render_clip(2, 1, 8, prompt="a blue square")
    assert a.scene.objects[0].shape == b.scene.objects[0].shape == "square"
    assert a.caption == "a blue square"
    assert len({render_clip(s, 1, 8, prompt="a blue square").scene.objects[0].motion for s in range(20)}) > 3


def test_vocabulary_is_lower_case_words():
    assert all(w.isalpha() and w.islower() for w in VOCABULARY)
