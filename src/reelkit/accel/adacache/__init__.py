"""AdaCache + MoReg: content-adaptive caching of DiT block residuals (Kahatapitiya et al. 2024, arXiv 2411.02397).

Every transformer block computes ``x_out = x_in + residual``. On a *compute* step AdaCache runs each block
and stores its residual; on a *reuse* step every block returns ``x_in + cached residual`` and the block's
attention and MLP are skipped. All blocks share one schedule, so a reuse step costs only the embedders and
the output layer. The schedule adapts to each video: at every compute step the relative change of a
monitored residual ``p_t`` since the previous compute step, per step of distance,

    c_t = ||p_{t-k} - p_t|| / ||p_{t-k}|| / k

is looked up in a *codebook* (ascending thresholds -> reuse lengths): slowly changing videos get long
reuse lengths, fast-changing ones short ones. Motion Regularisation (MoReg) scales ``c_t`` by a motion
factor ``M_t = ((m / centre) ** exponent) / divisor`` computed from the frame-to-frame difference energy
``m`` of ``p_t``, plus the gain-scaled change of that factor, so high-motion videos recompute more often.

Beyond the official code this implementation takes a codebook of any length, normalises by the real
distance between compute steps, keeps one schedule per CFG branch or a shared one, can give each video
in a batch its own schedule, resets itself when a new generation starts (so an interrupted generation
does not poison the next), and works on any model whose blocks are registered (see
:func:`register_ada_cache_block`).

>>> import torch
>>> from reelkit.models.dit import VideoDiT
>>> from reelkit.accel.adacache import AdaCacheConfig, apply_ada_cache, ada_cache_stats, remove_ada_cache
>>> model = VideoDiT(num_layers=2, num_attention_heads=2, attention_head_dim=16, text_dim=24).eval()
>>> apply_ada_cache(model, AdaCacheConfig(codebook={0.5: 4, 1.0: 2}))
>>> latents, text = torch.randn(1, 8, 5, 8, 8), torch.randn(1, 12, 24)
>>> for step, t in enumerate(torch.linspace(1000, 20, 10)):
...     with model.cache_context("cond", step_index=step, num_inference_steps=10):
...         velocity = model(latents, t, text).sample
>>> stats = ada_cache_stats(model)["cond"]
>>> stats.computed[0] + stats.reused[0]
10
>>> remove_ada_cache(model)

Layout: ``config`` (codebook, presets, :class:`AdaCacheConfig`), ``models`` (how each model class is read),
``hooks`` (the schedule, the step-aware model hook, the block hooks, apply / remove / stats); the step clock and
fallback context they share with Step Rehash live in :mod:`reelkit.accel.step_hooks`.
"""

from reelkit.accel.adacache.config import PRESETS, AdaCacheConfig, AdaCacheError, Codebook, preset_codebook
from reelkit.accel.adacache.hooks import (
    AdaCacheStats,
    ada_cache_stats,
    apply_ada_cache,
    format_stats,
    record_metric_trace,
    remove_ada_cache,
    reset_ada_cache,
)
from reelkit.accel.adacache.models import (
    AdaCacheModelSpec,
    cached_blocks,
    register_ada_cache_block,
    register_ada_cache_model,
)

__all__ = ["PRESETS", "AdaCacheConfig", "AdaCacheError", "AdaCacheModelSpec", "AdaCacheStats", "Codebook",
           "ada_cache_stats", "apply_ada_cache", "cached_blocks", "format_stats", "preset_codebook",
           "record_metric_trace", "register_ada_cache_block", "register_ada_cache_model", "remove_ada_cache",
           "reset_ada_cache"]
