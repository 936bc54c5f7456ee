import math

import pytest
import torch

from reelkit.metrics import video_psnr, video_ssim


def test_psnr_and_ssim_on_known_errors():
    video = torch.rand(3, 5, 32, 32) * 1.8 - 0.9  # room for +0.02 without clamping
    assert video_psnr(video + 0.02, video) == pytest.approx(40.0, abs=0.01)
    assert video_ssim(video, video) == pytest.approx(1.0)
    assert math.isinf(video_psnr(video, video)) or video_psnr(video, video) > 100
    batched = video[None].repeat(2, 1, 1, 1, 1)
    assert video_ssim(batched * 0.5, batched) < 0.99


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        video_psnr(torch.zeros(3, 5, 8, 8), torch.zeros(3, 1, 8, 8))
