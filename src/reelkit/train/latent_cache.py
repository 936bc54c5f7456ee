"""Demo-world clips encoded once by the CV-VAE: the text-to-video recipe trains on this cache.

Encoding is the slow part of a step on a CPU (about 0.2 s per 17-frame 64 px clip), and the
training loop would redo it every epoch, so the cache stores each clip's posterior (mean and std,
fp16) with its caption and labels, in shards of ``shard_size`` clips. Shards are written
atomically and skipped when present, so an interrupted build resumes where it stopped.

>>> import tempfile
>>> from reelkit.vae import CVVAE
>>> vae = CVVAE(block_out_channels=(8, 8, 8, 8), norm_num_groups=4)   # any CV-VAE; the bundled one by default
>>> folder = build_latent_cache(tempfile.mkdtemp(), num_clips=2, num_frames=5, size=16, vae=vae)
>>> cache = LatentCache(folder)
>>> cache[0]["latent"].shape, cache[0]["caption"] == cache.captions[0]
(torch.Size([8, 2, 2, 2]), True)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from reelkit.data.datasets import HELDOUT_SEED_BASE
from reelkit.data.world import render_clip
from reelkit.errors import ReelkitError
from reelkit.files import atomic_path

MANIFEST = "manifest.json"
LABEL_KEYS = ("shape", "color", "motion", "num_objects")
SIDECARS = {"coverage": "coverage", "repa": "features"}  # per-shard files beside the shards: kind -> tensor key


def open_cache_folder(folder: str | Path, num_clips: int, settings: dict, what: str) -> Path:
    """Create ``folder`` and record its manifest; a cache may grow (more clips), never change what its clips
    are, so a folder built with other ``settings`` is a one-line error."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / MANIFEST
    if manifest_path.is_file():
        previous = json.loads(manifest_path.read_text())
        if {k: previous.get(k) for k in settings} != settings:
            raise ReelkitError(f"{folder}: holds {what} built with other settings; use a new folder")
    manifest_path.write_text(json.dumps({"num_clips": num_clips, **settings}, indent=1))
    return folder


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


@torch.no_grad()
def build_latent_cache(folder: str | Path, num_clips: int, num_frames: int = 17, size: int = 64,
                       first_seed: int = 0, shard_size: int = 512, batch_size: int = 32, vae=None,
                       progress: Callable[[int], None] | None = None, shape_twins: bool = False,
                       workers: int = 0, device: str | torch.device | None = None) -> Path:
    """Encode the training clips of seeds ``first_seed .. first_seed + num_clips`` into ``folder``.

    Shards already in ``folder`` are kept, so a larger ``num_clips`` extends a cache.

    ``vae`` defaults to the bundled CV-VAE. ``progress`` is called with the number of clips done.
    ``shape_twins``: encode each seed's shape twin instead (:func:`reelkit.data.world.shape_twin`), index for
    index beside a plain cache of the same seeds. ``workers`` render clips in that many processes (DataLoader
    workers) while ``device`` (default: the VAE's) encodes them: on a GPU machine rendering is the slow part. The
    cache's contents do not depend on either: each clip is its seed's render.
    """
    from reelkit.vae import load_cvvae

    if num_clips < 1 or first_seed < 0 or first_seed + num_clips > HELDOUT_SEED_BASE:
        raise ReelkitError("the latent cache holds 1 or more training seeds, all below the held-out split")
    settings = {"num_frames": num_frames, "size": size, "first_seed": first_seed, "shard_size": shard_size,
                **({"shape_twins": True} if shape_twins else {})}
    folder = open_cache_folder(folder, num_clips, settings, "a latent cache")
    vae = (vae or load_cvvae()).eval()
    device = torch.device(device) if device is not None else next(vae.parameters()).device
    vae.to(device)
    done = 0
    for shard in range((num_clips + shard_size - 1) // shard_size):
        seeds = list(range(first_seed + shard * shard_size, first_seed + min(num_clips, (shard + 1) * shard_size)))
        path = folder / shard_name(shard)
        if path.is_file():
            done += len(seeds)
            continue
        means, stds, captions, labels = [], [], [], {k: [] for k in LABEL_KEYS}
        renders = DataLoader(_Renders(seeds, num_frames, size, shape_twins), batch_size=batch_size,
                             num_workers=workers, collate_fn=list)
        for clips in renders:  # [(video, caption, labels)] of up to batch_size seeds, in seed order
            posterior = vae.encode(torch.stack([video for video, _, _ in clips]).to(device)).latent_dist
            means.append(posterior.mean.half().cpu())
            stds.append(posterior.std.half().cpu())
            for _, caption, clip_labels in clips:
                captions.append(caption)
                for key, value in clip_labels.items():
                    if key in labels:
                        labels[key].append(value)
            done += len(clips)
            if progress is not None:
                progress(done)
        tensors = {"mean": torch.cat(means).contiguous(), "std": torch.cat(stds).contiguous(),
                   "seed": torch.tensor(seeds), **{k: torch.stack(v) for k, v in labels.items()}}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"captions": json.dumps(captions)})
    return folder


class _Renders(Dataset):
    """The clips of ``seeds`` as ``(video, caption, labels)``, rendered where a DataLoader worker asks for them."""

    def __init__(self, seeds: list[int], num_frames: int, size: int, shape_twins: bool):
        self.seeds, self.num_frames, self.size, self.shape_twins = seeds, num_frames, size, shape_twins

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, index: int):
        seed = self.seeds[index]
        clip = (_twin_clip if self.shape_twins else render_clip)(seed, self.num_frames, self.size)
        return clip.video, clip.caption, clip.scene.label_tensors()


