"""The training run: set up devices, model, data and state; step; log; checkpoint; evaluate; export.

    train(config, reporter) -> summary

Outputs under `out_dir`: config.yaml, heldout.json (the held-out records), metrics.jsonl (one row
per step), tensorboard/, checkpoints/<step>/, summary.json, heldout_scores.jsonl (per held-out
record: the policy's, the reference's and the start model's log-probs), model/ (our folder format, LoRA merged;
`alignx convert jax-to-hf` reads it) and, with export_hf, hf/. A rerun of the same config resumes from the newest
checkpoint that restores and continues the same loss curve; SIGTERM (preemption) saves a final
checkpoint and returns. The `reporter` receives progress (the CLI draws it); nothing here prints.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import pathlib
import signal
import time
from collections.abc import Mapping
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import yaml

from alignx_jax import data as data_lib
from alignx_jax import evaluation, interop, kernels, losses
from alignx_jax.errors import InputError, MissingFileError
from alignx_jax.models import llama, scoring
from alignx_jax.models import sharding as model_sharding
from alignx_jax.train import checkpoint as ckpt
from alignx_jax.train import config as config_lib
from alignx_jax.train import data as train_data
from alignx_jax.train import heldout as heldout_lib
from alignx_jax.train import bridge as bridge_train
from alignx_jax.train import lm_warmup, lora, memory, metrics, reference_cache
from alignx_jax.train import sharding as train_sharding
from alignx_jax.train.optimizer import learning_rate, make_optimizer
from alignx_jax.train.step import StepSpec, TrainState, policy_params, train_step


class Reporter(Protocol):
    def start(self, total: int, completed: int) -> None: ...
    def step(self, step: int, row: Mapping[str, Any]) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...


class SilentReporter:
    def start(self, total, completed):
        pass

    def step(self, step, row):
        pass

    def message(self, text):
        pass

    def close(self):
        pass


# ---- set-up ------------------------------------------------------------------------------------

def model_config_of(config: config_lib.ModelConfig) -> llama.LlamaConfig:
    """The architecture without loading weights (random presets, HF / our folders; GGUF reads its header)."""
    numerics = dict(dtype=config.dtype, param_dtype=config.param_dtype, remat=config.remat,
                    attention_impl=config.attention_impl)
    if config.name == "random":
        try:
            return llama.preset(config.preset, **{**config.overrides, **numerics})
        except (TypeError, ValueError) as error:
            raise InputError(f"config key 'model': {error}") from None
    path = pathlib.Path(config.name)
    if config.name == interop.EMBEDDED_ALIAS or path.suffix == ".gguf":
        return None  # read with the weights
    if not path.exists():
        raise MissingFileError(f"config key 'model.name': {config.name}: no such model folder "
                               f"(nor the alias {interop.EMBEDDED_ALIAS!r} or 'random')")
    from alignx_jax.interop import native

    if native.is_native(path):
        base = native.config_from_json((path / native.CONFIG_FILE).read_text(), str(path / native.CONFIG_FILE))
    else:
        base = interop.read_config(path)
    return base.replace(**numerics)


def load_model(config: config_lib.ModelConfig, mesh, seed: int):
    """(params placed on the mesh, LlamaConfig, tokenizer)."""
    numerics = dict(dtype=config.dtype, remat=config.remat, attention_impl=config.attention_impl)
    model_config = model_config_of(config)
    tokenizer = interop.load_tokenizer(config.tokenizer or config.name)
    if config.name == "random":
        shardings = train_sharding.param_shardings(model_config, mesh)
        init = jax.jit(llama.init_params, static_argnums=0, out_shardings=shardings)
        return init(model_config, jax.random.key(seed)), model_config, tokenizer
    shardings = train_sharding.param_shardings(model_config, mesh) if model_config is not None else None
    params, loaded = interop.load_params(config.name, param_dtype=config.param_dtype, dtype=config.dtype,
                                         shardings=shardings)
    model_config = loaded.replace(**numerics)
    if shardings is None:  # GGUF: loaded on the host first, then placed
        params = jax.device_put(params, train_sharding.param_shardings(model_config, mesh))
    return params, model_config, tokenizer


def _loss(config: config_lib.TrainConfig):
    hparams = {"beta": config.beta, **config.loss_hparams}
    try:
        fn = losses.resolve(config.loss, hparams)
    except (TypeError, ValueError) as error:
        raise InputError(f"config key 'loss': {error}") from None
    return fn, tuple(sorted(hparams.items()))


@dataclasses.dataclass
class _Run:
    """Everything the loop needs, built once."""

    config: config_lib.TrainConfig
    out_dir: pathlib.Path
    mesh: Any
    model: llama.LlamaConfig
    tokenizer: Any
    splits: train_data.Splits
    state: TrainState
    state_shardings: Any
    spec: StepSpec
    optimizer: Any
    schedule: Any
    buckets: tuple[int, ...]
    bridge: bridge_train.BridgeSetup | None = None  # PBA conditioned by a preference bridge

    def prompt_format(self, **kwargs) -> data_lib.PromptFormat:
        """The training prompt format (a bridge run's soft slots or precomputed MAP profiles)."""
        return bridge_train.prompt_format(self.bridge, train_data.prompt_format(self.config.data, **kwargs))


def create_state(config: config_lib.TrainConfig, params, model: llama.LlamaConfig, mesh, optimizer):
    """TrainState on the mesh: the optimizer state is created directly in its sharded form."""
    param_shard = train_sharding.param_shardings(model, mesh)
    repl = train_sharding.replicated(mesh)
    if config.reference == "lora":
        adapters = lora.init_adapters(params, config.lora, jax.random.key(config.seed + 1))
        trained, trained_shard, frozen = jax.device_put(adapters, repl), jax.tree.map(lambda _: repl, adapters), params
    else:
        trained, trained_shard = params, param_shard
        # The reference is a copy of the start model (same placement); precomputed needs none.
        frozen = jax.tree.map(jnp.copy, params) if config.reference == "frozen" else None
    shapes = jax.eval_shape(lambda: trained)
    opt_shard = train_sharding.optimizer_shardings(optimizer, shapes, trained_shard, mesh)
    opt_state = jax.jit(optimizer.init, out_shardings=opt_shard)(trained)
    frozen_shard = None if frozen is None else param_shard
    state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), repl), params=trained, opt_state=opt_state,
                       frozen=frozen)
    shardings = TrainState(step=repl, params=trained_shard, opt_state=opt_shard, frozen=frozen_shard)
    return state, shardings


