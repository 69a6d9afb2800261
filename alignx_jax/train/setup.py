"""A run's set-up: devices, mesh, model, data splits, state and step spec, built once and checked
before anything heavy (a resumed run must be the same run; a planned run must fit the devices).

    run = setup(config, reporter)        # Run: everything the loop needs
"""
from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping
from typing import Any, Protocol

import jax
import numpy as np
import yaml

from alignx_jax import bridge as bridge_lib
from alignx_jax import data as data_lib
from alignx_jax import evaluation, losses
from alignx_jax.errors import InputError, check_output_parent
from alignx_jax.models import llama
from alignx_jax.train import bridge as bridge_train
from alignx_jax.train import config as config_lib
from alignx_jax.train import data as train_data
from alignx_jax.train import hosts, memory
from alignx_jax.train import sharding as train_sharding
from alignx_jax.train.optimizer import learning_rate, make_optimizer
from alignx_jax.train.state import create_state, load_model, model_config_of, resolve_loss
from alignx_jax.train.step import StepSpec, TrainState


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


@dataclasses.dataclass
class Run:
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
    bridge: bridge_lib.BridgeSetup | None = None  # PBA conditioned by a preference bridge
    twins: Any = None  # data.twins: the twin units of splits.train and each record's twin position (TwinTable)
    groups: Any = None  # group_robust_eta > 0: int32 [records], each training record's persona id

    @property
    def scorer(self) -> evaluation.PairScorer:
        """The scoring service on the run's mesh (held-out evaluation, reference cache, probes)."""
        return evaluation.PairScorer(self.mesh, kernel_impl=self.config.model.kernel_impl, buckets=self.buckets)

    def prompt_format(self, **kwargs) -> data_lib.PromptFormat:
        """The training prompt format (a bridge run's soft slots or precomputed MAP profiles)."""
        return bridge_train.prompt_format(self.bridge, train_data.prompt_format(self.config.data, **kwargs))

    def batches(self, *, seed: int | None = None):
        """The packed training batches of this process, endlessly (a Grain dataset; `iter` it)."""
        config = self.config
        return data_lib.packed_batches(
            self.splits.train, tokenizer=self.tokenizer,
            config=train_data.packing_config(config.data, jax.process_count()), prompt_format=self.prompt_format(),
            seed=config.seed if seed is None else seed, num_epochs=None, on_long_response=config.data.on_long_response,
            units=None if self.twins is None else self.twins.units)

    def pair_extras(self, micro: list[Mapping[str, Any]]) -> dict[str, Any]:
        """The per-pair arrays [A, P] that twin losses and group weights read (`pair_twin`, `pair_group`)."""
        extra = {}
        if self.twins is not None:
            extra["pair_twin"] = np.stack([data_lib.twin_slots(b["pair_source"], self.twins.of) for b in micro])
        if self.groups is not None:
            extra["pair_group"] = np.stack([
                np.where(b["pair_source"] >= 0, self.groups[np.maximum(b["pair_source"], 0)], -1).astype(np.int32)
                for b in micro])
        return extra

    def start_params(self):
        """The start model again (precomputed mode keeps no reference in memory during the steps)."""
        params, _, _ = load_model(self.config.model, self.mesh, self.config.seed)
        return params


def _check_out_dir(config: config_lib.TrainConfig) -> pathlib.Path:
    out_dir = pathlib.Path(config.out_dir)
    check_output_parent(out_dir, f"config key 'out_dir' ({out_dir})")  # created with its parents after the checks
    return out_dir


def _check_config_matches(out_dir: pathlib.Path, config: config_lib.TrainConfig) -> None:
    """A resumed run must be the same run: the saved config.yaml must equal this one (steps may grow;
    `distributed` may differ: it says where this process runs, process 1 reads the file process 0 wrote,
    and a rescheduled job gets another coordinator address)."""
    saved_path = out_dir / "config.yaml"
    if not saved_path.exists():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    saved.pop("progress", None)  # a key of older runs that nothing read
    current = config_lib.to_dict(config)
    changed = sorted(k for k in set(saved) | set(current)
                     if k not in ("steps", "distributed") and saved.get(k) != current.get(k))
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


@dataclasses.dataclass(frozen=True)
class TwinTable:
    units: list  # data.twin_units(train records)
    of: Any  # int32 [records]: data.twin_of(units)


