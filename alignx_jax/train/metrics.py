"""What a run reports: per-step rows in out_dir/metrics.jsonl and TensorBoard event files, FLOPs and MFU.

MFU = model FLOPs of the step / (step time * devices * peak FLOP/s per device). Model FLOPs count
the policy forward + backward (3x a forward), the reference forward when it runs in the step, the
attention's score and value products at the rows' nominal causal context (T/2 per token), and the
LM head on scored tokens only (what the fused kernel computes). With a trunk shared by policy and
reference (LoRA on the top layers), the layers below run once, forward only. Peak FLOP/s: the bf16 dense peak of
known accelerators; on CPU the measured rate of a large float32 matmul on this machine.
"""
from __future__ import annotations

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from alignx_jax.models import llama

# bf16 dense peak FLOP/s per chip (vendor figures).
PEAK_FLOPS = {"h100": 989e12, "h200": 989e12, "a100": 312e12, "v5p": 459e12, "v5 lite": 197e12, "v5e": 197e12,
              "v4": 275e12, "v6": 918e12, "l4": 121e12}


def decoder_matmul_params(config: llama.LlamaConfig) -> int:
    """Parameters that every token multiplies through (projections and MLP; not the embedding, not the head)."""
    d, h = config.hidden_size, config.resolved_head_dim
    attention = d * h * (2 * config.num_heads + 2 * config.num_kv_heads)
    mlp = 3 * d * config.intermediate_size
    return config.num_layers * (attention + mlp)


def step_flops(config: llama.LlamaConfig, *, tokens: float, scored_tokens: float, seq_len: int,
               reference_forward: bool, remat: bool = False, trunk_layers: int = 0) -> float:
    """Model FLOPs of one training step (module docstring); `tokens` counts non-padding tokens.
    `remat` adds the decoder's recomputed forward (the LM head's kernel recomputes its own tiles in
    the backward, which the 3x already counts). `trunk_layers`: decoder layers below the adapters,
    run once without a backward (`StepSpec.trunk_layers`)."""
    per_token = 2 * decoder_matmul_params(config)
    per_token += 4 * config.num_layers * config.num_heads * config.resolved_head_dim * (seq_len / 2)
    trunk = per_token * tokens * trunk_layers / config.num_layers
    top = per_token * tokens - trunk
    head = 2 * config.hidden_size * config.vocab_size
    forward = top + head * scored_tokens
    return trunk + forward * (4 if reference_forward else 3) + (top if remat else 0.0)


_CPU_PEAK: float | None = None


def peak_flops_per_device() -> float:
    """The device's peak (table above), or on CPU a measured float32 matmul rate (cached)."""
    global _CPU_PEAK
    device = jax.devices()[0]
    kind = device.device_kind.lower()
    for name, flops in PEAK_FLOPS.items():
        if name in kind:
            return flops
    if _CPU_PEAK is None:
        n = 1024
        a = jnp.ones((n, n), jnp.float32)
        matmul = jax.jit(lambda x: x @ x)
        matmul(a).block_until_ready()
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            matmul(a).block_until_ready()
            best = min(best, time.perf_counter() - start)
        _CPU_PEAK = 2 * n**3 / best / jax.local_device_count()
    return _CPU_PEAK


class MetricsWriter:
    """Appends one JSON row per step to metrics.jsonl and mirrors scalars to TensorBoard (tensorboardX)."""

    def __init__(self, out_dir: pathlib.Path, *, resume_step: int = 0):
        self.path = out_dir / "metrics.jsonl"
        self._truncate_after(resume_step)
        self._file = self.path.open("a")
        from tensorboardX import SummaryWriter

        self._tensorboard = SummaryWriter(str(out_dir / "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        """A resumed run recomputes the steps after its checkpoint: drop their rows (and a torn last
        line); `kept_rows` are the rows that stay."""
        self.kept_rows = []
        if not self.path.exists():
            return
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("step", 0) <= step:
                self.kept_rows.append(row)
        _write_rows(self.path, self.kept_rows)

    def write(self, row: dict) -> None:
        row = _plain(row)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        step = row["step"]
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and value is not None:
                self._tensorboard.add_scalar(key, value, step)

    def close(self) -> None:
        self._file.close()
        self._tensorboard.close()


def _plain(row: dict) -> dict:
    return {k: (float(v) if isinstance(v, (np.floating, np.integer, jax.Array)) else v) for k, v in row.items()}


def _write_rows(path: pathlib.Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def read_metrics(out_dir: str | pathlib.Path) -> list[dict]:
    path = pathlib.Path(out_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def evaluations(rows: list[dict]) -> list[dict]:
    """The held-out evaluations among metrics rows: each row's step and `eval_*` fields."""
    return [{k: v for k, v in row.items() if k == "step" or k.startswith("eval_")}
            for row in rows if "eval_accuracy" in row]


def add_to_row(out_dir: str | pathlib.Path, fields: dict) -> None:
    """Adds `fields` to metrics.jsonl's row of step `fields["step"]` (a new row at the end when the
    step was not logged); the final held-out evaluation goes there, after the loop closed the file."""
    path = pathlib.Path(out_dir) / "metrics.jsonl"
    rows = read_metrics(out_dir)
    fields = _plain(fields)
    for row in rows:
        if row["step"] == fields["step"]:
            row.update(fields)
            break
    else:
        rows.append(fields)
    _write_rows(path, rows)
