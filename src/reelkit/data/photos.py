"""Natural photos shipped with scikit-image: textures for the demo world, content for camera-motion clips.

Everything here loads from the scikit-image wheel itself; nothing is downloaded.

>>> from reelkit.data.photos import load_photo
>>> load_photo("brick").shape
torch.Size([3, 512, 512])
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

# Greyscale photos that read as surfaces; the demo world's texture backgrounds.
TEXTURE_PHOTOS = {"brick": "brick", "grass": "grass", "gravel": "gravel", "moon": "moon"}
# Colour photos for camera-motion clips (pan, zoom, rotate) and image-VAE crops.
COLOR_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                "retina")


@cache
def _load(name: str) -> torch.Tensor:
    import skimage.data  # lazy: scikit-image's import is slow and most commands never need it

    image = np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255.0
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(image[..., :3].transpose(2, 0, 1)))


def load_photo(name: str) -> torch.Tensor:
    """A scikit-image sample photo as a ``(3, H, W)`` float tensor in ``[0, 1]`` (a shared cached copy)."""
    return _load(name)