def _check_out_dir(config: config_lib.TrainConfig) -> pathlib.Path:
    out_dir = pathlib.Path(config.out_dir)
    if not out_dir.parent.exists():
        raise MissingFileError(f"config key 'out_dir': the folder {out_dir.parent} does not exist")
    return out_dir


def _check_config_matches(out_dir: pathlib.Path, config: config_lib.TrainConfig) -> None:
    """A resumed run must be the same run: the saved config.yaml must equal this one (steps may grow)."""
    saved_path = out_dir / "config.yaml"
    if not saved_path.exists():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    current = config_lib.to_dict(config)
    changed = sorted(k for k in set(saved) | set(current) if k not in ("steps", "progress") and saved.get(k) != current.get(k))
    if changed:
        raise InputError(f"{out_dir} holds a run with another config (keys {changed} differ): resume it with the "
                         f"same config, or choose a new out_dir")


def _check_memory(config: config_lib.TrainConfig, mesh) -> None:
    """Refuse, before loading anything, a run planned to exceed `device_memory_gib` per device."""
    model = model_config_of(config.model)
    if config.device_memory_gib is None or model is None:
        return
    planned = memory.per_device_gib(config, model, dict(mesh.shape))
    if planned["total"] > config.device_memory_gib:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in planned.items() if k != "total")
        raise InputError(f"the run needs ~{planned['total']:.1f} GiB per device ({parts}), more than "
                         f"device_memory_gib = {config.device_memory_gib}: shard more (mesh.fsdp), set model.remat, "
                         f"lower data.rows or use reference: precomputed / lora")


