"""The training run: set up, restore or warm up, step (log, evaluate, checkpoint), finish.

    train(config, reporter) -> summary

Outputs under `out_dir`: config.yaml, heldout.json (the held-out records), metrics.jsonl (one row
per `log_every` steps and the last; the held-out evaluations on their steps' rows, the final one too;
a resumed run keeps the rows up to its checkpoint), tensorboard/, checkpoints/<step>/ (or under `checkpoint_dir`), summary.json, heldout_scores.jsonl (per held-out
record: the policy's, the reference's and the start model's log-probs), model/ (our folder format, LoRA merged;
`alignx convert jax-to-hf` reads it) and, with export_hf, hf/. A rerun of the same config resumes from the newest
checkpoint that restores and continues the same loss curve; SIGTERM (preemption) saves a final
checkpoint and returns; with several processes, SIGTERM to any one of them stops all of them at the same
step, and all save it. The `reporter` receives progress (the CLI draws it); nothing here prints.

Where the pieces live: set-up `train/setup.py`, the model source and the state `train/state.py`,
the jitted step `train/step.py`, the LM warm-up `train/lm_warmup.py`, held-out scoring
`train/heldout.py` (through `evaluation.PairScorer`), the reference cache `train/reference_cache.py`,
the summary and the export `train/export.py`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from collections.abc import Mapping

import flax.linen as nn
import jax
import numpy as np

from alignx_jax import evaluation
from alignx_jax.models import sharding as model_sharding
from alignx_jax.train import bridge as bridge_train
from alignx_jax.train import checkpoint as ckpt
from alignx_jax.train import config as config_lib
from alignx_jax.train import data as train_data
from alignx_jax.train import export, hosts, lm_warmup, metrics, reference_cache
from alignx_jax.train import heldout as heldout_lib
from alignx_jax.train import sharding as train_sharding
from alignx_jax.train.setup import Reporter, Run, SilentReporter, setup
from alignx_jax.train.step import TrainState, train_step

__all__ = ["Reporter", "SilentReporter", "train"]


MAX_LOGGED_GROUPS = 32  # metrics.jsonl rows carry the group-robust weights themselves up to this many personas

def train(config: config_lib.TrainConfig, reporter: Reporter | None = None, *, deadline: float | None = None) -> dict:
    """Run (or resume) the training the config describes; returns the summary (also in summary.json).

    `deadline` (a `time.perf_counter()` value) bounds the wall time: the run stops stepping, checkpoints
    and finishes (final held-out evaluation, model folder) early when the next step and that finish would
    end past it, sizing both from this run's measured speed (the last step that compiled nothing, and the
    first held-out pass). `steps` in the summary is the number run."""
    reporter = reporter or SilentReporter()
    started = time.perf_counter()
    # JAX's distributed runtime installs its own SIGTERM handler: it starts first, and ours replaces it.
    train_sharding.initialize_distributed(config.distributed)
    # From then on, a SIGTERM during set-up, restore or the reference pass is acted on at the next
    # point every process reaches (a piece of the pass, the first step), not by one process alone.
    with _preemption_flag() as flag:
        run = setup(config, reporter)
        iterator = iter(run.batches())
        checkpoints = ckpt.of_run(config)
        reference = None
        if config.reference == "precomputed":  # scored by the start model, the set-up state, before a restore
            reference = reference_cache.precompute(run, reporter.message, stop=lambda: flag["stop"])
            if reference is None:
                reporter.message("SIGTERM: the reference pass kept its pieces; rerun to resume")
                checkpoints.close()
                return {"preempted": True, "step": checkpoints.latest_step() or 0}
        state = _restore_or_warm_up(run, checkpoints, iterator, reporter)
        tick = time.perf_counter()
        held = heldout_lib.begin(run, state) if run.splits.heldout else None
        # The final pass scores the policy once: the first pass's time, or its share above a kept trunk.
        finish_seconds = (time.perf_counter() - tick) * (held.policy_share if held is not None else 1.0)
        state, last_row, eval_rows, preempted = _steps(run, state, iterator, checkpoints, reference, held, reporter,
                                                       flag, deadline=deadline, finish_seconds=finish_seconds)
        # Inside the handler: a SIGTERM that reaches this host while the last (preemption) checkpoint is
        # still being written (it is asynchronous) must not kill the process mid-write.
        checkpoints.close()
    reporter.close()
    if preempted:
        reporter.message(f"SIGTERM: saved checkpoint {int(state.step)} in {checkpoints.directory}; rerun to resume")
        return {"preempted": True, "step": int(state.step)}
    return export.finish(run, state, held, last_row, eval_rows, started, reporter.message)


def _warmed(run: Run) -> bool:
    """An LM warm-up made the reference: checkpoints then hold it (the frozen params) too."""
    return run.config.lm_warmup.steps > 0


def _restore_or_warm_up(run: Run, checkpoints: ckpt.Checkpoints, iterator, reporter: Reporter) -> TrainState:
    """The newest checkpoint that restores (state and data position), else the set-up state, warmed
    up first when the config asks (and saved as checkpoint 0).

    The loop takes the state over from `run` (`run.state` is None afterwards): its buffers are donated
    to the first step. When there are checkpoints, the set-up arrays a checkpoint replaces (trained
    parameters, optimizer state) are freed before it is read: one restores, or the run stops
    (`Checkpoints.restore` raises), so they are never used, and a resumed step holds one copy of the
    state, as `alignx compile` counts it, not the set-up copy beside the restored one."""
    state, warmed = run.state, _warmed(run)
    run.state = None
    saved = ckpt.saved_state(state, with_frozen=warmed)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            saved, ckpt.saved_state(run.state_shardings, with_frozen=warmed))
    if checkpoints.has_steps():
        for array in jax.tree.leaves(saved):
            if isinstance(array, jax.Array) and not array.is_deleted():
                array.delete()
        state = state.replace(**{k: None for k in saved})
    del saved
    restored = checkpoints.restore(abstract, iterator, warn=reporter.message)
    if restored is not None:
        reporter.message(f"resumed from {checkpoints.directory / str(restored.step)}")
        return state.replace(**restored.state)
    if warmed:
        state = lm_warmup.warm_up(run, state, reporter.message)
        checkpoints.save(0, ckpt.saved_state(state, with_frozen=True), iterator, {"seed": run.config.seed})
    return state


def _steps(run: Run, state: TrainState, iterator, checkpoints: ckpt.Checkpoints, reference, held,
           reporter: Reporter, flag: Mapping[str, bool], *, deadline: float | None, finish_seconds: float
           ) -> tuple[TrainState, dict, list, bool]:
    """The step loop: (final state, last metrics row, held-out evaluation rows, preempted). It stops
    when `flag["stop"]` (SIGTERM) is set on any process, and early when the next step and
    `finish_seconds` would end past `deadline` (see `train`)."""
    config = run.config
    start_step = int(state.step)
    warmed = _warmed(run)
    writer = metrics.MetricsWriter(run.out_dir, resume_step=start_step) if jax.process_index() == 0 else None
    # Metrics come back replicated, so every process can read them (multi-host too).
    step_fn = jax.jit(train_step, static_argnames=("spec", "optimizer", "schedule"), donate_argnums=0,
                      out_shardings=(run.state_shardings, train_sharding.replicated(run.mesh)))
    row_sharding, pair_sharding = train_sharding.batch_shardings(run.mesh)
    peak = metrics.peak_flops_per_device() * jax.device_count()
    base_rng = jax.random.key(config.seed)
    # The evaluations of the sessions before a resume (the steps up to its checkpoint) stay in the history.
    eval_rows = metrics.evaluations(writer.kept_rows) if writer is not None else []
    compiled_shapes, last_row = set(), {}
    reporter.start(config.steps, start_step)
    preempted, step_seconds = False, None
    with jax.set_mesh(run.mesh), nn.logical_axis_rules(model_sharding.DEFAULT_RULES):
        for step in range(start_step, config.steps):
            iteration_start = time.perf_counter()
            micro = [next(iterator).as_dict() for _ in range(config.optimizer.accumulation)]
            extra = {**bridge_train.batch_extras(run.bridge, micro), **run.pair_extras(micro)}
            if reference is not None:
                looked_up = [reference_cache.lookup(reference, b["pair_source"]) for b in micro]
                extra.update({k: np.stack([x[k] for x in looked_up]) for k in ("ref_chosen", "ref_rejected")})
            batch, scored_length = train_data.assemble(micro, buckets=run.buckets, row_sharding=row_sharding,
                                                       pair_sharding=pair_sharding, extra=extra)
            spec = dataclasses.replace(run.spec, scored_length=scored_length)
            shape = (batch["tokens"].shape, scored_length)
            tick = time.perf_counter()
            state, step_metrics = step_fn(state, batch, jax.random.fold_in(base_rng, step), spec=spec,
                                          optimizer=run.optimizer, schedule=run.schedule)
            step_metrics = jax.device_get(step_metrics)
            seconds = time.perf_counter() - tick
            flops = metrics.step_flops(run.model, tokens=float(step_metrics["tokens"]),
                                       scored_tokens=float(step_metrics["scored_tokens"]), seq_len=shape[0][-1],
                                       reference_forward=config.reference != "precomputed",
                                       trunk_layers=run.spec.trunk_layers)
            row = {"step": step + 1, **{k: float(v) for k, v in step_metrics.items()}, "seconds": seconds,
                   "pairs_per_s": float(step_metrics["pairs"]) / seconds,
                   "tokens_per_s": float(step_metrics["tokens"]) / seconds, "mfu": flops / seconds / peak,
                   "compiled": shape not in compiled_shapes}
            compiled_shapes.add(shape)
            if run.spec.num_groups and run.spec.num_groups <= MAX_LOGGED_GROUPS:  # alpha after the step
                row["group_weights"] = np.asarray(jax.device_get(state.group_weights)).round(6).tolist()
            if not math.isfinite(row["loss"]):
                raise FloatingPointError(f"step {step + 1}: the loss is {row['loss']} (lr {row['lr']:.3g}); "
                                         f"the last checkpoint is intact")
            last_row = row
            if held is not None and config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < config.steps:
                scored = heldout_lib.policy_rows(run, held, state)
                entry = export.evaluation_entry(step + 1, scored, evaluation.summarize(scored, beta=config.beta),
                                                export.reward_report(scored, beta=config.beta),
                                                run.splits.unseen_personas, beta=config.beta)
                row.update(entry)
                eval_rows.append(entry)
            reporter.step(step + 1, row)
            if not row["compiled"]:
                step_seconds = time.perf_counter() - iteration_start
            # SIGTERM may reach one process only: all of them stop (and save) at the same step.
            stop = hosts.any_process(flag["stop"])
            out_of_time = _past_deadline(deadline, (step_seconds or 0.0) + finish_seconds)
            last = step + 1 == config.steps or stop or out_of_time
            # The last step's row is always logged: the final held-out evaluation joins it (export.finish).
            if writer is not None and ((step + 1) % config.log_every == 0 or "eval_accuracy" in row or last):
                writer.write(row)
            if (step + 1) % config.checkpoint_every == 0 or last:
                checkpoints.save(step + 1, ckpt.saved_state(state, with_frozen=warmed), iterator, {"seed": config.seed})
            if out_of_time and step + 1 < config.steps:
                reporter.message(f"time budget: stopping after step {step + 1} of {config.steps}")
            if stop or out_of_time:
                preempted = stop and step + 1 < config.steps
                break
    if writer is not None:
        writer.close()
    return state, last_row, eval_rows, preempted


def _past_deadline(deadline: float | None, seconds_needed: float) -> bool:
    """Would work of `seconds_needed` end past `deadline`? Every process acts on process 0's answer."""
    if deadline is None:
        return False
    late = time.perf_counter() + seconds_needed > deadline
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        late = bool(multihost_utils.broadcast_one_to_all(np.asarray(late)))
    return late


@contextlib.contextmanager
def _preemption_flag():
    """A flag set by SIGTERM (a preemption notice); the loop checkpoints and stops at the next step
    boundary, every process at the same one (`hosts.any_process`)."""
    flag = {"stop": False}
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        flag["stop"] = True

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: no handler, no preemption checkpoint
        previous = None
    try:
        yield flag
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

