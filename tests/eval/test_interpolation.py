import pytest
import torch

from reelkit.errors import ShapeError
from reelkit.eval.interpolation import INTERPOLATORS, linear_blend, optical_flow_interpolate


def square_frame(x: int, y: int = 20, size: int = 20) -> torch.Tensor:
    """A bright checker-and-gradient textured square at column ``x`` on a dark 64x64 background."""
    frame = torch.full((3, 64, 64), -0.8)
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    texture = 0.2 + 0.5 * ((rows // 4 + cols // 5) % 2) + 0.3 * cols / size
    frame[:, y:y + size, x:x + size] = torch.stack([texture, texture.flip(0), 1 - texture])
    return frame


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    return float(10 * torch.log10(4 / ((prediction - target) ** 2).mean()))  # peak-to-peak of [-1, 1] is 2


@pytest.mark.parametrize("interpolate", INTERPOLATORS.values())
def test_shape_dtype_and_exact_endpoints(interpolate):
    torch.manual_seed(0)
    first, last = torch.rand(3, 24, 40) * 2 - 1, torch.rand(3, 24, 40) * 2 - 1
    clip = interpolate(first, last, 5)
    assert clip.shape == (3, 5, 24, 40) and clip.dtype == torch.float32
    assert torch.equal(clip[:, 0], first) and torch.equal(clip[:, -1], last)
    assert clip.min() >= -1 and clip.max() <= 1


def test_linear_blend_is_a_cross_fade():
    clip = linear_blend(torch.zeros(3, 8, 8), torch.ones(3, 8, 8), 5)
    assert torch.allclose(clip[0, :, 3, 3], torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))


@pytest.mark.parametrize("shift", [8, 16])
@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_flow_beats_blend_on_a_moving_square(method, shift):
    first, middle, last = square_frame(10), square_frame(10 + shift // 2), square_frame(10 + shift)
    flow = psnr(optical_flow_interpolate(first, last, 3, method=method)[:, 1], middle)
    blend = psnr(linear_blend(first, last, 3)[:, 1], middle)
    assert blend < 25 and flow > blend + 10, (flow, blend)


def test_flow_works_on_tiny_and_odd_frames():
    assert optical_flow_interpolate(torch.zeros(3, 8, 13), torch.ones(3, 8, 13), 4).shape == (3, 4, 8, 13)


@pytest.mark.parametrize("interpolate", INTERPOLATORS.values())
@pytest.mark.parametrize(("first", "last", "num_frames"), [
    (torch.zeros(3, 16, 16), torch.zeros(3, 16, 24), 5),  # different sizes
    (torch.zeros(3, 16, 16), torch.zeros(3, 16, 16), 2),  # no in-between frame
    (torch.zeros(1, 16, 16), torch.zeros(1, 16, 16), 5),  # not RGB
    (torch.zeros(3, 2, 16, 16), torch.zeros(3, 2, 16, 16), 5),  # a video, not an image
])
def test_bad_inputs_raise_shape_error(interpolate, first, last, num_frames):
    with pytest.raises(ShapeError):
        interpolate(first, last, num_frames)


def test_unknown_flow_method_raises_shape_error():
    with pytest.raises(ShapeError, match="unknown optical-flow method"):
        optical_flow_interpolate(torch.zeros(3, 16, 16), torch.zeros(3, 16, 16), 3, method="raft")
