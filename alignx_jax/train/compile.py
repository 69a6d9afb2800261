"""Compile a config's training step for a TPU slice on this machine: XLA's own memory and FLOPs per chip.

    report = compile_step(config, "v5p-64")      # no TPU, no weights, no data: shapes only
    report.fits, report.per_device_bytes, report.flops_per_device, report.model_flops_per_device

The step is the one `alignx train` jits (`train_step` with the config's `StepSpec`: loss, reference
mode, kernels, remat, dtypes, accumulation), on a mesh of the slice's abstract devices
(`jax.experimental.topologies`, libtpu from `pip install 'alignx_jax[tpu]'`), with the same parameter,
optimizer and batch shardings, and the largest static batch the config can produce: every
micro-batch at the longest `data.seq_lengths` and the largest scored-token bucket (rows x T). The
TPU compiler (and Mosaic, for the Pallas kernels) runs here; nothing executes.

Memory is `compiled.memory_analysis()` per device: arguments (state and batch), outputs, temporaries;
total = arguments + outputs + temporaries - aliased (the donated state is updated in place). "Does not
fit" is an answer too: when the TPU compiler itself stops with RESOURCE_EXHAUSTED, the report holds
its figure (`xla_error`, the temporaries or the total it names, plus the arguments' shards) and
`fits: false`, as when the compiled total exceeds the chip's HBM. `smallest_slices` answers where it
fits instead (`train/fit.py`: the smallest v5p / v6e slice per `train.memory`'s plan, confirmed by
compiling with `alignx compile --fit`).

FLOPs: XLA's `cost_analysis()` counts a while loop's body once (the scanned decoder layers), so the
FLOPs column is XLA's count with the loop bodies' repeats added from the optimized HLO
(`train/hlo.py`): `flops_per_device = XLA's flops + (weighted HLO matmul FLOPs - the same counted
once)`. Splash attention carries no `CostEstimate` in jax 0.10, so its FLOPs (the model's causal
count of its passes, `attention_flops`) are added to the column; every other FLOP is XLA's.

Slices and their abstract devices: `train/topologies.py`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from alignx_jax import data as data_lib
from alignx_jax import interop
from alignx_jax.errors import InputError
from alignx_jax.models import llama
from alignx_jax.models import sharding as model_sharding
from alignx_jax.train import config as config_lib
from alignx_jax.train import data as train_data
from alignx_jax.train import lora, memory, metrics
from alignx_jax.train import sharding as train_sharding
from alignx_jax.train.optimizer import learning_rate, make_optimizer
from alignx_jax.train.state import resolve_loss
from alignx_jax.train.step import StepSpec, TrainState, train_step
# Re-exported: `alignx_jax.train.compile` stays the one module `alignx compile` and its tests import.
from alignx_jax.train.hlo import COLLECTIVES, HloCounts, _convolution_flops, _trip_count, read_hlo  # noqa: F401
from alignx_jax.train.topologies import TOPOLOGIES, Topology, fit_mesh, topology, topology_devices  # noqa: F401

GIB = 2**30


def model_of(config: config_lib.ModelConfig) -> llama.LlamaConfig:
    """The architecture from the model folder's config.json when it is here, else from `model.preset`."""
    numerics = dict(dtype=config.dtype, param_dtype=config.param_dtype, remat=config.remat,
                    attention_impl=config.attention_impl)
    path = pathlib.Path(config.name)
    if config.name != "random" and path.is_dir():
        from alignx_jax.interop import native

        if native.is_native(path):
            base = native.config_from_json((path / native.CONFIG_FILE).read_text(), str(path / native.CONFIG_FILE))
        else:
            base = interop.read_config(path)
        return base.replace(**numerics)
    try:
        return llama.preset(config.preset, **{**(config.overrides if config.name == "random" else {}), **numerics})
    except (TypeError, ValueError) as error:
        raise InputError(f"config key 'model.preset': {error}") from None


def _abstract(tree, shardings):
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), tree, shardings)