def setup(config: config_lib.TrainConfig, reporter: Reporter) -> _Run:
    train_sharding.initialize_distributed(config.distributed)
    out_dir = _check_out_dir(config)
    _check_config_matches(out_dir, config)
    loss_fn, hparams = _loss(config)
    splits = train_data.build_splits(config.data, config.seed)
    mesh = train_sharding.make_mesh(config.mesh)
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    if config.data.rows % data_parallel:
        raise InputError(f"config key 'data.rows' = {config.data.rows} must be a multiple of the mesh's data x fsdp "
                         f"= {data_parallel} (rows are split over them)")
    _check_memory(config, mesh)
    params, model, tokenizer = load_model(config.model, mesh, config.seed)
    train_data.check_records_fit(splits.train, tokenizer=tokenizer, config=config.data, seed=config.seed)
    optimizer = make_optimizer(config.optimizer, config.steps)
    bridge = None
    if config.bridge is not None:
        bridge = bridge_train.setup(config.bridge, train_records=splits.train, heldout_records=splits.heldout,
                                    params=params, model=model, tokenizer=tokenizer, seed=config.seed,
                                    report=reporter.message)
        if not bridge.soft:  # text conditioning: each record's MAP profile goes into its PBA prompt
            splits = train_data.Splits(*bridge_train.text_records(bridge))
    state, shardings = create_state(config, params, model, mesh, optimizer)
    bridge_step = bridge_train.step_spec(bridge, config.optimizer, config.steps)
    if bridge_step is not None:
        repl = train_sharding.replicated(mesh)
        trained = jax.device_put(bridge_train.trainable_params(bridge), repl)
        state = state.replace(bridge=trained, bridge_opt_state=jax.jit(bridge_step.optimizer.init,
                                                                        out_shardings=repl)(trained))
        shardings = shardings.replace(bridge=jax.tree.map(lambda _: repl, state.bridge),
                                      bridge_opt_state=jax.tree.map(lambda _: repl, state.bridge_opt_state))
    pairs = train_data.packing_config(config.data, jax.process_count()).num_pair_slots * jax.process_count()
    max_tokens = config.data.rows * config.data.seq_lengths[-1]
    buckets = train_data.scored_buckets(config.data.scored_buckets, max_tokens)
    spec = StepSpec(model=model, loss_fn=loss_fn, loss_hparams=hparams, reference=config.reference,
                    lora=config.lora if config.reference == "lora" else None, num_pairs=pairs, scored_length=buckets[0],
                    kernel_impl=config.model.kernel_impl, bridge=bridge_step)
    out_dir.mkdir(exist_ok=True)
    if jax.process_index() == 0:
        (out_dir / "config.yaml").write_text(yaml.safe_dump(config_lib.to_dict(config), sort_keys=False))
        if splits.heldout:  # the exact split, for `alignx eval --data out_dir/heldout.json`
            data_lib.write_records(splits.heldout, out_dir / "heldout.json")
    reporter.message(f"model {config.model.name} ({llama.num_params(model) / 1e6:.1f}M params), "
                     f"{len(splits.train)} training / {len(splits.heldout)} held-out records, mesh {dict(mesh.shape)}, "
                     f"reference: {config.reference}")
    return _Run(config, out_dir, mesh, model, tokenizer, splits, state, shardings, spec, optimizer,
                learning_rate(config.optimizer, config.steps), buckets, bridge)


# ---- scoring outside the step (reference cache, held-out evaluation) ------------------------------

@functools.partial(jax.jit, static_argnames=("model", "num_pairs", "scored_length"))
def _score(params, batch, *, model, num_pairs, scored_length):
    out = scoring.pair_logprobs(params, model, batch, num_pairs=num_pairs, scored_length=scored_length,
                                differentiable=False, soft_tokens=batch.get("soft_tokens"))
    return out.chosen, out.rejected


