"""The demo world: seeded, procedural, captioned videos that every embedded-default model trains on.

A :class:`Scene` holds 1 or 2 objects (a shape, a colour, a motion) over a solid, gradient or
photo-texture background. Scenes live in normalised units, independent of resolution and length:
positions are fractions of the frame, sizes fractions of its shorter side, and motion runs over
normalised time ``tau`` in ``[0, 1]`` from the first frame to the last. So the same seed gives the
same content at any size (a multiple of 8) and any ``1 + 4k`` frame count, and a 33-frame clip is a
denser sampling of the 17-frame one. Rendering uses signed distance fields with a one-pixel
coverage ramp (anti-aliased edges) and is bit-for-bit deterministic.

>>> from reelkit.data.world import render_clip
>>> clip = render_clip(seed=0, num_frames=17, size=64)
>>> clip.video.shape  # (C, T, H, W) in [-1, 1]
torch.Size([3, 17, 64, 64])
>>> clip = render_clip(seed=0, prompt="a red circle moving right on a grey background")
>>> clip.scene.objects[0].motion
'right'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from reelkit.conventions import as_height_width, check_video_fits, is_valid_frame_count
from reelkit.data.captions import (
    BACKGROUND_COLORS,
    BACKGROUND_KINDS,
    COLORS,
    MOTIONS,
    SHAPES,
    TEXTURES,
    PartialBackground,
    PartialObject,
    parse_prompt,
    write_caption,
)
from reelkit.data.photos import TEXTURE_PHOTOS, load_photo
from reelkit.errors import ShapeError

OBJECT_RGB = {
    "red": (0.90, 0.12, 0.12),
    "orange": (1.00, 0.55, 0.05),
    "yellow": (0.98, 0.88, 0.10),
    "green": (0.15, 0.75, 0.20),
    "cyan": (0.10, 0.85, 0.90),
    "blue": (0.15, 0.30, 0.95),
    "purple": (0.55, 0.20, 0.80),
    "pink": (1.00, 0.45, 0.75),
}
BACKGROUND_RGB = {
    "black": (0.06, 0.06, 0.06),
    "grey": (0.50, 0.50, 0.50),
    "white": (0.95, 0.95, 0.95),
    "navy": (0.06, 0.09, 0.30),
    "brown": (0.36, 0.23, 0.12),
    "beige": (0.86, 0.80, 0.66),
}
MIN_CONTRAST = 0.45  # RGB distance between an object and its background, so every object stays visible


def _regular_star(points: int, outer: float, inner: float) -> tuple[tuple[float, float], ...]:
    return tuple(
        ((outer if i % 2 == 0 else inner) * math.sin(math.pi * i / points),
         -(outer if i % 2 == 0 else inner) * math.cos(math.pi * i / points))
        for i in range(2 * points)
    )


# Polygon outlines in units of the object's radius, y pointing down (so the triangle points up).
POLYGONS = {
    "square": ((-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)),
    "triangle": ((0.0, -1.1), (0.95, 0.55), (-0.95, 0.55)),
    "diamond": ((0.0, -1.15), (0.65, 0.0), (0.0, 1.15), (-0.65, 0.0)),
    "star": _regular_star(5, 1.15, 0.5),
    "cross": ((-0.3, -1.0), (0.3, -1.0), (0.3, -0.3), (1.0, -0.3), (1.0, 0.3), (0.3, 0.3), (0.3, 1.0),
              (-0.3, 1.0), (-0.3, 0.3), (-1.0, 0.3), (-1.0, -0.3), (-0.3, -0.3)),
}
# Rotational symmetry period: a rotation by this angle leaves the shape unchanged.
SYMMETRY = {"square": math.pi / 2, "triangle": 2 * math.pi / 3, "diamond": math.pi, "star": 2 * math.pi / 5,
            "cross": math.pi / 2}


@dataclass(frozen=True)
class WorldObject:
    """One object and its motion, in normalised units (see the module docstring)."""

    shape: str
    color: str
    motion: str
    rgb: tuple[float, float, float]
    start: tuple[float, float]  # centre (x, y) at tau = 0, fractions of width and height
    end: tuple[float, float]  # centre at tau = 1 (for "bounce": the ground point)
    radius: tuple[float, float]  # at tau = 0 and tau = 1, fraction of the shorter side
    angle: tuple[float, float]  # radians at tau = 0 and tau = 1
    bounces: int = 0
    bounce_height: float = 0.0

    def at(self, tau: float) -> tuple[float, float, float, float]:
        """(x, y, radius, angle) at normalised time ``tau``."""
        x = self.start[0] + (self.end[0] - self.start[0]) * tau
        y = self.start[1] + (self.end[1] - self.start[1]) * tau
        if self.motion == "bounce":
            y = self.start[1] - self.bounce_height * abs(math.sin(math.pi * self.bounces * tau))
        radius = self.radius[0] + (self.radius[1] - self.radius[0]) * tau
        angle = self.angle[0] + (self.angle[1] - self.angle[0]) * tau
        return x, y, radius, angle


@dataclass(frozen=True)
class Background:
    kind: str  # "solid" | "gradient" | "texture"
    colors: tuple[str, ...] = ()  # 1 for solid, 2 for gradient
    texture: str | None = None
    direction: float = 0.0  # gradient angle in radians
    crop: tuple[float, float, float] = (0.0, 0.0, 1.0)  # texture crop (x, y, side) as photo fractions


@dataclass(frozen=True)
class Scene:
    objects: tuple[WorldObject, ...]
    background: Background

    def labels(self) -> dict:
        """Structured labels for evaluation: per object shape/colour/motion, and the background."""
        return {
            "objects": [{"shape": o.shape, "color": o.color, "motion": o.motion} for o in self.objects],
            "background": {"kind": self.background.kind, "colors": list(self.background.colors),
                           "texture": self.background.texture},
        }

    def label_tensors(self, max_objects: int = 2) -> dict[str, torch.Tensor]:
        """Class indices (into SHAPES, COLORS, MOTIONS, ...) padded with -1, ready for a DataLoader."""
        def padded(values: list[int]) -> torch.Tensor:
            return torch.tensor(values + [-1] * (max_objects - len(values)), dtype=torch.long)

        bg = self.background
        return {
            "shape": padded([SHAPES.index(o.shape) for o in self.objects]),
            "color": padded([COLORS.index(o.color) for o in self.objects]),
            "motion": padded([MOTIONS.index(o.motion) for o in self.objects]),
            "num_objects": torch.tensor(len(self.objects)),
            "background_kind": torch.tensor(BACKGROUND_KINDS.index(bg.kind)),
            "background_texture": torch.tensor(TEXTURES.index(bg.texture) if bg.texture else -1),
            "background_colors": torch.tensor(
                [BACKGROUND_COLORS.index(c) for c in bg.colors] + [-1] * (2 - len(bg.colors))),
        }


@dataclass
class WorldClip:
    """A rendered clip: ``video`` is ``(C, T, H, W)`` in ``[-1, 1]``."""

    video: torch.Tensor
    caption: str
    scene: Scene
    seed: int

    @property
    def labels(self) -> dict:
        return self.scene.labels()


def _sample_object(rng: np.random.Generator, want: PartialObject, band: tuple[float, float],
                   taken_colors: set[str], object_scale: float = 1.0) -> WorldObject:
    shape = want.shape or SHAPES[rng.integers(len(SHAPES))]
    if want.color:
        color = want.color
    else:
        free = [c for c in COLORS if c not in taken_colors]
        color = free[rng.integers(len(free))]
    if want.motion:
        motion = want.motion
    else:
        allowed = [m for m in MOTIONS if not (shape == "circle" and m == "rotate")]
        motion = allowed[rng.integers(len(allowed))]
    rgb = tuple(float(np.clip(v + rng.uniform(-0.04, 0.04), 0.0, 1.0)) for v in OBJECT_RGB[color])

    if motion == "grow":
        r0 = rng.uniform(0.06, 0.09)
        radius = (r0, r0 * rng.uniform(1.9, 2.4))
    elif motion == "shrink":
        r1 = rng.uniform(0.06, 0.09)
        radius = (r1 * rng.uniform(1.9, 2.4), r1)
    else:
        r = rng.uniform(0.10, 0.15)
        radius = (r, r)
    radius = (radius[0] * object_scale, radius[1] * object_scale)
    # Keep the whole path inside the frame (and inside this object's band when there are two).
    margin = max(radius) * 1.15 + 0.02
    lo_y, hi_y = band[0] + margin, band[1] - margin
    if hi_y < lo_y:  # a big object in a narrow band: centre it
        lo_y = hi_y = (band[0] + band[1]) / 2
    lo_x, hi_x = margin, 1.0 - margin

    def span(lo: float, hi: float, want_distance: float) -> tuple[float, float]:
        distance = min(want_distance, hi - lo)
        first = rng.uniform(lo, hi - distance)
        return first, first + distance

    x, y = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
    start = end = (x, y)
    bounces, bounce_height = 0, 0.0
    if motion in ("left", "right"):
        a, b = span(lo_x, hi_x, rng.uniform(0.35, 0.6))
        start, end = ((a, y), (b, y)) if motion == "right" else ((b, y), (a, y))
    elif motion in ("up", "down"):
        a, b = span(lo_y, hi_y, rng.uniform(0.35, 0.6))
        start, end = ((x, a), (x, b)) if motion == "down" else ((x, b), (x, a))
    elif motion == "bounce":
        bounce_height = min(rng.uniform(0.2, 0.4), hi_y - lo_y)
        ground = hi_y
        start = end = (x, ground)
        bounces = int(rng.integers(1, 4))
    angle0 = 0.0
    if motion == "rotate":
        turn = SYMMETRY[shape] * rng.uniform(0.35, 0.65) * (1 if rng.integers(2) else -1)
        angle = (angle0, angle0 + turn)
    else:
        angle = (angle0, angle0)
    return WorldObject(shape, color, motion, rgb, start, end, radius, angle, bounces, bounce_height)


def _sample_background(rng: np.random.Generator, want: PartialBackground,
                       objects: Sequence[WorldObject]) -> Background:
    kind = want.kind or BACKGROUND_KINDS[rng.choice(3, p=[0.4, 0.3, 0.3])]
    if kind == "texture":
        texture = want.texture or TEXTURES[rng.integers(len(TEXTURES))]
        side = rng.uniform(0.35, 0.7)
        crop = (rng.uniform(0, 1 - side), rng.uniform(0, 1 - side), side)
        return Background("texture", (), texture, 0.0, crop)

    def visible(name: str) -> bool:
        return all(math.dist(BACKGROUND_RGB[name], o.rgb) >= MIN_CONTRAST for o in objects)

    need = 1 if kind == "solid" else 2
    chosen = list(want.colors)
    candidates = [c for c in BACKGROUND_COLORS if visible(c) and c not in chosen] or \
        [c for c in BACKGROUND_COLORS if c not in chosen]
    while len(chosen) < need:
        pick = candidates[rng.integers(len(candidates))]
        candidates.remove(pick)
        chosen.append(pick)
    direction = float(rng.uniform(0, 2 * math.pi)) if kind == "gradient" else 0.0
    return Background(kind, tuple(chosen), None, direction)


def sample_scene(seed: int, objects: Sequence[PartialObject] | None = None,
                 background: PartialBackground | None = None, object_scale: float = 1.0) -> Scene:
    """Draw a scene from ``seed``; attributes given in ``objects``/``background`` are kept as asked.

    ``object_scale`` multiplies every object's radius (1: the world's default, 0.10-0.15 of the shorter side);
    paths stay inside the frame, so larger objects travel less far.
    """
    if not 0.25 <= object_scale <= 3.0:
        raise ShapeError(f"object_scale must lie in 0.25 .. 3 (1: the world's default), got {object_scale}")
    rng = np.random.default_rng(seed)
    if not objects:
        objects = [PartialObject()] * int(rng.integers(1, 3))
    bands = [(0.0, 1.0)] if len(objects) == 1 else [(0.0, 0.5), (0.5, 1.0)]
    placed: list[WorldObject] = []
    for want, band in zip(objects, bands, strict=True):
        placed.append(_sample_object(rng, want, band, {o.color for o in placed}, object_scale))
    return Scene(tuple(placed), _sample_background(rng, background or PartialBackground(), placed))


# ----------------------------------------------------------------------------------------- rendering

def _polygon_sdf(px: torch.Tensor, py: torch.Tensor, vertices: Sequence[tuple[float, float]]) -> torch.Tensor:
    """Signed distance to a closed polygon (negative inside), evaluated on a grid of points."""
    vx0, vy0 = vertices[0]
    dist2 = (px - vx0) ** 2 + (py - vy0) ** 2
    inside = torch.zeros_like(px, dtype=torch.bool)
    for i, (vix, viy) in enumerate(vertices):
        vjx, vjy = vertices[i - 1]
        ex, ey = vjx - vix, vjy - viy
        wx, wy = px - vix, py - viy
        t = ((wx * ex + wy * ey) / (ex * ex + ey * ey)).clamp(0.0, 1.0)
        dist2 = torch.minimum(dist2, (wx - ex * t) ** 2 + (wy - ey * t) ** 2)
        above, below, left = py >= viy, py < vjy, (ex * wy) > (ey * wx)
        inside ^= (above & below & left) | (~above & ~below & ~left)
    return torch.where(inside, -1.0, 1.0) * dist2.sqrt()


def _coverage(obj: WorldObject, tau: float, height: int, width: int) -> tuple[torch.Tensor, slice, slice]:
    """Anti-aliased coverage in [0, 1] of one object at time ``tau`` (a 1-pixel ramp across the edge),
    over the object's bounding box only: returns (coverage (h, w), rows, columns) of that box."""
    x, y, radius, angle = obj.at(tau)
    radius_px = radius * min(height, width)
    cx, cy = x * width, y * height
    reach = 1.2 * radius_px + 1  # every outline fits in 1.2 radii; +1 for the anti-aliasing ramp
    rows = slice(max(0, math.floor(cy - reach)), min(height, math.ceil(cy + reach)))
    cols = slice(max(0, math.floor(cx - reach)), min(width, math.ceil(cx + reach)))
    dx = (torch.arange(cols.start, cols.stop, dtype=torch.float32) + 0.5).view(1, -1) - cx  # (1, w) pixels
    dy = (torch.arange(rows.start, rows.stop, dtype=torch.float32) + 0.5).view(-1, 1) - cy  # (h, 1)
    cos, sin = math.cos(angle), math.sin(angle)
    u = (cos * dx + sin * dy) / radius_px  # rotate the grid by -angle into the shape's frame
    v = (-sin * dx + cos * dy) / radius_px
    if obj.shape == "circle":
        sdf = (u * u + v * v).sqrt() - 1.0
    else:
        sdf = _polygon_sdf(u, v, POLYGONS[obj.shape])
    return (0.5 - sdf * radius_px).clamp(0.0, 1.0), rows, cols


