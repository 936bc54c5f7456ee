import torch

from reelkit.data.datasets import WorldDataset
from reelkit.eval.adherence import judge_clips, label_accuracy
from reelkit.models.judge import WorldJudge
from reelkit.train.judge import degrade, judge_loss


def tiny_judge() -> WorldJudge:
    torch.manual_seed(0)
    return WorldJudge(channels=(8, 8, 8, 16), feature_dim=16).eval()


def test_reads_any_clip_size_and_length_into_two_object_slots():
    judge = tiny_judge()
    for shape in [(1, 3, 17, 64, 64), (2, 3, 9, 32, 48), (1, 3, 1, 64, 64)]:
        out = judge(torch.rand(shape) * 2 - 1)
        assert out.shape.shape == (shape[0], 2, 6) and out.motion.shape == (shape[0], 2, 9)
        assert out.num_objects.shape == (shape[0], 2)


def test_judge_clips_lists_the_objects_it_counts():
    seen, features = judge_clips(tiny_judge(), torch.rand(3, 3, 9, 64, 64) * 2 - 1)
    assert len(seen) == 3 and features.shape == (3, 16)
    assert all(1 <= len(objects) <= 2 and set(objects[0]) == {"shape", "color", "motion"} for objects in seen)


def test_loss_ignores_absent_objects_and_learns_a_batch():
    batch = next(iter(torch.utils.data.DataLoader(WorldDataset("train", num_frames=9, size=64, length=8),
                                                  batch_size=8)))
    judge = WorldJudge(channels=(8, 8, 16, 16), feature_dim=32).train()
    optimizer = torch.optim.Adam(judge.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss, _ = judge_loss(judge(batch["video"]), batch)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first


def test_degrade_changes_only_the_chosen_clips_and_stays_in_range():
    video = torch.rand(4, 3, 5, 16, 16) * 2 - 1
    out = degrade(video, torch.Generator().manual_seed(0), probability=1.0)
    assert out.shape == video.shape and out.min() >= -1 and out.max() <= 1
    assert not torch.equal(out, video)
    assert torch.equal(degrade(video, torch.Generator().manual_seed(0), probability=0.0), video)


def test_label_accuracy_counts_missing_objects_as_wrong():
    truth = [[{"shape": "star", "color": "red", "motion": "up"}, {"shape": "cross", "color": "blue", "motion": "left"}]]
    seen = [[{"shape": "star", "color": "red", "motion": "down"}]]
    assert label_accuracy(seen, truth) == {"shape": 0.5, "color": 0.5, "motion": 0.0, "count": 0.0}
