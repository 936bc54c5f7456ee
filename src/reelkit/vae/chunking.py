"""Bounded memory for long and large videos: temporal chunks and blended spatial tiles (CV-VAE App. A).

Temporal: the encoder takes chunks of ``1 + F`` frames that share one frame with the previous chunk
(``F = frames_per_chunk``, default 16); each later chunk's first latent re-encodes that shared frame
and is dropped. The decoder takes chunks of ``1 + F/4`` latents sharing one latent and drops each later
chunk's first frame. Spatial: overlapping tiles, averaged with linear ramps over the overlap.

Chunking is approximate where the model looks across a boundary (the encoder's causal convs see
replicated frames instead of the previous chunk; the decoder is non-causal; tiles lose context at
their edges); the ``vae`` bench reports the difference to the unchunked output.

>>> import torch
>>> from reelkit.vae.chunking import blend_tiles
>>> x = torch.randn(1, 2, 3, 40, 40)
>>> torch.allclose(blend_tiles(lambda t: t * 2, x, tile=16, overlap=0.25), x * 2, atol=1e-6)
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from reelkit.conventions import TEMPORAL_FACTOR
from reelkit.errors import ReelkitError


@dataclass
class ChunkingConfig:
    """``frames_per_chunk``: new frames per temporal chunk (a multiple of 4); ``tile_size``: spatial tile
    side in pixels (a multiple of 8; ``None``: no spatial tiling); ``tile_overlap``: fraction of a tile
    shared with its neighbour, blended linearly."""

    frames_per_chunk: int = 16
    tile_size: int | None = None
    tile_overlap: float = 0.25

    def __post_init__(self):
        if self.frames_per_chunk < TEMPORAL_FACTOR or self.frames_per_chunk % TEMPORAL_FACTOR:
            raise ReelkitError(f"frames_per_chunk must be a positive multiple of 4, got {self.frames_per_chunk}")
        if self.tile_size is not None and (self.tile_size < 16 or self.tile_size % 8):
            raise ReelkitError(f"tile_size must be a multiple of 8 and at least 16, got {self.tile_size}")
        if not 0.0 <= self.tile_overlap < 0.5:
            raise ReelkitError(f"tile_overlap must lie in [0, 0.5), got {self.tile_overlap}")


def chunking_ladder(frames: int, size: int, smallest_tile: int = 32) -> list[ChunkingConfig]:
    """Chunkings that bound the decode of a ``frames`` x ``size`` px clip ever lower, and cost ever more quality:
    temporal chunks of 8, then 4 new frames (those shorter than the clip), then 4-frame chunks in square tiles of
    3/4 of the frame, then halving from half the frame down to ``smallest_tile`` px (multiples of 8).

    >>> [(c.frames_per_chunk, c.tile_size) for c in chunking_ladder(17, 128)]
    [(8, None), (4, None), (4, 96), (4, 64), (4, 32)]
    """
    ladder = [ChunkingConfig(step) for step in (2 * TEMPORAL_FACTOR, TEMPORAL_FACTOR) if step < frames - 1]
    tiles = [size * 3 // 4] + [size >> k for k in range(1, size.bit_length())]
    for tile in dict.fromkeys(t - t % 8 for t in tiles):
        if max(smallest_tile, 16) <= tile < size:
            ladder.append(ChunkingConfig(TEMPORAL_FACTOR, tile))
    return ladder


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """Weights 1 inside, rising linearly over ``overlap`` samples at an edge shared with a neighbour."""
    weight = torch.ones(length)
    if overlap > 0:
        ramp = (torch.arange(overlap) + 1.0) / (overlap + 1.0)
        if not at_start:
            weight[:overlap] = ramp
        if not at_end:
            weight[-overlap:] = ramp.flip(0)
    return weight


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def blend_tiles(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: float,
                scale: float = 1.0) -> torch.Tensor:
    """Apply ``fn`` to overlapping spatial tiles of ``x`` (B, C, T, H, W) and blend the outputs.

    ``tile`` is in input pixels; ``fn`` scales the spatial size by ``scale`` (8 for a decoder, 1/8 for
    an encoder). Outputs are averaged with linear ramps over the overlap, so seams fade out.
    """
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        return fn(x)
    stride = max(1, int(round(tile * (1 - overlap))))
    out, total = None, None
    for top in _starts(h, tile, stride):
        for left in _starts(w, tile, stride):
            piece = fn(x[..., top:top + tile, left:left + tile])
            ph, pw = piece.shape[-2:]
            oh, ow = int(round(top * scale)), int(round(left * scale))
            if out is None:
                out = piece.new_zeros((*piece.shape[:-2], int(round(h * scale)), int(round(w * scale))))
                total = piece.new_zeros(out.shape[-2:])
            margin = max(0, int(round((tile - stride) * scale)))
            wy = _ramp(ph, margin, top == 0, top + tile >= h).to(piece)
            wx = _ramp(pw, margin, left == 0, left + tile >= w).to(piece)
            weight = wy[:, None] * wx[None, :]
            out[..., oh:oh + ph, ow:ow + pw] += piece * weight
            total[oh:oh + ph, ow:ow + pw] += weight
    return out / total


def chunked_encode(encode: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, config: ChunkingConfig,
                   spatial_factor: int) -> torch.Tensor:
    """Encode ``x`` (B, C, 1+4k, H, W) chunk by chunk -> moments (B, 2c, 1+k, h, w)."""
    num_frames = x.shape[2]
    step = config.frames_per_chunk
    pieces = []
    for start in range(0, max(num_frames - 1, 1), step):
        chunk = x[:, :, start:start + step + 1]  # 1 + up to F frames, sharing frame `start`
        if config.tile_size is not None:
            moments = blend_tiles(encode, chunk, config.tile_size, config.tile_overlap, 1 / spatial_factor)
        else:
            moments = encode(chunk)
        pieces.append(moments if start == 0 else moments[:, :, 1:])
    return torch.cat(pieces, dim=2)


def chunked_decode(decode: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, config: ChunkingConfig,
                   spatial_factor: int) -> torch.Tensor:
    """Decode latents ``z`` (B, c, 1+k, h, w) chunk by chunk -> (B, 3, 1+4k, H, W)."""
    num_latents = z.shape[2]
    step = config.frames_per_chunk // TEMPORAL_FACTOR
    tile = None if config.tile_size is None else config.tile_size // spatial_factor
    pieces = []
    for start in range(0, max(num_latents - 1, 1), step):
        chunk = z[:, :, start:start + step + 1]
        if tile is not None:
            frames = blend_tiles(decode, chunk, tile, config.tile_overlap, spatial_factor)
        else:
            frames = decode(chunk)
        pieces.append(frames if start == 0 else frames[:, :, 1:])
    return torch.cat(pieces, dim=2)


def activation_bytes_per_voxel(model) -> float:
    """A working estimate of peak bytes per (frame x pixel) of an unchunked decode, from the widest
    full-resolution layer: its input, padded copy, output and norm temporaries in float32."""
    return 6 * 4 * model.config.block_out_channels[0]


def plan_chunking(model, max_memory: int, tile_overlap: float = 0.25, frames_per_chunk: int = 16,
                  size_hint: int = 1024) -> ChunkingConfig:
    """The cheapest chunking that should keep a decode under ``max_memory`` bytes.

    Shrinks the temporal chunk first (down to 4 frames), then tiles spatially (down to 32 px).
    """
    per_voxel = activation_bytes_per_voxel(model)
    frames = frames_per_chunk
    while frames > TEMPORAL_FACTOR and (frames + 1) * size_hint**2 * per_voxel > max_memory:
        frames //= 2
    frames = max(TEMPORAL_FACTOR, frames - frames % TEMPORAL_FACTOR)
    tile = None
    if (frames + 1) * size_hint**2 * per_voxel > max_memory:
        side = int((max_memory / ((frames + 1) * per_voxel)) ** 0.5)
        tile = max(32, side - side % 8)
    return ChunkingConfig(frames, tile, tile_overlap)
