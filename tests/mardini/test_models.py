"""The planner and generator: Identity Attention isolates the known frames, the plan steers, weights round-trip."""

import pytest
import torch

from reelkit.errors import ShapeError
from reelkit.mardini import MarDiniGenerator, MarDiniPlanner
from reelkit.mardini.masking import check_known_indices, reference_mask, sample_reference_mask


def _randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight random (adaLN-zero starts the generator at a zero output, which tests nothing)."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in model.parameters():
        parameter.data = torch.randn(parameter.shape, generator=generator) * 0.2
    return model.eval()


def planner(identity: bool = True) -> MarDiniPlanner:
    return _randomised(MarDiniPlanner(num_layers=2, num_attention_heads=2, attention_head_dim=8,
                                      identity_attention=identity))


def generator(identity: bool = True, attention: str = "temporal") -> MarDiniGenerator:
    return _randomised(MarDiniGenerator(num_layers=2, num_attention_heads=2, attention_head_dim=8, plan_dim=16,
                                        sample_size=4, attention=attention, identity_attention=identity))


REFERENCE = reference_mask(5, [0, 4])


@pytest.mark.parametrize("identity", [True, False])
def test_planner_known_frames_see_only_themselves_with_identity_attention(identity):
    model = planner(identity)
    latents = torch.randn(1, 8, 5, 2, 2)
    changed = latents.clone()
    changed[:, :, 4] += 1.0  # another known frame
    with torch.no_grad():
        a, b = model(latents, REFERENCE).plan, model(changed, REFERENCE).plan
    assert torch.allclose(a[:, 0], b[:, 0], atol=1e-5) == identity
    assert not torch.allclose(a[:, 2], b[:, 2], atol=1e-5)  # a masked frame reads every frame


def test_planner_ignores_what_masked_frames_hold():
    model = planner()
    latents = torch.randn(1, 8, 5, 2, 2)
    changed = latents.clone()
    changed[:, :, 1:4] = torch.randn(1, 8, 3, 2, 2)
    with torch.no_grad():
        assert torch.equal(model(latents, REFERENCE).plan, model(changed, REFERENCE).plan)


@pytest.mark.parametrize("attention", ["temporal", "spatiotemporal"])
@pytest.mark.parametrize("identity", [True, False])
def test_generator_known_frames_unaffected_by_noisy_ones_with_identity_attention(identity, attention):
    model = generator(identity, attention)
    latents, plan = torch.randn(1, 8, 5, 4, 4), torch.randn(1, 5, 2, 2, 16)
    timestep = torch.where(REFERENCE, 0.0, 600.0)
    changed = latents.clone()
    changed[:, :, 2] = torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        a = model(latents, timestep, plan, REFERENCE).sample
        b = model(changed, timestep, plan, REFERENCE).sample
    assert torch.allclose(a[:, :, 0], b[:, :, 0], atol=1e-5) == identity
    assert not torch.allclose(a[:, :, 3], b[:, :, 3], atol=1e-5)


def test_generator_follows_the_plan_and_the_null_plan_is_the_default():
    model = generator()
    latents = torch.randn(2, 8, 5, 4, 4)
    reference = reference_mask(5, [0], batch=2)
    with torch.no_grad():
        with_plan = model(latents, 500.0, torch.randn(2, 5, 2, 2, 16), reference).sample
        null = model(latents, 500.0, model.unconditional_plan(2, 5, 2, 2), reference).sample
        default = model(latents, 500.0, None, reference).sample
        finer = model(latents, 500.0, torch.randn(2, 5, 4, 4, 16), reference).sample  # another plan grid
    assert torch.allclose(null, default, atol=1e-6)
    assert not torch.allclose(with_plan, null, atol=1e-3)
    assert finer.shape == latents.shape


def test_models_round_trip_through_save_pretrained(tmp_path):
    gen, plan_model = generator(), planner()
    gen.save_pretrained(tmp_path / "g")
    plan_model.save_pretrained(tmp_path / "p")
    latents, plan = torch.randn(1, 8, 5, 4, 4), torch.randn(1, 5, 2, 2, 16)
    with torch.no_grad():
        assert torch.equal(MarDiniGenerator.from_pretrained(tmp_path / "g")(latents, 300.0, plan).sample,
                           gen(latents, 300.0, plan).sample)
        low = torch.randn(1, 8, 5, 2, 2)
        assert torch.equal(MarDiniPlanner.from_pretrained(tmp_path / "p")(low, REFERENCE).plan,
                           plan_model(low, REFERENCE).plan)


def test_bad_shapes_are_shape_errors():
    with pytest.raises(ShapeError, match="channels"):
        generator()(torch.randn(1, 4, 5, 4, 4), 100.0)
    with pytest.raises(ShapeError, match="plan"):
        generator()(torch.randn(1, 8, 5, 4, 4), 100.0, torch.randn(1, 3, 2, 2, 16))
    with pytest.raises(ShapeError, match="reference"):
        planner()(torch.randn(1, 8, 5, 2, 2), torch.zeros(1, 4, dtype=torch.bool))


@pytest.mark.parametrize(("indices", "message"), [([0, 17], "out of range"), ([-1], "out of range"),
                                                  ([3, 3], "repeat"), (list(range(17)), "too few"), ([], "at least")])
def test_known_indices_are_checked(indices, message):
    with pytest.raises(ShapeError, match=message):
        check_known_indices(17, indices)


def test_training_masks_keep_one_known_and_one_unknown_frame_and_follow_the_ratio():
    generator_ = torch.Generator().manual_seed(0)
    masks = sample_reference_mask(400, 17, (0.06, 0.3), generator_)
    kept = masks.sum(1)
    assert kept.min() >= 1 and kept.max() <= 0.3 * 17 + 1
    assert masks[:, 0].float().mean() > 0.5  # prefix and both-ends layouts keep the first frame
    wide = sample_reference_mask(400, 9, (0.35, 1.0), torch.Generator().manual_seed(0)).sum(1)
    assert wide.max() == 8 and wide.float().mean() > kept.float().mean()
    again = sample_reference_mask(400, 17, (0.06, 0.3), torch.Generator().manual_seed(0))
    assert torch.equal(masks, again)


def test_known_frames_get_timestep_zero_unless_the_timestep_is_shared():
    reference = reference_mask(5, [0, 4], batch=2)
    t = torch.tensor([300.0, 700.0])
    per_frame = generator().timesteps(t, reference)
    assert per_frame[:, [0, 4]].eq(0).all() and per_frame[1, 1:4].eq(700).all()
    shared = MarDiniGenerator(num_layers=1, num_attention_heads=2, attention_head_dim=8, plan_dim=16,
                              frame_timesteps=False).timesteps(t, reference)
    assert shared[0].eq(300).all() and shared[1].eq(700).all()