def _shared_batch_scorer(run: _Run, params, soft_tokens: np.ndarray | None = None):
    """score(host batch) -> (chosen [P], rejected [P]) on the mesh; every process passes the same batch.
    soft_tokens: [records, K, D] soft preference tokens, put into each pair's prompt slots by its
    `pair_source` (a bridge run's policy); None: the slots' placeholder tokens (the reference)."""
    row_sharding, pair_sharding = train_sharding.batch_shardings(run.mesh, micro_batches=False)
    processes, index = jax.process_count(), jax.process_index()

    def score(batch):
        rows, pairs = len(batch["tokens"]), len(batch["pair_valid"])
        if rows % processes or pairs % processes:
            raise InputError(f"evaluation rows {rows} / pair slots {pairs} do not divide over {processes} processes")
        batch = dict(batch)
        if soft_tokens is not None:
            batch["soft_tokens"] = soft_tokens[np.maximum(batch["pair_source"], 0)]
        local = {k: v[index * (len(v) // processes):(index + 1) * (len(v) // processes)]
                 for k, v in batch.items()
                 if k in train_data.ROW_KEYS + train_data.OPTIONAL_ROW_KEYS + ("pair_valid", "soft_tokens")}
        arrays = {k: jax.make_array_from_process_local_data(pair_sharding if k in ("pair_valid", "soft_tokens")
                                                            else row_sharding, v)
                  for k, v in local.items()}
        shards = run.mesh.shape["data"] * run.mesh.shape["fsdp"]  # the LM head runs on each device's rows
        length = kernels.bucket_length(scoring.scored_token_count(batch, shards), run.buckets)
        with jax.set_mesh(run.mesh), nn.logical_axis_rules(model_sharding.DEFAULT_RULES):
            chosen, rejected = _score(params, arrays, model=run.model, num_pairs=pairs, scored_length=length)
        return train_data.to_host(chosen), train_data.to_host(rejected)

    return score


def _precompute_reference(run: _Run, reporter: Reporter) -> dict[str, np.ndarray]:
    config = run.config
    fmt = run.prompt_format()
    packing = train_data.packing_config(config.data)
    describe = {"packing": dataclasses.asdict(packing), "prompt": dataclasses.asdict(fmt), "seed": config.seed,
                "on_long_response": config.data.on_long_response}
    key = reference_cache.content_key(run.state.params if run.state.frozen is None else run.state.frozen,
                                      run.splits.train, tokenizer_name=str(config.model.tokenizer or config.model.name),
                                      packing=describe)
    cache_dir = pathlib.Path(config.reference_cache_dir or run.out_dir.parent / ".reference_cache")

    def make():
        reporter.message(f"precomputing reference log-probs of {len(run.splits.train)} records")
        batches = data_lib.packed_batches(run.splits.train, tokenizer=run.tokenizer, config=packing, prompt_format=fmt,
                                          seed=config.seed, shuffle=False, shard_index=0, shard_count=1,
                                          on_long_response=config.data.on_long_response)
        score = _shared_batch_scorer(run, run.state.params)
        return reference_cache.compute(len(run.splits.train), (b.as_dict() for b in batches), score)

    arrays, path, hit = reference_cache.load_or_compute(cache_dir, key, make)
    reporter.message(f"reference log-probs {'reused from' if hit else 'cached in'} {path}")
    return arrays


def _heldout_rows(run: _Run, held: heldout_lib.HeldOut, state: TrainState) -> list[dict]:
    """Score rows (the keys of `alignx eval`'s scores.jsonl) of the held-out records under the policy."""
    soft = bridge_train.records_soft_tokens(run.bridge, state.bridge, held.records)
    score = _shared_batch_scorer(run, policy_params(state, run.spec), soft)
    chosen, rejected = heldout_lib.score_all(held.policy_batches, len(held.records), score)
    return heldout_lib.rows(held, chosen, rejected)


# ---- the loop ----------------------------------------------------------------------------------

@contextlib.contextmanager
def _preemption_flag():
    """A flag set by SIGTERM (a preemption notice); the loop checkpoints and stops at the next step."""
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


def _eval_row(step: int, report: Mapping[str, Any]) -> dict:
    return {"step": step, "eval_accuracy": report["accuracy"], "eval_accuracy_logp": report["accuracy_logp"],
            "eval_worst_persona_accuracy": report["worst_persona_accuracy"],
            "eval_worst_persona_accuracy_logp": report.get("worst_persona_accuracy_logp")}


def train(config: config_lib.TrainConfig, reporter: Reporter | None = None) -> dict:
    """Run (or resume) the training the config describes; returns the summary (also in summary.json)."""
    reporter = reporter or SilentReporter()
    started = time.perf_counter()
    run = setup(config, reporter)
    state = run.state
    dataset = data_lib.packed_batches(
        run.splits.train, tokenizer=run.tokenizer, config=train_data.packing_config(config.data, jax.process_count()),
        prompt_format=run.prompt_format(), seed=config.seed, num_epochs=None,
        on_long_response=config.data.on_long_response)
    iterator = iter(dataset)
    checkpoints = ckpt.Checkpoints(run.out_dir / "checkpoints", keep=config.keep_checkpoints)
    warmed = config.lm_warmup.steps > 0  # the reference is the warmed model: checkpoints hold it
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            ckpt.saved_state(state, with_frozen=warmed),
                            ckpt.saved_state(run.state_shardings, with_frozen=warmed))
    restored = checkpoints.restore(abstract, iterator, warn=reporter.message)
    if restored is not None:
        state = state.replace(**restored.state)
        reporter.message(f"resumed from {checkpoints.directory / str(restored.step)}")
    elif warmed:
        state = _lm_warmup(run, state, reporter)
        checkpoints.save(0, ckpt.saved_state(state, with_frozen=True), iterator, {"seed": config.seed})
    start_step = int(state.step)
    reference = _precompute_reference(run, reporter) if config.reference == "precomputed" else None
    held = None
    if run.splits.heldout:
        held = heldout_lib.prepare(run.splits.heldout, tokenizer=run.tokenizer, data_config=config.data,
                                   eval_config=config.eval, seed=config.seed,
                                   policy_format=bridge_train.heldout_format(run.bridge))
        reference_params = state.frozen if state.frozen is not None else _start_params(run)
        reference_score = _shared_batch_scorer(run, reference_params)
        # The "before" figures are the start model's; after an LM warm-up the reference is not it.
        start_score = _shared_batch_scorer(run, _start_params(run)) if warmed else None
        heldout_lib.score_start(held, reference_score, start_score)
        if run.bridge is not None:
            run.bridge.probe_sets = _bridge_probes(run, reference_score)
    writer = metrics.MetricsWriter(run.out_dir, resume_step=start_step) if jax.process_index() == 0 else None
    # Metrics come back replicated, so every process can read them (multi-host too).
    step_fn = jax.jit(train_step, static_argnames=("spec", "optimizer", "schedule"), donate_argnums=0,
                      out_shardings=(run.state_shardings, train_sharding.replicated(run.mesh)))
    row_sharding, pair_sharding = train_sharding.batch_shardings(run.mesh)
    peak = metrics.peak_flops_per_device() * jax.device_count()
    base_rng = jax.random.key(config.seed)
    compiled_shapes, last_row, eval_rows = set(), {}, []
    reporter.start(config.steps, start_step)
    preempted = False
    with _preemption_flag() as flag, jax.set_mesh(run.mesh), nn.logical_axis_rules(model_sharding.DEFAULT_RULES):
        for step in range(start_step, config.steps):
            micro = [next(iterator).as_dict() for _ in range(config.optimizer.accumulation)]
            extra = bridge_train.batch_extras(run.bridge, micro)
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
                                       reference_forward=config.reference != "precomputed")
            row = {"step": step + 1, **{k: float(v) for k, v in step_metrics.items()}, "seconds": seconds,
                   "pairs_per_s": float(step_metrics["pairs"]) / seconds,
                   "tokens_per_s": float(step_metrics["tokens"]) / seconds, "mfu": flops / seconds / peak,
                   "compiled": shape not in compiled_shapes}
            compiled_shapes.add(shape)
            if not math.isfinite(row["loss"]):
                raise FloatingPointError(f"step {step + 1}: the loss is {row['loss']} (lr {row['lr']:.3g}); "
                                         f"the last checkpoint is intact")
            last_row = row
            if held is not None and config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < config.steps:
                report = evaluation.summarize(_heldout_rows(run, held, state), beta=config.beta)
                row.update(_eval_row(step + 1, report))
                eval_rows.append(_eval_row(step + 1, report))
            if writer is not None and ((step + 1) % config.log_every == 0 or "eval_accuracy" in row):
                writer.write(row)
            reporter.step(step + 1, row)
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps or flag["stop"]:
                checkpoints.save(step + 1, ckpt.saved_state(state, with_frozen=warmed), iterator, {"seed": config.seed})
            if flag["stop"]:
                preempted = step + 1 < config.steps
                break
    checkpoints.close()
    if writer is not None:
        writer.close()
    reporter.close()
    if preempted:
        reporter.message(f"SIGTERM: saved checkpoint {int(state.step)} in {checkpoints.directory}; rerun to resume")
        return {"preempted": True, "step": int(state.step)}
    return _finish(run, state, held, last_row, eval_rows, started, reporter)