def _render_background(bg: Background, height: int, width: int) -> torch.Tensor:
    """(3, H, W) in [0, 1]."""
    if bg.kind == "solid":
        return torch.tensor(BACKGROUND_RGB[bg.colors[0]]).view(3, 1, 1).expand(3, height, width).clone()
    if bg.kind == "gradient":
        ys = (torch.arange(height) + 0.5).view(-1, 1) / height - 0.5
        xs = (torch.arange(width) + 0.5).view(1, -1) / width - 0.5
        along = xs * math.cos(bg.direction) + ys * math.sin(bg.direction)
        reach = 0.5 * (abs(math.cos(bg.direction)) + abs(math.sin(bg.direction)))
        w = ((along / reach + 1) / 2).clamp(0, 1)  # (H, W): 0 at one corner, 1 at the opposite
        a, b = (torch.tensor(BACKGROUND_RGB[c]).view(3, 1, 1) for c in bg.colors)
        return a * (1 - w) + b * w
    photo = load_photo(TEXTURE_PHOTOS[bg.texture])
    _, ph, pw = photo.shape
    cx, cy, side = bg.crop
    side_px = side * min(ph, pw)
    # Crop a patch with the clip's aspect ratio, then resize with anti-aliasing.
    crop_h, crop_w = (side_px, side_px * width / height) if width <= height else (side_px * height / width,
                                                                                  side_px)
    crop_w, crop_h = min(crop_w, pw), min(crop_h, ph)
    left = int(cx * (pw - crop_w))
    top = int(cy * (ph - crop_h))
    patch = photo[:, top: top + int(crop_h), left: left + int(crop_w)]
    patch = F.interpolate(patch[None], size=(height, width), mode="bilinear", antialias=True,
                          align_corners=False)[0]
    return (0.2 + 0.5 * patch).clamp(0, 1)  # muted so the objects stand out


