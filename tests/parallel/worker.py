"""One rank of the 2-process context-parallel checks (gloo on CPU): every scenario runs once alone and once with its
tokens split over the ranks, and the rank saves what it saw for the tests to compare.

    python -m torch.distributed.run --nproc_per_node 2 tests/parallel/worker.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from reelkit.accel.adacache import AdaCacheConfig, ada_cache_stats, apply_ada_cache
from reelkit.accel.slicing import SlicingConfig, apply_feature_slicing
from reelkit.accel.step_rehash import StepRehashConfig, apply_step_rehash, step_rehash_stats
from reelkit.parallel import ParallelError, enable_context_parallel
from reelkit.pipelines.text_to_video import tiny_pipeline

PROMPT = "a red circle moving right and a blue star spinning on a grey background"
FRAMES, SIZE, STEPS = 9, 32, 8  # latents (B, 8, 3, 4, 4): 4 tokens a frame at patch 2, 2 on each rank
CODEBOOK = {0.2: 3, 0.6: 2, 5.0: 1}  # reuses some steps of the tiny model


def _pipeline_run(accelerate, parallel: bool):
    pipe = tiny_pipeline(open_gates=True)
    if parallel:
        enable_context_parallel(pipe.transformer, "ulysses", 2)
    accelerate(pipe.transformer)
    seen = []
    pipe.transformer.transformer_blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    video = pipe(PROMPT, num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=4.0,
                 generator=torch.Generator().manual_seed(0), output_type="pt").frames[0]
    pipe.transformer.tokens_seen = max(seen)  # by the first block: the whole sequence alone, a share when split
    return video, pipe.transformer


def _decisions(model) -> dict:
    ada = ada_cache_stats(model) if hasattr(model, "_ada_cache_config") else {}
    rehash = step_rehash_stats(model) if hasattr(model, "_step_rehash_config") else {}
    return {**{f"ada/{k}": v.computed_steps for k, v in ada.items()},
            **{f"rehash/{k}": tuple(v.full_steps) for k, v in rehash.items()}}


def pipeline_scenarios() -> dict:
    scenarios = {
        "plain": lambda model: None,
        "adacache": lambda model: apply_ada_cache(model, AdaCacheConfig(codebook=CODEBOOK)),
        "adacache_moreg": lambda model: apply_ada_cache(model, AdaCacheConfig(codebook=CODEBOOK, moreg=True,
                                                                             moreg_window=(0.0, 1.0))),
        "adacache_per_sample": lambda model: apply_ada_cache(model, AdaCacheConfig(codebook=CODEBOOK,
                                                                                  per_sample=True)),
        "step_rehash": lambda model: apply_step_rehash(model, StepRehashConfig(key_steps=(0, 3, 6))),
        "feature_slicing": lambda model: apply_feature_slicing(model, SlicingConfig(frame_chunks=2,
                                                                                    spatial_chunks=2)),
    }
    results = {}
    for name, accelerate in scenarios.items():
        alone, alone_model = _pipeline_run(accelerate, parallel=False)
        split, split_model = _pipeline_run(accelerate, parallel=True)
        results[name] = {"alone": alone, "split": split, "alone_decisions": _decisions(alone_model),
                         "split_decisions": _decisions(split_model), "tokens_alone": alone_model.tokens_seen,
                         "tokens_split": split_model.tokens_seen}
    return results


def wan_scenario() -> dict:
    """diffusers' WanTransformer3DModel on its own _cp_plan, with AdaCache and MoReg (whose frame comparison must
    see whole frames although Wan's plan splits the token sequence)."""
    import diffusers

    def run(parallel: bool, rank_noise: float = 0.0):
        torch.manual_seed(0)
        model = diffusers.WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
            text_dim=8, freq_dim=16, ffn_dim=16, num_layers=2, rope_max_seq_len=32).eval()
        for name, parameter in model.named_parameters():  # a trained-looking model: blocks change the output
            if "scale_shift" in name or "proj_out" in name:
                parameter.data.normal_(0, 0.3)
        if parallel:
            enable_context_parallel(model, "ulysses", 2)
        apply_ada_cache(model, AdaCacheConfig(codebook=CODEBOOK, moreg=True, moreg_window=(0.0, 1.0)))
        generator = torch.Generator().manual_seed(1)
        latents = torch.randn(1, 4, 4, 8, 8, generator=generator)  # 4 frames of 16 tokens: 32 on each rank
        text = torch.randn(1, 6, 8, generator=generator)
        if rank_noise:
            latents = latents + rank_noise * dist.get_rank() * torch.randn(latents.shape)
        outputs = []
        with torch.no_grad():
            for step, t in enumerate(torch.linspace(999, 100, 8)):
                with model.cache_context("cond", step_index=step, num_inference_steps=8):
                    outputs.append(model(latents, t.view(1), text, return_dict=False)[0])
        return torch.stack(outputs), _decisions(model)

    (alone, alone_decisions), (split, split_decisions) = run(False), run(True)
    _, skewed_decisions = run(True, rank_noise=0.5)
    return {"alone": alone, "split": split, "alone_decisions": alone_decisions, "split_decisions": split_decisions,
            "skewed_decisions": skewed_decisions}


