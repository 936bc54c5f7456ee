"""Classical frame-interpolation baselines: the bench rows a learned interpolator has to beat.

Both take the first and last frames as ``(3, H, W)`` images in ``[-1, 1]`` and return the whole clip
``(3, num_frames, H, W)``, endpoints included. :func:`linear_blend` cross-fades; :func:`optical_flow_interpolate`
warps along OpenCV optical flow with the linear-motion approximation of Super SloMo (Jiang et al. 2018).

>>> import torch
>>> from reelkit.eval.interpolation import INTERPOLATORS
>>> first, last = -torch.ones(3, 16, 16), torch.ones(3, 16, 16)
>>> clip = INTERPOLATORS["linear_blend"](first, last, 5)
>>> tuple(clip.shape), clip[0, :, 0, 0].tolist()
((3, 5, 16, 16), [-1.0, -0.5, 0.0, 0.5, 1.0])
>>> clip = INTERPOLATORS["optical_flow"](first, last, 5)
>>> tuple(clip.shape), bool(torch.equal(clip[:, 0], first)), bool(torch.equal(clip[:, -1], last))
((3, 5, 16, 16), True, True)
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import torch

from reelkit.errors import ShapeError

FLOW_METHODS = ("dis", "farneback")
_MIN_SIZE = 8
_DIS_MIN_SIZE = 192


def _check_endpoints(first: torch.Tensor, last: torch.Tensor, num_frames: int) -> None:
    for name, image in (("first", first), ("last", last)):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ShapeError(f"{name} frame must be a (3, H, W) image, got shape {tuple(image.shape)}")
    if first.shape != last.shape:
        raise ShapeError(f"first and last frames differ in shape: {tuple(first.shape)} vs {tuple(last.shape)}")
    if num_frames < 3:
        raise ShapeError(f"num_frames must be at least 3 (one in-between frame), got {num_frames}")


def linear_blend(first: torch.Tensor, last: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Cross-fade: frame ``i`` is ``(1 - t) * first + t * last`` with ``t = i / (num_frames - 1)``."""
    _check_endpoints(first, last, num_frames)
    t = torch.linspace(0, 1, num_frames, dtype=first.dtype, device=first.device).view(1, -1, 1, 1)
    clip = (1 - t) * first[:, None] + t * last[:, None]
    # linspace's t = 0 and t = 1 already give the endpoints, but copy them so they are bit-exact
    clip[:, 0], clip[:, -1] = first, last
    return clip


def _to_hwc(image: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(image.detach().float().cpu().permute(1, 2, 0).numpy())


def _gray_uint8(image: np.ndarray) -> np.ndarray:
    rgb = np.clip((image + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def _flow(source: np.ndarray, target: np.ndarray, method: str) -> np.ndarray:
    """Flow ``F`` (H, W, 2) in pixels with ``source(x) ~ target(x + F(x))``."""
    if method == "dis":
        # DIS picks its coarsest pyramid level from the frame width (about log2(width / 30)), so a 64 px frame
        # gets two levels and loses motions past ~10 px (and below 12 px it refuses to run). Replicating the
        # border adds levels without changing the motion in pixels; the flow is cropped back.
        height, width = source.shape
        pad = ((0, max(0, _DIS_MIN_SIZE - height)), (0, max(0, _DIS_MIN_SIZE - width)))
        source, target = np.pad(source, pad, mode="edge"), np.pad(target, pad, mode="edge")
        flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(source, target, None)
        return np.ascontiguousarray(flow[:height, :width])
    # OpenCV drops pyramid levels below 32 px, so a 64x64 frame gets only two: a wide 21 px window and 10
    # iterations make up the reach for ~16 px motions. poly_sigma 1.5 is OpenCV's advice for poly_n 7.
    return cv2.calcOpticalFlowFarneback(source, target, None, pyr_scale=0.5, levels=3, winsize=21, iterations=10,
                                        poly_n=7, poly_sigma=1.5, flags=0)


def _backward_warp(image: np.ndarray, flow: np.ndarray, grid_x: np.ndarray, grid_y: np.ndarray) -> np.ndarray:
    """Sample ``image`` at ``x + flow(x)``."""
    return cv2.remap(image, grid_x + flow[..., 0], grid_y + flow[..., 1], interpolation=cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def optical_flow_interpolate(first: torch.Tensor, last: torch.Tensor, num_frames: int,
                             method: str = "dis") -> torch.Tensor:
    """Warp both endpoints along bidirectional OpenCV flow (DIS or Farneback), Super SloMo eq. 4, and blend."""
    _check_endpoints(first, last, num_frames)
    if method not in FLOW_METHODS:
        raise ShapeError(f"unknown optical-flow method {method!r}; choose one of {', '.join(FLOW_METHODS)}")
    height, width = first.shape[1:]
    if height < _MIN_SIZE or width < _MIN_SIZE:
        raise ShapeError(f"optical-flow interpolation needs frames of at least {_MIN_SIZE}x{_MIN_SIZE}, "
                         f"got {height}x{width}")
    image_0, image_1 = _to_hwc(first), _to_hwc(last)
    gray_0, gray_1 = _gray_uint8(image_0), _gray_uint8(image_1)
    flow_01, flow_10 = _flow(gray_0, gray_1, method), _flow(gray_1, gray_0, method)
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)

    frames = [first.detach().float().cpu()]
    for i in range(1, num_frames - 1):
        t = i / (num_frames - 1)
        # No frame exists at t to measure flow from, so Super SloMo eq. 4 borrows it from the endpoint flows
        # under linear motion, mixing both directions so each side's errors partly cancel.
        flow_t0 = -(1 - t) * t * flow_01 + t * t * flow_10
        flow_t1 = (1 - t) ** 2 * flow_01 - t * (1 - t) * flow_10
        blend = (1 - t) * _backward_warp(image_0, flow_t0, grid_x, grid_y) \
            + t * _backward_warp(image_1, flow_t1, grid_x, grid_y)
        frames.append(torch.from_numpy(np.clip(blend, -1, 1, dtype=np.float32)).permute(2, 0, 1))
    frames.append(last.detach().float().cpu())
    return torch.stack(frames, dim=1).to(first.device)


INTERPOLATORS: dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "linear_blend": linear_blend,
    "optical_flow": optical_flow_interpolate,
}