def render_scene(scene: Scene, num_frames: int = 17, size: int | tuple[int, int] = 64,
                 progress: Callable[[], None] | None = None) -> torch.Tensor:
    """Render ``scene`` to a ``(3, T, H, W)`` float video in ``[-1, 1]``.

    ``size`` is an int (square) or ``(height, width)``, multiples of 8; ``num_frames`` is ``1 + 4k``.
    ``progress`` is called after each frame.
    """
    height, width = as_height_width(size)
    if not is_valid_frame_count(num_frames):
        raise ShapeError(f"{num_frames} frames is not 1+4k (1, 5, 9, 13, 17, ...)")
    check_video_fits(num_frames, height, width)
    background = _render_background(scene.background, height, width)
    colors = [torch.tensor(obj.rgb).view(3, 1, 1) for obj in scene.objects]
    video = torch.empty(3, num_frames, height, width)
    for t in range(num_frames):
        tau = t / (num_frames - 1) if num_frames > 1 else 0.0
        frame = video[:, t]
        frame.copy_(background)
        for obj, color in zip(scene.objects, colors, strict=True):
            alpha, rows, cols = _coverage(obj, tau, height, width)  # (h, w) over the object's box
            frame[:, rows, cols] = torch.lerp(frame[:, rows, cols], color, alpha)
        if progress is not None:
            progress()
    return video.mul_(2).sub_(1)