def rank_dependent_scenario() -> dict:
    """Each rank is given a different prompt's text states: the ranks see different residuals, and AdaCache must still
    decide the same steps on both (or the ranks would run different collectives and hang)."""
    pipe = tiny_pipeline(open_gates=True)
    enable_context_parallel(pipe.transformer, "ulysses", 2)
    apply_ada_cache(pipe.transformer, AdaCacheConfig(codebook=CODEBOOK))
    prompt = [PROMPT, "a yellow square growing on a white background"][dist.get_rank()]
    video = pipe(prompt, num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=4.0,
                 generator=torch.Generator().manual_seed(dist.get_rank()), output_type="pt").frames[0]
    return {"video": video, "decisions": _decisions(pipe.transformer)}


def refusals() -> dict:
    """The one-line errors every rank must raise together (and then carry on: no rank is left waiting)."""
    found = {}

    def attempt(name, fn):
        try:
            fn()
            found[name] = None
        except ParallelError as error:
            found[name] = str(error)

    def odd_size():
        pipe = tiny_pipeline()
        enable_context_parallel(pipe.transformer, "ulysses", 2)
        pipe(PROMPT, num_frames=FRAMES, height=16, width=16, num_inference_steps=1)  # 2x2 latents: 1 token a frame

    def ring_on_cpu():
        enable_context_parallel(tiny_pipeline().transformer, "ring", 2)

    def too_many():
        enable_context_parallel(tiny_pipeline().transformer, "ulysses", 3)

    def backend_without_context_parallelism():
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry

        previous = _AttentionBackendRegistry.get_active_backend()[0]
        model = tiny_pipeline().transformer
        model.set_attention_backend("_native_math")  # diffusers makes it the process-wide default too
        try:
            enable_context_parallel(model, "ulysses", 2)
        finally:
            _AttentionBackendRegistry.set_active_backend(previous)

    def rehash_calibration():
        from reelkit.accel.step_rehash import StepRehashError, record_rehash_features

        model = tiny_pipeline().transformer
        enable_context_parallel(model, "ulysses", 2)
        apply_step_rehash(model, StepRehashConfig())
        try:
            record_rehash_features(model)
        except StepRehashError as error:
            raise ParallelError(str(error)) from None

    def first_block_cache():
        from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

        model = tiny_pipeline().transformer
        apply_first_block_cache(model, FirstBlockCacheConfig(threshold=0.1))
        enable_context_parallel(model, "ulysses", 2)

    for name, fn in (("odd_size", odd_size), ("ring_on_cpu", ring_on_cpu), ("too_many", too_many),
                     ("backend", backend_without_context_parallelism), ("rehash_calibration", rehash_calibration),
                     ("first_block_cache", first_block_cache)):
        attempt(name, fn)
    return found


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    results = {"pipeline": pipeline_scenarios(), "wan": wan_scenario(), "rank_dependent": rank_dependent_scenario(),
               "refusals": refusals()}
    dist.barrier()  # every rank got here: nothing hung
    torch.save(results, Path(out_dir) / f"rank{dist.get_rank()}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