def _batch_structure(config: config_lib.TrainConfig, splits: train_data.Splits):
    """(TwinTable or None, persona ids or None, persona names) of the training records, as the config asks."""
    twins = None
    if config.data.twins:
        units = data_lib.twin_units(splits.train)
        twins = TwinTable(units, data_lib.twin_of(units, len(splits.train)))
        if len(units) == len(splits.train):
            raise InputError("config key 'data.twins': no two training records share a post and responses with "
                             "opposite labels")
    groups, names = None, []
    if config.group_robust_eta:
        keys = [data_lib.persona_key(r) for r in splits.train]
        names = sorted(set(keys))
        index = {name: i for i, name in enumerate(names)}
        groups = np.asarray([index[k] for k in keys], np.int32)
    return twins, groups, names


def setup(config: config_lib.TrainConfig, reporter: Reporter) -> Run:
    train_sharding.initialize_distributed(config.distributed)
    if (config.data.twins or config.group_robust_eta) and jax.process_count() > 1:
        raise InputError("config keys 'data.twins' and 'group_robust_eta' read every training record on one "
                         "process; run them on one host (several devices are fine)")
    out_dir = _check_out_dir(config)
    # Several hosts need shared folders (process 0's config.yaml, one list of checkpoint steps).
    hosts.check_shared({"out_dir": config.out_dir, **({"checkpoint_dir": config.checkpoint_dir}
                                                      if config.checkpoint_dir else {})})
    _check_config_matches(out_dir, config)
    loss_fn, hparams = resolve_loss(config)
    # Each process decodes only its share of the training records; a bridge trains on all of them.
    share = (0, 1) if config.bridge is not None else (jax.process_index(), jax.process_count())
    with hosts.agreed():  # a bad record in one process's share stops every process
        splits = train_data.build_splits(config.data, config.seed, share=share)
    mesh = train_sharding.make_mesh(config.mesh)
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    if config.data.rows % data_parallel:
        raise InputError(f"config key 'data.rows' = {config.data.rows} must be a multiple of the mesh's data x fsdp "
                         f"= {data_parallel} (rows are split over them)")
    _check_memory(config, mesh)
    params, model, tokenizer = load_model(config.model, mesh, config.seed)
    with hosts.agreed():
        train_data.check_records_fit(splits.own_train, tokenizer=tokenizer, config=config.data, seed=config.seed)
    optimizer = make_optimizer(config.optimizer, config.steps)
    bridge = None
    if config.bridge is not None:
        bridge = bridge_lib.setup(config.bridge, train_records=splits.train, heldout_records=splits.heldout,
                                  params=params, model=model, tokenizer=tokenizer, seed=config.seed,
                                  report=reporter.message)
        if not bridge.soft:  # text conditioning: each record's MAP profile goes into its PBA prompt
            splits = train_data.Splits(*bridge_lib.text_records(bridge))
    twins, groups, group_names = _batch_structure(config, splits)
    if twins is not None:
        train_data.check_units_fit(splits.train, twins.units, tokenizer=tokenizer, config=config.data, seed=config.seed)
    state, shardings = create_state(config, params, model, mesh, optimizer)
    if groups is not None:
        repl = train_sharding.replicated(mesh)
        uniform = jax.numpy.full((len(group_names),), 1.0 / len(group_names), jax.numpy.float32)
        state = state.replace(group_weights=jax.device_put(uniform, repl))
        shardings = shardings.replace(group_weights=repl)
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
                    kernel_impl=config.model.kernel_impl, bridge=bridge_step,
                    twin_loss=None if config.twin_loss is None else losses.get_twin_loss(config.twin_loss),
                    twin_weight=config.twin_loss_weight, num_groups=len(group_names), group_eta=config.group_robust_eta)
    out_dir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        (out_dir / "config.yaml").write_text(yaml.safe_dump(config_lib.to_dict(config), sort_keys=False))
        if splits.heldout:  # the exact split, for `alignx eval --data out_dir/heldout.json`
            data_lib.write_records(splits.heldout, out_dir / "heldout.json")
    reporter.message(f"model {config.model.name} ({llama.num_params(model) / 1e6:.1f}M params), "
                     f"{len(splits.train)} training / {len(splits.heldout)} held-out records, mesh {dict(mesh.shape)}, "
                     f"reference: {config.reference}")
    return Run(config, out_dir, mesh, model, tokenizer, splits, state, shardings, spec, optimizer,
               learning_rate(config.optimizer, config.steps), buckets, bridge, twins, groups)