def object_coverage(scene: Scene, num_frames: int = 17, size: int | tuple[int, int] = 64) -> torch.Tensor:
    """``(T, H, W)`` in ``[0, 1]``: how much of each pixel the scene's objects cover (their union), the
    frame-by-frame mask of :func:`render_scene` without the background. Losses use it to weight the objects
    a prompt asks for above the background around them."""
    height, width = as_height_width(size)
    coverage = torch.zeros(num_frames, height, width)
    for t in range(num_frames):
        tau = t / (num_frames - 1) if num_frames > 1 else 0.0
        for obj in scene.objects:
            alpha, rows, cols = _coverage(obj, tau, height, width)
            coverage[t, rows, cols] = torch.maximum(coverage[t, rows, cols], alpha)
    return coverage


def random_scene(seed: int) -> tuple[Scene, str]:
    """The scene of ``seed`` and its caption (drawn from a stream of its own, so scenes don't shift)."""
    scene = sample_scene(seed)
    return scene, write_caption(scene.objects, scene.background, np.random.default_rng([seed, 1]))


def shape_twin(seed: int) -> tuple[Scene, str]:
    """The scene of ``seed`` with every object's shape swapped for another (same place, size, colour, motion and
    background) and its caption written from the same stream: a counterfactual that differs from
    :func:`random_scene` only in the shape words, for training a model to read them."""
    scene = sample_scene(seed)
    rng = np.random.default_rng([seed, 2])
    objects = []
    for obj in scene.objects:
        choices = [s for s in SHAPES if s != obj.shape and (obj.motion != "rotate" or s in SYMMETRY)]
        shape = str(choices[int(rng.integers(len(choices)))])
        angle = obj.angle
        if obj.motion == "rotate":  # the same share of the new shape's symmetry turn
            factor = SYMMETRY[shape] / SYMMETRY[obj.shape]
            angle = (obj.angle[0], obj.angle[0] + (obj.angle[1] - obj.angle[0]) * factor)
        objects.append(replace(obj, shape=shape, angle=angle))
    twin = Scene(tuple(objects), scene.background)
    return twin, write_caption(twin.objects, twin.background, np.random.default_rng([seed, 1]))


def render_clip(seed: int, num_frames: int = 17, size: int | tuple[int, int] = 64, prompt: str | None = None,
                progress: Callable[[], None] | None = None) -> WorldClip:
    """Render the clip of ``seed``: a random scene with its caption, or the scene ``prompt`` describes.

    Attributes the prompt leaves open (a colour, a motion, the background) are drawn from ``seed``.
    """
    if prompt is None:
        scene, caption = random_scene(seed)
    else:
        parsed = parse_prompt(prompt)
        scene = sample_scene(seed, parsed.objects, parsed.background)
        caption = prompt
    return WorldClip(render_scene(scene, num_frames, size, progress), caption, scene, seed)


__all__ = ["Background", "Scene", "WorldClip", "WorldObject", "object_coverage", "random_scene", "render_clip",
           "render_scene", "sample_scene", "shape_twin"]
