"""Differentiable text-conditioned rewards for videos: image rewards scored on frames, video rewards on the
clip, one interface (:class:`RewardModel`), the built-in demo rewards and adapters for users' models."""

from reelkit.rewards.adapters import HPSReward, ViCLIPReward
from reelkit.rewards.base import (
    ImageTextReward,
    RewardModel,
    VideoTextReward,
    load_reward,
    register_reward,
)
from reelkit.rewards.demo import DemoImageTextReward, DemoVideoTextReward

__all__ = ["DemoImageTextReward", "DemoVideoTextReward", "HPSReward", "ImageTextReward", "RewardModel",
           "ViCLIPReward", "VideoTextReward", "load_reward", "register_reward"]