def build(config: config_lib.TrainConfig, mesh: jax.sharding.Mesh):
    """(jitted step, abstract args, spec, model): `alignx train`'s step for the config on `mesh`, its
    largest static batch shape, as ShapeDtypeStructs with the run's shardings."""
    if config.bridge is not None:
        raise InputError("config key 'bridge': compiling a bridge-conditioned step is not supported yet")
    # "auto" kernels resolve for the slice's platform (TPU), not for this machine's CPU backend.
    model = model_of(config.model)
    if model.attention_impl == "auto":
        model = model.replace(attention_impl="splash")
    kernel_impl = "pallas_tpu" if config.model.kernel_impl == "auto" else config.model.kernel_impl
    loss_fn, hparams = resolve_loss(config)
    optimizer = make_optimizer(config.optimizer, config.steps)
    schedule = learning_rate(config.optimizer, config.steps)
    repl = train_sharding.replicated(mesh)
    param_shapes = llama.param_shapes(model)
    param_shard = train_sharding.param_shardings(model, mesh)
    if config.reference == "lora":
        trained = jax.eval_shape(lambda p: lora.init_adapters(p, config.lora, jax.random.key(0)), param_shapes)
        trained_shard = jax.tree.map(lambda _: repl, trained)
    else:
        trained, trained_shard = param_shapes, param_shard
    opt_shapes = jax.eval_shape(optimizer.init, trained)
    opt_shard = train_sharding.optimizer_shardings(optimizer, trained, trained_shard, mesh)
    frozen = None if config.reference == "precomputed" else param_shapes
    state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32, sharding=repl), params=_abstract(trained, trained_shard),
                       opt_state=_abstract(opt_shapes, opt_shard),
                       frozen=None if frozen is None else _abstract(frozen, param_shard))
    state_shard = TrainState(step=repl, params=trained_shard, opt_state=opt_shard,
                             frozen=None if frozen is None else param_shard)
    a, rows, t = config.optimizer.accumulation, config.data.rows, config.data.seq_lengths[-1]
    pairs = train_data.packing_config(config.data).num_pair_slots
    row_shard, pair_shard = train_sharding.batch_shardings(mesh)
    batch = {k: jax.ShapeDtypeStruct((a, rows, t), jnp.bool_ if k.endswith("_mask") else jnp.int32, sharding=row_shard)
             for k in data_lib.ROW_KEYS}
    batch["pair_valid"] = jax.ShapeDtypeStruct((a, pairs), jnp.bool_, sharding=pair_shard)
    if config.reference == "precomputed":
        for k in ("ref_chosen", "ref_rejected"):
            batch[k] = jax.ShapeDtypeStruct((a, pairs), jnp.float32, sharding=pair_shard)
    scored = train_data.scored_buckets(config.data.scored_buckets, rows * t)[-1]
    spec = StepSpec(model=model, loss_fn=loss_fn, loss_hparams=hparams, reference=config.reference,
                    lora=config.lora if config.reference == "lora" else None, num_pairs=pairs, scored_length=scored,
                    kernel_impl=kernel_impl)
    step = jax.jit(train_step, static_argnames=("spec", "optimizer", "schedule"), donate_argnums=0,
                   out_shardings=(state_shard, repl))
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=repl)
    return step, (state, batch, rng), dict(spec=spec, optimizer=optimizer, schedule=schedule), model



# ---- the report ---------------------------------------------------------------------------------

@dataclasses.dataclass
class Report:
    topology: str
    devices: int
    mesh: dict[str, int]
    hbm_bytes: int
    per_device_bytes: dict[str, int]
    fits: bool
    flops_per_device: float
    xla_flops_per_device: float  # cost_analysis() as XLA reports it (loop bodies once)
    model_flops_per_device: float
    collectives: dict[str, dict[str, float]]
    loops: list[tuple[str, int]]
    planned_bytes: int  # train.memory's plan, for comparison
    compile_seconds: float
    config: str = ""
    xla_error: str = ""  # the TPU compiler's RESOURCE_EXHAUSTED message (the step did not compile)
    smallest_slices: dict[str, str | None] = dataclasses.field(default_factory=dict)  # kind -> slice (None: none)
    slices_by: str = ""  # who named smallest_slices: "plan" (train.memory) or "xla" (compiled, --fit)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def model_flops(config: config_lib.TrainConfig, model: llama.LlamaConfig) -> float:
    """The model's own FLOPs of the compiled step: policy forward + backward, the remat recompute,
    the reference forward (frozen / LoRA base), every micro-batch full, the largest scored bucket."""
    a, rows, t = config.optimizer.accumulation, config.data.rows, config.data.seq_lengths[-1]
    scored = train_data.scored_buckets(config.data.scored_buckets, rows * t)[-1]
    trunk = lora.trunk_layers(config.lora if config.reference == "lora" else None, model.num_layers)
    return a * metrics.step_flops(model, tokens=rows * t, scored_tokens=scored, seq_len=t,
                                  reference_forward=config.reference != "precomputed", remat=model.remat,
                                  trunk_layers=trunk)


