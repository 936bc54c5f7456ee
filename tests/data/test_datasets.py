import torch
from torch.utils.data import DataLoader

from reelkit.data.captions import COLORS, SHAPES
from reelkit.data.datasets import HELDOUT_SEED_BASE, WorldDataset, WorldStream, heldout_seeds


def test_heldout_split_is_fixed_and_disjoint_from_training():
    assert heldout_seeds(4) == [HELDOUT_SEED_BASE + i for i in range(4)]
    train = WorldDataset("train", num_frames=5, size=16, length=50)
    assert max(train.seeds) < min(heldout_seeds())
    a, b = WorldDataset("heldout", 5, 16, length=3), WorldDataset("heldout", 5, 16, length=3)
    assert torch.equal(a[2]["video"], b[2]["video"]) and a[2]["caption"] == b[2]["caption"]


def test_dataloader_batches_videos_captions_and_labels():
    loader = DataLoader(WorldDataset("heldout", num_frames=9, size=32, length=4), batch_size=4)
    batch = next(iter(loader))
    assert batch["video"].shape == (4, 3, 9, 32, 32)
    assert len(batch["caption"]) == 4
    assert batch["shape"].shape == (4, 2) and batch["shape"].max() < len(SHAPES)
    for i in range(4):  # label tensors agree with the scene: the first object is never padding
        assert 0 <= batch["color"][i, 0] < len(COLORS)
        assert (batch["shape"][i] >= 0).sum() == batch["num_objects"][i]


def test_stream_is_reproducible_and_differs_per_rank():
    def first(stream, n=3):
        it = iter(stream)
        return [next(it)["seed"] for _ in range(n)]

    assert first(WorldStream(5, 16, seed=0)) == first(WorldStream(5, 16, seed=0))
    assert first(WorldStream(5, 16, seed=0, rank=0)) != first(WorldStream(5, 16, seed=0, rank=1))
    assert all(s < HELDOUT_SEED_BASE for s in first(WorldStream(5, 16, seed=3), 10))


def test_stream_workers_do_not_repeat_each_other():
    loader = DataLoader(WorldStream(1, 8), batch_size=4, num_workers=2)
    it = iter(loader)
    seeds = [s for _ in range(4) for s in next(it)["seed"].tolist()]
    assert len(set(seeds)) == len(seeds)
