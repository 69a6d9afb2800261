"""The optimizer: optax AdamW behind global-norm clipping, with warmup then cosine / linear decay."""
from __future__ import annotations

import optax

from alignx_jax.train.config import OptimizerConfig


def learning_rate(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """lr(step): linear warmup 0 -> lr over `warmup_steps`, then `schedule` down to end_lr_ratio * lr
    at `total_steps` (constant: stays at lr)."""
    peak, end = config.lr, config.lr * config.end_lr_ratio
    decay_steps = max(total_steps - config.warmup_steps, 1)
    if config.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=config.end_lr_ratio)
    elif config.schedule == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    else:
        decay = optax.constant_schedule(peak)
    if not config.warmup_steps:
        return decay
    warmup = optax.linear_schedule(0.0, peak, config.warmup_steps)
    return optax.join_schedules([warmup, decay], [config.warmup_steps])


def make_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    """clip_by_global_norm (when clip_norm) then AdamW; the schedule is read back by `learning_rate`."""
    adamw = optax.adamw(learning_rate(config, total_steps), b1=config.b1, b2=config.b2, eps=config.eps,
                        weight_decay=config.weight_decay)
    if config.clip_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), adamw)
