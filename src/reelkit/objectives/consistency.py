"""Flow-matching consistency distillation (T2V-Turbo, Li et al. 2024; LCM): the student's one-step estimate, the
teacher's guided solver step on its noise-level grid, and the pseudo-Huber distance between them."""

from __future__ import annotations

import torch


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """``mean(sqrt((a - b)^2 + c^2) - c)`` (Song & Dhariwal 2023; T2V-Turbo's distance)."""
    return (torch.sqrt((a.float() - b.float()) ** 2 + c**2) - c).mean()


def solver_grid(scheduler_config, num_levels: int) -> torch.Tensor:
    """The teacher's ``num_levels`` noise levels, from pure noise down, then 0: ``(num_levels + 1,)``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(num_levels)
    return scheduler.sigmas.float()


def consistency_estimate(model, x_t: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor,
                         guidance: torch.Tensor) -> torch.Tensor:
    """The student's single-step clean estimate ``f(x_t) = x_t - sigma v(x_t, sigma, text, w)``."""
    velocity = model(x_t, sigma * 1000, text, guidance=guidance).sample
    return x_t - sigma.view(-1, 1, 1, 1, 1) * velocity.float()


@torch.no_grad()
def teacher_solver_step(teacher, x_t: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
                        text: torch.Tensor, uncond: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
    """One Euler (flow-matching DDIM) step of the teacher's ODE with classifier-free guidance ``w`` per sample."""
    both = teacher(torch.cat([x_t, x_t]), torch.cat([sigma, sigma]) * 1000, torch.cat([text, uncond])).sample.float()
    cond, uncond_v = both.chunk(2)
    w = guidance.view(-1, 1, 1, 1, 1)
    velocity = uncond_v + w * (cond - uncond_v)
    return x_t + (sigma_next - sigma).view(-1, 1, 1, 1, 1) * velocity


__all__ = ["consistency_estimate", "pseudo_huber", "solver_grid", "teacher_solver_step"]