def _twin_clip(seed: int, num_frames: int, size: int):
    from reelkit.data.world import WorldClip, render_scene, shape_twin

    scene, caption = shape_twin(seed)
    return WorldClip(render_scene(scene, num_frames, size), caption, scene, seed)


def sidecar_name(kind: str, index: int) -> str:
    """A per-shard file written beside shard ``index`` (``coverage``, ``repa``), loaded with the cache."""
    return f"{kind}_{index:05d}.safetensors"


def missing_sidecars(folder: Path, kind: str):
    """``(target, seeds, shard handle)`` for each shard of ``folder`` that lacks its ``kind`` sidecar; the handle
    is open while the caller computes the sidecar, which it writes to ``target`` (atomically)."""
    for path in sorted(folder.glob("shard_*.safetensors")):
        target = folder / sidecar_name(kind, int(path.stem.split("_")[1]))
        if target.is_file():
            continue
        with safe_open(str(path), "pt") as handle:
            yield target, handle.get_tensor("seed").tolist(), handle


def latent_coverage(seed: int, num_frames: int, size: int, latent_shape: tuple[int, int, int]) -> torch.Tensor:
    """``(1+k, h, w)``: where the objects of clip ``seed`` are, on the latent grid (a latent pixel counts as
    covered when any pixel of its frames and area is): the weights of an object-weighted loss."""
    import torch.nn.functional as F

    from reelkit.data.world import object_coverage, random_scene

    frames, height, width = latent_shape
    coverage = object_coverage(random_scene(seed)[0], num_frames, size)  # (T, H, W)
    temporal = (num_frames - 1) // max(frames - 1, 1) if frames > 1 else 1
    groups = [coverage[:1]] + [coverage[1 + i * temporal:1 + (i + 1) * temporal] for i in range(frames - 1)]
    per_latent_frame = torch.stack([g.amax(0) for g in groups])  # (1+k, H, W)
    return F.adaptive_max_pool2d(per_latent_frame[:, None], (height, width))[:, 0]


def add_coverage(folder: str | Path) -> None:
    """Write each shard's object coverage beside it (``coverage_*.safetensors``) where it is missing; a render of
    the scenes' objects only, about 10 ms a clip, so caches built before coverage existed gain it cheaply."""
    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    for target, seeds, handle in missing_sidecars(folder, "coverage"):
        latent_shape = tuple(handle.get_slice("mean").get_shape()[2:])
        coverage = torch.stack([latent_coverage(seed, manifest["num_frames"], manifest["size"], latent_shape)
                                for seed in seeds])
        with atomic_path(target) as tmp:
            save_file({"coverage": coverage.half().contiguous()}, str(tmp))


class LatentCache(Dataset):
    """The clips of a latent cache: ``latent`` (a fresh posterior sample, fp32), ``caption``, labels.

    ``sample=False`` returns the posterior mean instead (deterministic, for evaluation).
    """

    def __init__(self, folder: str | Path, sample: bool = True):
        folder = Path(folder)
        if not (folder / MANIFEST).is_file():
            raise ReelkitError(f"{folder}: not a latent cache (no {MANIFEST}); build it with reelkit train t2v")
        self.manifest = json.loads((folder / MANIFEST).read_text())
        shards = sorted(folder.glob("shard_*.safetensors"))
        if not shards:
            raise ReelkitError(f"{folder}: the latent cache has no shards yet")
        parts, self.captions = [], []
        for path in shards:
            try:
                parts.append(load_file(str(path)))
                with safe_open(str(path), "pt") as handle:
                    self.captions += json.loads(handle.metadata()["captions"])
            except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as error:
                raise ReelkitError(f"{path}: corrupt latent cache shard ({error})") from None
        self.tensors = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
        # coverage (N, 1+k, h, w): where the objects are (add_coverage); repa (N, 1+k, C, h', w'): REPA targets
        # (train.representation); each loaded when every shard has it
        for kind, key in SIDECARS.items():
            paths = [folder / sidecar_name(kind, int(path.stem.split("_")[1])) for path in shards]
            if all(path.is_file() for path in paths):
                self.tensors[kind] = torch.cat([load_file(str(path))[key] for path in paths])
        self.sample = sample

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict:
        mean = self.tensors["mean"][index].float()
        latent = mean + self.tensors["std"][index].float() * torch.randn_like(mean) if self.sample else mean
        item = {"latent": latent, "caption": self.captions[index], **{k: self.tensors[k][index] for k in LABEL_KEYS}}
        for key in SIDECARS:
            if key in self.tensors:
                item[key] = self.tensors[key][index].float()
        return item

    @property
    def has_coverage(self) -> bool:
        return "coverage" in self.tensors


class TwinPairs(Dataset):
    """Clip ``i`` of a plain cache with clip ``i`` of its shape-twin cache: ``latent``, ``caption``, ``twin_latent``,
    ``twin_caption`` (the twins of the first ``len(twins)`` clips)."""

    def __init__(self, plain: LatentCache, twins: LatentCache):
        if twins.manifest.get("first_seed") != plain.manifest.get("first_seed") or len(twins) > len(plain):
            raise ReelkitError("the shape-twin cache must hold the twins of the plain cache's first clips")
        self.plain, self.twins = plain, twins

    def __len__(self) -> int:
        return len(self.twins)

    def __getitem__(self, index: int) -> dict:
        a, b = self.plain[index], self.twins[index]
        return {"latent": a["latent"], "caption": a["caption"], "twin_latent": b["latent"],
                "twin_caption": b["caption"]}


__all__ = ["LatentCache", "TwinPairs", "add_coverage", "build_latent_cache", "latent_coverage", "missing_sidecars",
           "open_cache_folder", "shard_name", "sidecar_name"]