def _lm_warmup(run: _Run, state: TrainState, reporter: Reporter) -> TrainState:
    """`lm_warmup.steps` of next-token loss on the training rows (train/lm_warmup.py, its own data order,
    rows in out_dir/lm_warmup.jsonl); returns the state the preference steps start from: the warmed model
    as the policy and the reference (LoRA: merged into the base, fresh adapters), fresh optimizer states."""
    config, spec = run.config, run.spec
    steps = config.lm_warmup.steps
    optimizer = make_optimizer(config_lib.OptimizerConfig(lr=config.lm_warmup.lr, warmup_steps=max(steps // 10, 1),
                                                          schedule="constant"), steps)
    trainable = state.params if spec.bridge is None else (state.params, state.bridge)
    opt_state = jax.jit(optimizer.init)(trainable)
    iterator = iter(data_lib.packed_batches(
        run.splits.train, tokenizer=run.tokenizer, config=train_data.packing_config(config.data, jax.process_count()),
        prompt_format=run.prompt_format(), seed=config.seed + 1, num_epochs=None,
        on_long_response=config.data.on_long_response))
    step_fn = jax.jit(lm_warmup.warmup_step, static_argnames=("spec", "optimizer"), donate_argnums=(0, 1))
    row_sharding, pair_sharding = train_sharding.batch_shardings(run.mesh)
    log = (run.out_dir / "lm_warmup.jsonl").open("w", buffering=1) if jax.process_index() == 0 else None
    every = max(steps // 10, 1)
    with jax.set_mesh(run.mesh), nn.logical_axis_rules(model_sharding.DEFAULT_RULES):
        for step in range(steps):
            micro = [next(iterator).as_dict() for _ in range(config.optimizer.accumulation)]
            batch, _ = train_data.assemble(micro, buckets=run.buckets, row_sharding=row_sharding,
                                           pair_sharding=pair_sharding, extra=bridge_train.batch_extras(run.bridge, micro))
            tick = time.perf_counter()
            trainable, opt_state, step_metrics = step_fn(trainable, opt_state, state.frozen, batch, spec=spec,
                                                         optimizer=optimizer)
            row = {"step": step + 1, **{k: float(v) for k, v in jax.device_get(step_metrics).items()},
                   "seconds": time.perf_counter() - tick}
            if not math.isfinite(row["nll"]):
                raise FloatingPointError(f"LM warm-up step {step + 1}: the loss is {row['nll']} "
                                         f"(lm_warmup.lr {config.lm_warmup.lr:.3g})")
            if log is not None:
                log.write(json.dumps(row) + "\n")
            if (step + 1) % every == 0:
                reporter.message(f"LM warm-up {step + 1}/{steps}: next-token NLL {row['nll']:.3f}")
    if log is not None:
        log.close()
    model_params, bridge_params = trainable if spec.bridge is not None else (trainable, None)
    warm = lora.merge(state.frozen, model_params, spec.lora) if spec.reference == "lora" else model_params
    warm = jax.device_put(warm, train_sharding.param_shardings(run.model, run.mesh))
    fresh, _ = create_state(config, warm, run.model, run.mesh, run.optimizer)
    if bridge_params is not None:
        repl = train_sharding.replicated(run.mesh)
        fresh = fresh.replace(bridge=bridge_params,
                              bridge_opt_state=jax.jit(spec.bridge.optimizer.init, out_shardings=repl)(bridge_params))
    return fresh


def _bridge_probes(run: _Run, reference_score) -> dict:
    """Controllability probes (held-out pairs contrasting on one dimension), packed as held-out sets
    ('edited': swapped, the dimension flipped; 'plain': as the user chose), the reference scored."""
    found = bridge_train.probes(run.bridge, run.config.bridge.probes)
    sets = {"found": found}
    if not found:
        return sets
    for name in ("edited", "plain"):
        held = heldout_lib.prepare(bridge_train.probe_records(run.bridge, found, edited=name == "edited"),
                                   tokenizer=run.tokenizer, data_config=run.config.data,
                                   eval_config=dataclasses.replace(run.config.eval, limit=None), seed=run.config.seed,
                                   policy_format=bridge_train.heldout_format(run.bridge))
        heldout_lib.score_start(held, reference_score)
        sets[name] = held
    return sets


def _bridge_summary(run: _Run, state: TrainState) -> dict:
    """bridge_macro_f1 (beside the majority-class baseline) and controllability for summary.json."""
    setup = run.bridge
    out = bridge_train.summary_fields(setup, state.bridge)
    sets = setup.probe_sets or {}
    for name, key in (("edited", "controllability"), ("plain", "probe_accuracy")):
        if name not in sets:
            continue
        held = sets[name]
        soft = bridge_train.probe_soft_tokens(setup, state.bridge, sets["found"], edited=name == "edited") \
            if setup.soft else None
        score = _shared_batch_scorer(run, policy_params(state, run.spec), soft)
        chosen, rejected = heldout_lib.score_all(held.policy_batches, len(held.records), score)
        report = evaluation.summarize(heldout_lib.rows(held, chosen, rejected), beta=run.config.beta)
        out.update({key: report["accuracy"], f"{key}_logp": report["accuracy_logp"], f"{key}_n": report["n"]})
    return out


def _start_params(run: _Run):
    """The start model again (precomputed mode keeps no reference in memory during the steps)."""
    params, _, _ = load_model(run.config.model, run.mesh, run.config.seed)
    return params


def _finish(run: _Run, state: TrainState, held, last_row: dict, eval_rows: list, started: float, reporter) -> dict:
    config = run.config
    final_params = policy_params(state, run.spec)
    report = before = None
    if held is not None:
        rows = _heldout_rows(run, held, state)
        before_rows = heldout_lib.rows(held, held.start_chosen, held.start_rejected)
        report = evaluation.summarize(rows, beta=config.beta)
        before = evaluation.summarize(before_rows, beta=config.beta)
        if jax.process_index() == 0:  # per record, the trained policy's and the start model's log-probs
            with (run.out_dir / "heldout_scores.jsonl").open("w") as f:
                for row, start in zip(rows, before_rows):
                    f.write(json.dumps({**row, "start_chosen_logp": start["policy_chosen_logp"],
                                        "start_rejected_logp": start["policy_rejected_logp"]}) + "\n")
    summary = {
        "steps": int(state.step), "final_loss": last_row.get("loss"),
        "eval_accuracy": report and report["accuracy"], "eval_accuracy_logp": report and report["accuracy_logp"],
        "eval_worst_persona_accuracy": report and report["worst_persona_accuracy"],
        "eval_worst_persona_accuracy_logp": report and report.get("worst_persona_accuracy_logp"),
        "eval_n": report and report["n"], "per_persona": report and report["per_persona"], "eval_history": eval_rows,
        # The start model, policy-only view (the paper's metric is a tie, counted wrong, before training).
        "eval_accuracy_logp_before": before and before["accuracy_logp"],
        "eval_worst_persona_accuracy_logp_before": before and before["worst_persona_accuracy_logp"],
        "per_persona_before": before and before["per_persona"],
        "wall_time_s": time.perf_counter() - started, "reference": config.reference, "loss": config.loss,
        "model": config.model.name, "train_records": len(run.splits.train), "heldout_records": len(run.splits.heldout),
    }
    model_dir = run.out_dir / "model"
    export_config = run.model.replace(remat=False, attention_impl="auto")
    # orbax writes the (sharded) parameters collectively: every process calls it.
    interop.save_native(final_params, export_config, model_dir, tokenizer=run.tokenizer)
    if run.bridge is not None:
        summary.update(_bridge_summary(run, state))
        if jax.process_index() == 0:  # beside the policy, for `alignx eval --mode pba_soft` and `alignx generate`
            from alignx_jax import bridge as bridge_lib

            bridge_lib.save(model_dir / bridge_lib.FOLDER, bridge_train.saved(run.bridge, state.bridge))
    if config.export_hf:
        host_params = jax.tree.map(train_data.to_host, final_params)  # a collective too
        if jax.process_index() == 0:
            interop.save_hf(host_params, export_config, run.out_dir / "hf", tokenizer=run.tokenizer)
    if jax.process_index() == 0:
        (run.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        reporter.message(f"wrote {model_dir} and {run.out_dir / 'summary.json'}")
    if jax.process_count() > 1:  # the others wait for process 0's files, then all shut down together
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("alignx train: outputs written")
    return summary
