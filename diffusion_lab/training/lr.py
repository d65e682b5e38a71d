"""Learning-rate schedules that torch lacks as one constructor: linear warmup then cosine decay."""
import math

import torch

from diffusion_lab.errors import ConfigError


class WarmupCosine(torch.optim.lr_scheduler.LambdaLR):
    """lr * min(1, step / warmup_steps), then a cosine from lr down to min_ratio * lr at total_steps."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int = 100, total_steps: int = 10000,
                 min_ratio: float = 0.0):
        if warmup_steps < 0 or total_steps < 1:
            raise ConfigError(f"lr_scheduler: need warmup_steps >= 0 and total_steps >= 1, got {warmup_steps}, {total_steps}")
        self.warmup_steps, self.total_steps, self.min_ratio = warmup_steps, total_steps, min_ratio
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        """The multiplier of the base learning rate at an optimizer step."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
