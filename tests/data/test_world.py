import math

import pytest
import torch

from reelkit.data.captions import COLORS, MOTIONS, SHAPES, PartialBackground, PartialObject
from reelkit.data.world import BACKGROUND_RGB, render_clip, render_scene, sample_scene
from reelkit.errors import ShapeError


def coverage(scene, frames=9, size=64):
    """Per-frame masks of where the single object is: pixels that differ from the empty background."""
    empty = type(scene)((), scene.background)
    diff = (render_scene(scene, frames, size) - render_scene(empty, frames, size)).abs().sum(0)  # (T, H, W)
    return diff > 0.05


def centroid(mask):
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return xs.float().mean().item(), ys.float().mean().item()


def test_same_seed_same_clip_bit_for_bit():
    a, b = render_clip(7, 17, 64), render_clip(7, 17, 64)
    assert torch.equal(a.video, b.video)
    assert a.caption == b.caption and a.labels == b.labels


def test_different_seeds_differ():
    assert not torch.equal(render_clip(1, 9, 32).video, render_clip(2, 9, 32).video)


@pytest.mark.parametrize("frames, size", [(1, 8), (5, 32), (17, (48, 80)), (33, (96, 64))])
def test_any_multiple_of_8_and_any_1_plus_4k(frames, size):
    clip = render_clip(3, frames, size)
    height, width = (size, size) if isinstance(size, int) else size
    assert clip.video.shape == (3, frames, height, width)
    assert clip.video.dtype == torch.float32
    assert clip.video.min() >= -1 and clip.video.max() <= 1


def test_content_is_independent_of_resolution_and_length():
    small, large = render_clip(5, 9, 32), render_clip(5, 17, 64)
    assert small.labels == large.labels and small.caption == large.caption
    # Frame 8 of 17 and frame 4 of 9 are both tau = 0.5; downsampled, they look alike.
    half = torch.nn.functional.avg_pool2d(large.video[:, 8], 2)
    assert (half - small.video[:, 4]).abs().mean() < 0.05


@pytest.mark.parametrize("size", [0, 7, 60, 65])
def test_sizes_must_be_multiples_of_8(size):
    with pytest.raises(ShapeError, match="multiple of 8"):
        render_clip(0, 9, size)


@pytest.mark.parametrize("frames", [0, 2, 16, 18])
def test_frame_counts_must_be_1_plus_4k(frames):
    with pytest.raises(ShapeError, match="1\\+4k"):
        render_clip(0, frames, 32)


def test_edges_are_anti_aliased():
    scene = sample_scene(0, [PartialObject("circle", "red", "static")], PartialBackground("solid", ("black",)))
    frame = (render_scene(scene, 1, 64)[:, 0] + 1) / 2  # (3, H, W) in [0, 1]
    red = frame[0]
    partial = ((red > BACKGROUND_RGB["black"][0] + 0.05) & (red < 0.85)).sum().item()
    assert partial > 10  # a ring of partially covered pixels around the disc


def test_vocabulary_sizes():
    assert len(SHAPES) >= 5 and len(COLORS) >= 8 and len(MOTIONS) >= 8
    assert {"left", "right", "up", "down", "grow", "shrink", "rotate", "bounce", "static"} <= set(MOTIONS)


def test_one_or_two_objects_and_all_background_kinds():
    scenes = [sample_scene(s) for s in range(200)]
    assert {len(s.objects) for s in scenes} == {1, 2}
    assert {s.background.kind for s in scenes} == {"solid", "gradient", "texture"}
    assert {o.shape for s in scenes for o in s.objects} == set(SHAPES)
    assert {o.color for s in scenes for o in s.objects} == set(COLORS)
    assert {o.motion for s in scenes for o in s.objects} == set(MOTIONS)


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_is_visible_and_in_frame(shape):
    motion = "static" if shape == "circle" else "rotate"
    scene = sample_scene(11, [PartialObject(shape, "yellow", motion)], PartialBackground("solid", ("navy",)))
    masks = coverage(scene)
    assert all(m.sum() > 30 for m in masks)
    # Nothing touches the border: the object stays wholly inside the frame.
    assert not masks[:, 0].any() and not masks[:, -1].any() and not masks[:, :, 0].any()


def test_texture_backgrounds_come_from_natural_photos():
    clip = render_clip(0, 1, 64, prompt="a red square resting on a brick wall")
    assert clip.scene.background.texture == "brick"
    assert clip.video.std() > 0.1


@pytest.mark.parametrize("motion, check", [
    ("right", lambda a, b: b[0] - a[0] > 8),
    ("left", lambda a, b: a[0] - b[0] > 8),
    ("down", lambda a, b: b[1] - a[1] > 8),
    ("up", lambda a, b: a[1] - b[1] > 8),
    ("static", lambda a, b: math.dist(a, b) < 0.5),
])
def test_motions_move_the_object_the_way_they_say(motion, check):
    for seed in range(5):
        scene = sample_scene(seed, [PartialObject("square", "red", motion)], PartialBackground("solid", ("grey",)))
        masks = coverage(scene)
        assert check(centroid(masks[0]), centroid(masks[-1])), (seed, motion)


def test_grow_shrink_rotate_bounce():
    def masks(motion, shape="square"):
        return coverage(sample_scene(4, [PartialObject(shape, "red", motion)], PartialBackground("solid", ("grey",))))

    grow, shrink = masks("grow"), masks("shrink")
    assert grow[-1].sum() > 2.5 * grow[0].sum() and shrink[0].sum() > 2.5 * shrink[-1].sum()
    rotate = masks("rotate", "cross")
    assert rotate[0].sum() == pytest.approx(rotate[4].sum().item(), rel=0.1)  # same area...
    assert (rotate[0] ^ rotate[4]).sum() > 20  # ...different pose
    heights = [centroid(m)[1] for m in masks("bounce")]
    assert heights[0] == pytest.approx(max(heights), abs=0.5)  # starts on the ground
    assert min(heights) < heights[0] - 5  # and leaves it
