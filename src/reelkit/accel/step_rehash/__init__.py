"""Step Rehash: reuse the deep features of key steps on the other steps (Zhan, Wu et al. 2024, Streamlined
Inference, arXiv 2411.01171, Sec. 4.3).

The output features of a video model's temporal layers change little from one denoising step to the next.
Step Rehash splits the steps into two kinds:

* **key steps** run the whole model and store one deep feature per guidance branch;
* **rehash steps** skip the deep part of the model, inject the stored feature and recompute only the
  shallow path (with its skip connections) up to the output.

Which steps are keys is decided offline (the paper's Algorithm 1): on a calibration run every step is
computed and the chosen temporal layer's output is recorded; step 0 is a key, and walking forward a new key
starts whenever the cosine similarity between the current step's feature and the last key's drops below a
threshold, which is bisected until the budget of ``K`` full steps is met exactly (``search="greedy"``).
That placement crowds keys at both ends, so by default the search instead places the keys to maximise the
summed similarity of every step to its key (dynamic programming, ``search="optimal"``), with the similarity
read as one minus the relative distance between the features (``metric="distance"``; the cosine,
``"cosine"``, ignores changes of magnitude). On the reelkit teacher (``reelkit bench rehash``, 15 full steps
of 50) this gains about 4 dB over both the greedy search and evenly spaced keys.
:class:`RehashSchedule` keeps the calibration's normalised Gram matrix of the features, so key steps can be
derived for any ``K`` and metric and, by interpolating over normalised time, for another step count.
``uniform_key_steps`` gives the DeepCache-style baseline (evenly spaced keys, same mechanism).

Where the deep part is:

* **DiT** (reelkit's ``VideoDiT``, or any model whose ``transformer_blocks`` return only the token stream):
  the first and last ``shallow_blocks`` blocks are shallow, the blocks in between deep. A key step stores the
  deep part's residual (output of the last deep block minus input of the first); a rehash step adds it
  instead of running the deep blocks. The similarity is measured on the residual itself
  (``similarity_feature="deep"``, the default: on the teacher it places keys better) or on the last deep
  block's temporal attention output (``"temporal"``, the paper's choice).
* **U-Net** (diffusers' ``UNetSpatioTemporalConditionModel`` for SVD, ``UNetMotionModel`` for AnimateDiff):
  DeepCache-style, the outer ``shallow_blocks`` levels (``conv_in``, ``down_blocks[:s]``, ``up_blocks[-s:]``,
  the output head, the time embedding) always run; a rehash step injects the stored input of
  ``up_blocks[-s]`` (the output of ``up_blocks[-s-1]``, whose last layers are temporal) from the last key.

The key/rehash decision is a function of the step alone, so the guidance branches share it; each cache
context (``"cond"``, ``"uncond"``) keeps its own stored feature. Pipelines that enter no cache context
(diffusers' SVD and AnimateDiff pipelines batch both branches in one call) are followed by counting calls
and watching the timestep; set ``num_inference_steps`` for them. A new generation (step 0, or the timestep
turning back up) starts afresh, and with every step a key the model computes exactly as without the hooks.

>>> import torch
>>> from reelkit.models.dit import VideoDiT
>>> from reelkit.accel.step_rehash import (StepRehashConfig, apply_step_rehash, remove_step_rehash,
...                                       step_rehash_stats, uniform_key_steps)
>>> uniform_key_steps(10, 4)
[0, 3, 5, 8]
>>> model = VideoDiT(num_layers=4, num_attention_heads=2, attention_head_dim=16, text_dim=24).eval()
>>> apply_step_rehash(model, StepRehashConfig(num_full_steps=4))
>>> latents, text = torch.randn(1, 8, 5, 8, 8), torch.randn(1, 12, 24)
>>> for step, t in enumerate(torch.linspace(1000, 20, 10)):
...     with model.cache_context("cond", step_index=step, num_inference_steps=10):
...         velocity = model(latents, t, text).sample
>>> stats = step_rehash_stats(model)["cond"]
>>> stats.full_steps, len(stats.rehash_steps)
((0, 3, 5, 8), 6)
>>> remove_step_rehash(model)

Layout: ``schedule`` (key-step searches and the schedule file), ``hooks`` (:class:`StepRehashConfig`, the
step-aware model hook, the deep part's hooks, apply / remove / stats), ``calibrate`` (key steps measured on a
few prompts); the step clock and fallback context shared with AdaCache live in :mod:`reelkit.accel.step_hooks`.
"""

from reelkit.accel.step_rehash.calibrate import RehashCalibration, calibrate_step_rehash
from reelkit.accel.step_rehash.hooks import (
    StepRehashConfig,
    StepRehashStats,
    apply_step_rehash,
    config_from_options,
    deep_part,
    format_stats,
    gram_from_trace,
    record_rehash_features,
    remove_step_rehash,
    reset_step_rehash,
    step_rehash_stats,
)
from reelkit.accel.step_rehash.schedule import (
    SCHEDULE_FORMAT,
    RehashSchedule,
    StepRehashError,
    bundled_schedule_path,
    greedy_key_steps,
    optimal_key_steps,
    resample_similarity,
    search_key_steps,
    similarity_matrix,
    uniform_key_steps,
)

__all__ = ["SCHEDULE_FORMAT", "RehashCalibration", "RehashSchedule", "StepRehashConfig", "StepRehashError",
           "StepRehashStats", "apply_step_rehash", "bundled_schedule_path", "calibrate_step_rehash",
           "config_from_options", "deep_part", "format_stats", "gram_from_trace", "greedy_key_steps",
           "optimal_key_steps", "record_rehash_features", "remove_step_rehash", "resample_similarity",
           "reset_step_rehash", "search_key_steps", "similarity_matrix", "step_rehash_stats", "uniform_key_steps"]
