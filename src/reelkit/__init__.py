"""reelkit: fast, memory-efficient video diffusion in PyTorch.

Conventions (docs/architecture.md): pixel videos are ``(B, C, T, H, W)`` floats in ``[-1, 1]`` with
``1 + 4k`` frames and sides that are multiples of 8; every network is a diffusers ``ModelMixin``.
"""

__version__ = "0.1.0"