def attention_flops(config: config_lib.TrainConfig, model: llama.LlamaConfig) -> float:
    """Splash attention's FLOPs in the step, which XLA cannot count: jax 0.10's splash kernels carry no
    `CostEstimate`. The model's causal count (scores and values, T/2 keys per query) per pass: the
    policy forward, its backward (2.5 forwards: dq, dk, dv and the recomputed scores), the remat
    recompute, the reference forward."""
    a, rows, t = config.optimizer.accumulation, config.data.rows, config.data.seq_lengths[-1]
    forward = 4 * model.num_layers * model.num_heads * model.resolved_head_dim * (t / 2) * rows * t
    passes = 1 + 2.5 + (1 if model.remat else 0) + (0 if config.reference == "precomputed" else 1)
    return a * forward * passes


# XLA:TPU's out-of-memory messages name what the step needs: "Ran out of memory on HBM, the total memory
# required for HLO temporaries (69.67G) exceeds available HBM (15.75G)" (the temporaries; the
# arguments come on top), or "Ran out of memory in memory space hbm. Used 120.50G of 95.74G hbm" (all).
_SIZE = r"([\d.]+)\s?([KMGTP]?)i?B?"
_OOM_TEMPORARIES = re.compile(rf"required for HLO temporaries \({_SIZE}\) exceeds available HBM \({_SIZE}\)")
_OOM_USED = re.compile(rf"Used {_SIZE} of {_SIZE} hbm")


def _size(number: str, unit: str) -> int:
    return int(float(number) * 1024 ** "BKMGTP".index(unit or "B"))


def argument_bytes(args) -> int:
    """Per-device bytes of the step's arguments (each abstract array's shard on one device)."""
    total = 0
    for leaf in jax.tree.leaves(args):
        try:
            itemsize = np.dtype(leaf.dtype).itemsize
        except TypeError:  # a PRNG key: a few bytes
            continue
        total += math.prod(leaf.sharding.shard_shape(leaf.shape)) * itemsize
    return total


def out_of_memory_bytes(message: str, arguments: int) -> dict[str, int] | None:
    """`per_device_bytes` from XLA's RESOURCE_EXHAUSTED message (None when it names no figure)."""
    m = _OOM_USED.search(message)
    if m:
        total = _size(*m.group(1, 2))
        return {"argument": arguments, "output": 0, "temp": max(total - arguments, 0), "alias": 0, "total": total}
    m = _OOM_TEMPORARIES.search(message)
    if m:
        temp = _size(*m.group(1, 2))
        return {"argument": arguments, "output": 0, "temp": temp, "alias": 0, "total": arguments + temp}
    return None


