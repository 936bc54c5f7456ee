"""The ladder's slices of the world: what each rung draws, and what it refuses."""

import pytest
import torch

from reelkit.data.ladder import RUNGS, WorldSlice, render_slice, slice_scene
from reelkit.data.world import object_coverage, sample_scene
from reelkit.errors import ReelkitError


def test_rung_one_is_one_static_object_on_solid_stills():
    for seed in range(40):
        scene, caption = slice_scene(seed, RUNGS[1])
        assert len(scene.objects) == 1 and scene.background.kind == "solid"
        assert scene.objects[0].motion == "static"
        assert caption
    clip = render_slice(3, RUNGS[1], size=32)
    assert clip.video.shape == (3, 1, 32, 32)


def test_the_full_rungs_draw_every_kind_and_count():
    scenes = [slice_scene(seed, RUNGS[4])[0] for seed in range(80)]
    assert {len(s.objects) for s in scenes} == {1, 2}
    assert {s.background.kind for s in scenes} == {"solid", "gradient", "texture"}
    assert any(o.motion != "static" for s in scenes for o in s.objects)
    assert all(o.motion == "static" for seed in range(40) for o in slice_scene(seed, RUNGS[2])[0].objects)


def test_same_seed_same_still_and_captions_name_the_scene():
    a, b = render_slice(7, RUNGS[1]), render_slice(7, RUNGS[1])
    assert torch.equal(a.video, b.video) and a.caption == b.caption
    from reelkit.data.captions import parse_prompt

    parsed = parse_prompt(a.caption).objects[0]
    assert parsed.shape == a.scene.objects[0].shape and parsed.color == a.scene.objects[0].color


def test_object_scale_grows_the_object_and_keeps_it_in_frame():
    base = sample_scene(5, object_scale=1.0)
    big = sample_scene(5, object_scale=1.5)
    for small, large in zip(base.objects, big.objects, strict=True):
        assert large.radius[0] == pytest.approx(1.5 * small.radius[0])
    one = WorldSlice(num_frames=1, object_counts=(1,), backgrounds=("solid",), moving=False, object_scale=1.5)
    for seed in range(20):
        cover = object_coverage(slice_scene(seed, one)[0], 1, 64)
        assert cover[:, 0].max() < 0.5 and cover[:, -1].max() < 0.5  # nothing cut by the frame's edge
        assert cover[:, :, 0].max() < 0.5 and cover[:, :, -1].max() < 0.5


def test_a_slice_from_a_config_mapping():
    s = WorldSlice.from_dict({"rung": 1, "object_scale": 1.5})
    assert s.num_frames == 1 and s.object_counts == (1,) and s.object_scale == 1.5
    assert WorldSlice.from_dict({"rung": 3, "backgrounds": "gradient"}).backgrounds == ("gradient",)


@pytest.mark.parametrize("values, message", [
    ({"rung": 5}, "rung must be one of"),
    ({"rung": True}, "rung must be one of"),
    ({"num_frames": 4}, r"1 \+ 4k"),
    ({"object_counts": [3]}, "object_counts"),
    ({"backgrounds": ["plaid"]}, "backgrounds must be among"),
    ({"object_scale": 9}, "object_scale"),
    ({"colour": "red"}, "unknown world slice keys: colour"),
])
def test_settings_the_world_cannot_render_are_refused(values, message):
    with pytest.raises(ReelkitError, match=message):
        WorldSlice.from_dict(values)
