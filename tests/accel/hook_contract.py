"""The contract every step-aware accelerator keeps, written once (as diffusers writes its hook tests): a test
module subclasses :class:`StepHookContract`, names the technique's ``apply`` / ``remove``, a config that never
skips and one that does, and provides the ``pipe`` / ``base_pipe`` fixtures and a ``generate`` function."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers.hooks import FirstBlockCacheConfig

from reelkit.accel._diffusers_compat import hook_names


class StepHookContract:
    hook_prefix: str  # the technique's diffusers hook names start with it
    error: type[Exception]
    steps: int  # the denoising steps ``generate`` runs

    def apply(self, model, config=None) -> None:
        raise NotImplementedError

    def remove(self, model) -> None:
        raise NotImplementedError

    def exact_config(self):
        """A config under which every step computes in full."""
        raise NotImplementedError

    def skipping_config(self):
        """A config under which some steps are skipped or reused."""
        raise NotImplementedError

    def generate(self, pipe, seed: int = 0, **kwargs) -> torch.Tensor:
        raise NotImplementedError

    def test_contract_exact_when_off_and_removal_restores_the_model(self, pipe):
        plain = self.generate(pipe)
        self.apply(pipe.transformer, self.exact_config())
        assert torch.equal(self.generate(pipe), plain)
        self.remove(pipe.transformer)
        assert not {name for name in hook_names(pipe.transformer) if name.startswith(self.hook_prefix)}
        assert getattr(pipe.transformer, "_cache_config", None) is None
        assert torch.equal(self.generate(pipe), plain)

    def test_contract_skipping_changes_the_video_a_little(self, pipe):
        plain = self.generate(pipe)
        self.apply(pipe.transformer, self.skipping_config())
        skipped = self.generate(pipe)
        assert torch.isfinite(skipped).all() and not torch.equal(skipped, plain)
        assert (skipped - plain).abs().mean() < 0.5 * plain.abs().mean()

    def test_contract_a_second_generation_equals_a_fresh_models(self, pipe, base_pipe):
        self.apply(pipe.transformer, self.skipping_config())
        first = self.generate(pipe, seed=1)
        second = self.generate(pipe, seed=0)
        fresh = copy.deepcopy(base_pipe)
        self.apply(fresh.transformer, self.skipping_config())
        assert torch.equal(second, self.generate(fresh, seed=0))
        assert torch.equal(self.generate(pipe, seed=1), first)

    def test_contract_an_interrupted_generation_does_not_poison_the_next(self, pipe, base_pipe):
        self.apply(pipe.transformer, self.skipping_config())

        def stop_midway(pipeline, step, timestep, tensors):
            if step == self.steps // 2:
                raise KeyboardInterrupt
            return tensors

        with pytest.raises(KeyboardInterrupt):
            self.generate(pipe, seed=3, callback_on_step_end=stop_midway)
        fresh = copy.deepcopy(base_pipe)
        self.apply(fresh.transformer, self.skipping_config())
        assert torch.equal(self.generate(pipe), self.generate(fresh))

    def test_contract_refuses_to_stack_on_another_cache_or_on_itself(self, pipe):
        model = pipe.transformer
        model.enable_cache(FirstBlockCacheConfig(threshold=0.1))
        with pytest.raises(self.error, match="FirstBlockCacheConfig"):
            self.apply(model, self.skipping_config())
        model.disable_cache()
        self.apply(model, self.skipping_config())
        with pytest.raises(self.error, match="already applied"):
            self.apply(model, self.skipping_config())
        with pytest.raises(ValueError, match="already been enabled"):  # diffusers' caches refuse to stack on it too
            model.enable_cache(FirstBlockCacheConfig(threshold=0.1))
        self.remove(model)
        model.enable_cache(FirstBlockCacheConfig(threshold=0.1))