def compile_step(config: config_lib.TrainConfig, topology_name: str, *, config_name: str = "",
                 hlo_path: str | None = None) -> Report:
    top = topology(topology_name)
    devices = topology_devices(top)
    sizes = fit_mesh(config.mesh, top.devices)
    try:
        mesh = model_sharding.make_mesh(sizes["data"], sizes["fsdp"], sizes["tensor"], devices=devices)
    except ValueError as error:
        raise InputError(f"config key 'mesh' on {top.name}: {error}") from None
    config = dataclasses.replace(config, mesh=config_lib.MeshConfig(**sizes))
    if config.data.rows % (sizes["data"] * sizes["fsdp"]):
        raise InputError(f"config key 'data.rows' = {config.data.rows} must be a multiple of the mesh's data x fsdp "
                         f"= {sizes['data'] * sizes['fsdp']} on {top.name} (rows are split over them)")
    step, args, statics, model = build(config, mesh)
    hbm = int(top.hbm_gib * GIB)
    planned = int(memory.per_device_gib(config, model, sizes)["total"] * GIB)
    common = dict(topology=top.name, devices=top.devices, mesh=sizes, hbm_bytes=hbm, planned_bytes=planned,
                  model_flops_per_device=model_flops(config, model) / top.devices, config=config_name)
    tick = time.perf_counter()
    try:
        with jax.set_mesh(mesh), nn.logical_axis_rules(model_sharding.DEFAULT_RULES):
            compiled = step.lower(*args, **statics).compile()
    except jax.errors.JaxRuntimeError as error:
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise
        parts = out_of_memory_bytes(str(error), argument_bytes(args))
        if parts is None:  # not HBM (a kernel's VMEM, say): the config cannot compile there at all
            raise InputError(f"the TPU compiler refused the step on {top.name}: "
                             f"{' '.join(str(error).split())[:400]}") from None
        return Report(per_device_bytes=parts, fits=False, flops_per_device=0.0, xla_flops_per_device=0.0,
                      collectives={}, loops=[], compile_seconds=time.perf_counter() - tick,
                      xla_error=" ".join(str(error).split()), **common)
    seconds = time.perf_counter() - tick
    mem = compiled.memory_analysis()
    parts = {"argument": int(mem.argument_size_in_bytes), "output": int(mem.output_size_in_bytes),
             "temp": int(mem.temp_size_in_bytes), "alias": int(mem.alias_size_in_bytes)}
    parts["total"] = parts["argument"] + parts["output"] + parts["temp"] - parts["alias"]
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float(cost.get("flops", 0.0))
    text = compiled.as_text()
    if hlo_path is not None:
        pathlib.Path(hlo_path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(hlo_path).write_text(text)
    hlo = read_hlo(text)
    return Report(per_device_bytes=parts, fits=parts["total"] <= hbm,
                  flops_per_device=xla_flops + hlo.matmul_flops - hlo.matmul_flops_once
                  + (attention_flops(config, model) / top.devices if model.attention_impl == "splash" else 0.0),
                  xla_flops_per_device=xla_flops, collectives=hlo.collectives, loops=hlo.loops,
                  compile_seconds=seconds, **common)


def format_table(report: Report) -> str:
    """The per-device table `alignx compile` prints."""
    gib = lambda b: f"{b / GIB:8.2f} GiB"  # noqa: E731
    mesh = " x ".join(f"{k} {v}" for k, v in report.mesh.items())
    b = report.per_device_bytes
    ratio = report.flops_per_device / report.model_flops_per_device if report.model_flops_per_device else float("nan")
    if report.xla_error:
        return "\n".join([
            f"{report.config or 'step'} on {report.topology}: {report.devices} chips, mesh {mesh}: the TPU compiler "
            f"ran out of memory after {report.compile_seconds:.0f} s",
            "per device              XLA",
            f"  arguments        {gib(b['argument'])}   (state shards and the batch)",
            f"  temporaries      {gib(b['temp'])}",
            f"  total            {gib(b['total'])}   of {report.hbm_bytes / GIB:.0f} GiB HBM (DOES NOT FIT; "
            f"train.memory plans {report.planned_bytes / GIB:.2f} GiB)",
            f"XLA: {report.xla_error}",
            *_slice_lines(report)])
    lines = [
        f"{report.config or 'step'} on {report.topology}: {report.devices} chips, mesh {mesh}, "
        f"compiled in {report.compile_seconds:.0f} s",
        "per device              XLA",
        f"  arguments        {gib(b['argument'])}   (state shards and the batch)",
        f"  outputs          {gib(b['output'])}   (aliased with donated arguments: {b['alias'] / GIB:.2f} GiB)",
        f"  temporaries      {gib(b['temp'])}",
        f"  total            {gib(b['total'])}   of {report.hbm_bytes / GIB:.0f} GiB HBM "
        f"({'fits' if report.fits else 'DOES NOT FIT'}; train.memory plans {report.planned_bytes / GIB:.2f} GiB)",
        f"  FLOPs            {report.flops_per_device:10.3e}   (XLA, loop bodies x trip counts; "
        f"{report.xla_flops_per_device:.3e} counted once)",
        f"  model FLOPs      {report.model_flops_per_device:10.3e}   (ratio {ratio:.2f})",
    ]
    if report.collectives:
        lines.append("collectives per step  " + ", ".join(
            f"{kind} {int(row['count'])} ({row['bytes'] / GIB:.2f} GiB)" for kind, row in sorted(report.collectives.items())))
    else:
        lines.append("collectives per step  none")
    return "\n".join(lines + _slice_lines(report))


def _slice_lines(report: Report) -> list[str]:
    if not report.smallest_slices:
        return []
    by = "XLA, compiled" if report.slices_by == "xla" else "train.memory's plan; --fit compiles them"
    return ["smallest slices it fits  " + ", ".join(f"{kind}: {name or 'none'}"
                                                 for kind, name in report.smallest_slices.items()) + f"   ({by})"]


def does_not_fit_line(report: Report) -> str:
    """The one stderr line of a step that does not fit."""
    b = report.per_device_bytes
    needs = (f"XLA needs {b['total'] / GIB:.1f} GiB per device" if report.xla_error else
             f"{b['total'] / GIB:.1f} GiB per device")
    where = ", ".join(name for name in report.smallest_slices.values() if name)
    by = "XLA fits it on" if report.slices_by == "xla" else "train.memory plans it to fit"
    return (f"{report.config or 'the step'} does not fit {report.topology}: {needs}, the chip has "
            f"{report.hbm_bytes / GIB:.0f} GiB" + (f" ({by} {where})" if where else ""))


def write_json(report: Report, path: pathlib.Path) -> None:
    path.write_text(json.dumps(report.to_json(), indent=2))
