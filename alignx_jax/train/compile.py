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
total = arguments + outputs + temporaries - aliased (the donated state is updated in place).

FLOPs: `cost_analysis()` counts a while loop's body once, and the decoder layers are one scanned
layer (and micro-batches one scan), so its figure is low by about the layer count. The FLOPs column
is corrected from the optimized HLO: every computation's matmul FLOPs (`dot`, `convolution`, and the
`CostEstimate` that Pallas kernels carry as Mosaic custom calls) are counted, each computation is
weighted by how often it runs (a while body by its `known_trip_count`, nested loops multiply), and
`flops_per_device = XLA's flops + (weighted HLO matmul FLOPs - the same counted once)`: XLA's own
count with the loop bodies' repeats added. Loops without `known_trip_count` take the bound of their
condition `i < N` divided by the step their body adds (XLA's bidirectional collective matmuls step by
2), and a convolution counts only the window positions that meet its input (XLA's rule: collective
matmuls are convolutions over a mostly padded window). Splash attention carries no `CostEstimate` in jax 0.10, so its FLOPs (the model's
causal count of its passes, `attention_flops`) are added to the column; every other FLOP is XLA's.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re
import time
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

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

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Topology:
    """A Cloud TPU slice: `get_topology_desc` arguments (as MaxText's accelerator_to_spec_map names
    them), the chips JAX sees (one device per chip) and each chip's HBM."""

    name: str
    topology: str
    chip_config: str
    host_bounds: tuple[int, int, int]
    wrap: tuple[bool, bool, bool]
    devices: int
    hbm_gib: float


def _slices(kind: str, shapes: Mapping[int, str], chip_config: str, hbm_gib: float, cores_per_chip: int,
            host_bounds=(2, 2, 1)) -> dict[str, Topology]:
    out = {}
    for name_count, shape in shapes.items():
        chips = name_count // cores_per_chip
        dims = [int(x) for x in shape.split("x")]
        if len(dims) == 3:  # v4 / v5p: a full 4x4x4 cube and larger wrap around in every dimension
            wrap = (chips >= 64,) * 3
        else:  # v5e / v6e: a 16-chip-wide dimension wraps
            wrap = (dims[0] >= 16, dims[1] >= 16, False)
        bounds = (1, 1, 1) if chips == 1 else host_bounds
        prefix = {"v4": "v4", "v5p": "v5", "v5e": "v5e", "v6e": "v6e"}[kind]
        out[f"{kind}-{name_count}"] = Topology(f"{kind}-{name_count}", f"{prefix}:{shape}", chip_config, bounds,
                                               wrap, chips, hbm_gib)
    return out


# v4 and v5p names count TensorCores (two per chip, one megacore device); v5e and v6e count chips.
# HBM per chip: v4 32 GiB, v5e 16 GiB, v5p 95 GiB, v6e 32 GiB. Shapes and wrap-around as in MaxText's
# accelerator_to_spec_map (a 4x4x4 cube and larger wrap on v4/v5p; v5e/v6e 16-wide dimensions wrap).
TOPOLOGIES: dict[str, Topology] = {
    **_slices("v4", {8: "2x2x1", 16: "2x2x2", 32: "2x2x4", 64: "2x4x4", 128: "4x4x4", 256: "4x4x8"},
              "megacore", 32, 2),
    **_slices("v5p", {8: "2x2x1", 16: "2x2x2", 32: "2x2x4", 64: "2x4x4", 128: "4x4x4", 256: "4x4x8"},
              "megacore", 95, 2),
    **_slices("v5e", {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"},
              "default", 16, 1),
    **_slices("v6e", {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"},
              "default", 32, 1),
}


def topology(name: str) -> Topology:
    if name not in TOPOLOGIES:
        raise InputError(f"--topology {name!r}: unknown TPU topology; known: {', '.join(TOPOLOGIES)}")
    return TOPOLOGIES[name]


def topology_devices(top: Topology) -> list:
    """The slice's abstract TPU devices (the TPU compiler's view; nothing runs on them)."""
    # libtpu takes a lockfile (/tmp/libtpu_lockfile) that refuses a second process ("Internal error
    # when accessing libtpu multi-process lockfile"); compiling touches no TPU, so several may share it.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies
        desc = topologies.get_topology_desc(platform="tpu", topology_name=top.topology, chip_config_name=top.chip_config,
                                            chips_per_host_bounds=top.host_bounds, num_slices=1, wrap=top.wrap)
    except Exception as error:  # no libtpu: jax raises RuntimeError / JaxRuntimeError with its own text
        raise InputError(f"compiling for {top.name} needs the TPU compiler (libtpu): pip install 'alignx_jax[tpu]' "
                         f"({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
    devices = list(desc.devices)
    if len(devices) != top.devices:
        raise InputError(f"topology {top.name}: libtpu gave {len(devices)} devices, expected {top.devices}")
    return devices


def fit_mesh(mesh: config_lib.MeshConfig, devices: int) -> dict[str, int]:
    """The config's mesh sizes on `devices` chips: kept when they fit (-1 takes the rest); otherwise `data`
    and `tensor` are kept where they divide the chips and `fsdp` takes the rest."""
    sizes = {"data": mesh.data, "fsdp": mesh.fsdp, "tensor": mesh.tensor}
    known = math.prod(v for v in sizes.values() if v != -1)
    if list(sizes.values()).count(-1) == 1 and devices % known == 0:
        return {k: (devices // known if v == -1 else v) for k, v in sizes.items()}
    if -1 not in sizes.values() and known == devices:
        return sizes
    data = sizes["data"] if sizes["data"] > 0 and devices % sizes["data"] == 0 else 1
    tensor = sizes["tensor"] if sizes["tensor"] > 0 and devices % (data * sizes["tensor"]) == 0 else 1
    return {"data": data, "fsdp": devices // (data * tensor), "tensor": tensor}


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


# ---- reading the compiled HLO ---------------------------------------------------------------------

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_SHAPE = re.compile(r"(\w+)\[([\d,]*)\]")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
                "f64": 8, "s64": 8, "u64": 8, "c64": 8}
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")


def _dims(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _instruction_flops(line: str, shapes: Mapping[str, str]) -> float:
    """Matmul FLOPs of one HLO instruction (0 for anything else); `shapes`: instruction name -> its
    shape text (TPU HLO prints operands by name only)."""
    if " custom-call(" in line:
        # Mosaic kernels carry the pallas_call's CostEstimate in their backend config.
        cost = re.search(r'\\?"flops\\?"\s*:\s*\\?"?(\d+)', line)
        return float(cost.group(1)) if cost else 0.0
    m = re.search(r"=\s*(\w+\[[\d,]*\])\S*\s+(dot|convolution)\(", line)
    if not m:
        return 0.0
    out = _SHAPE.match(m.group(1))
    out_elems = math.prod(_dims(out.group(2)))
    op = m.group(2)
    names = re.findall(r"%([\w.\-]+)", line[m.end():].split(")", 1)[0])
    operands = [_SHAPE.match(shapes.get(n, "")) for n in names[:2]]
    if len(operands) < 2 or not all(operands):
        return 0.0
    operands = [o.groups() for o in operands]
    lhs = _dims(operands[0][1])
    if op == "dot":
        contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
        k = math.prod(lhs[i] for i in _dims(contracting.group(1))) if contracting else 1
        return 2.0 * out_elems * k
    return _convolution_flops(line, _dims(operands[0][1]), _dims(operands[1][1]))


def _convolution_flops(line: str, lhs: list[int], rhs: list[int]) -> float:
    """FLOPs of a convolution counted as XLA counts them: per spatial dimension only the (output, window)
    positions that land inside the input (not on padding). XLA writes batched and collective matmuls as
    convolutions whose padding is most of the window (e.g. a 32-wide window padded 31 on both sides
    over a 1-wide input: one real tap per output), so a count that ignores padding is far too high."""
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", line)
    if not labels:
        return 0.0
    lhs_labels, rhs_labels, _ = labels.groups()
    window = re.search(r"window=\{([^}]*)\}", line)
    fields = dict(re.findall(r"(\w+)=(\S+)", window.group(1))) if window else {}
    spatial = sorted(c for c in rhs_labels if c.isdigit())
    sizes = [int(x) for x in fields["size"].split("x")] if "size" in fields else [1] * len(spatial)
    pads = [tuple(int(v) for v in p.split("_")) for p in fields["pad"].split("x")] if "pad" in fields else \
        [(0, 0)] * len(spatial)
    strides = [int(x) for x in fields["stride"].split("x")] if "stride" in fields else [1] * len(spatial)
    taps = 1
    for i, name in enumerate(spatial):
        size_in = lhs[lhs_labels.index(name)]
        k, (lo, hi), stride = sizes[i], pads[i], strides[i]
        out = (size_in + lo + hi - k) // stride + 1
        taps *= sum(1 for o in range(out) for j in range(k) if 0 <= o * stride + j - lo < size_in)
    batch = lhs[lhs_labels.index("b")]
    groups = re.search(r"batch_group_count=(\d+)", line)
    batch //= int(groups.group(1)) if groups else 1
    return 2.0 * batch * rhs[rhs_labels.index("o")] * rhs[rhs_labels.index("i")] * taps


def _trip_count(condition: list[str], body: list[str] = ()) -> int:
    """A loop's trip count from its condition `i < N` and the step `i + s` its body writes back (XLA's
    bidirectional collective matmuls step by 2); 1 when the condition holds no such bound (a
    data-dependent loop)."""
    compare = next((line for line in condition if "compare(" in line and "direction=LT" in line), None)
    if compare is None:
        return 1
    constants = {}
    for line in list(condition) + list(body):
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = [su]\d+\[\]\S* constant\((\d+)\)", line)
        if m:
            constants[m.group(1)] = int(m.group(2))
    bound = max((constants[n] for n in re.findall(r"%([\w.\-]+)", compare.split("compare(", 1)[1]) if n in constants),
                default=None)
    if bound is None:
        return 1
    # The induction variable: the tuple index the condition compares; its step: the constant added to it.
    index = None
    operand = re.findall(r"%([\w.\-]+)", compare.split("compare(", 1)[1])[0]
    for line in condition:
        m = re.match(rf"\s*%{re.escape(operand)} = .*get-tuple-element\(.*index=(\d+)", line)
        if m:
            index = int(m.group(1))
    step = 1
    root = next((line for line in body if line.strip().startswith("ROOT") and " tuple(" in line), None)
    if index is not None and root is not None:
        names = re.findall(r"%([\w.\-]+)", root.split(" tuple(", 1)[1])
        if index < len(names):
            for line in body:
                m = re.match(rf"\s*%{re.escape(names[index])} = \S+ add\(%([\w.\-]+), %([\w.\-]+)\)", line)
                if m:
                    step = next((constants[n] for n in m.groups() if n in constants), 1) or 1
    return max(-(-bound // step), 1)


@dataclasses.dataclass
class HloCounts:
    matmul_flops: float  # every computation weighted by how often it runs
    matmul_flops_once: float  # every computation counted once per call site (as cost_analysis counts loops)
    collectives: dict[str, dict[str, float]]  # kind -> {"count", "bytes"} per step, loops weighted
    loops: list[tuple[str, int]]  # (while body, trip count)


def read_hlo(text: str) -> HloCounts:
    """Matmul FLOPs and collectives of an optimized HLO module, with while bodies weighted by their
    `known_trip_count` (module docstring)."""
    bodies: dict[str, list[str]] = {}
    entry, current = None, None
    for line in text.splitlines():
        if current is None:
            m = _COMPUTATION.match(line.strip()) if line and not line.startswith(" ") else None
            if m and "->" in line or (m and line.startswith("ENTRY")):
                current = m.group(1)
                bodies[current] = []
                if line.startswith("ENTRY"):
                    entry = current
        elif line.strip() == "}":
            current = None
        else:
            bodies[current].append(line)
    shapes = {}
    for lines in bodies.values():
        for line in lines:
            m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+)", line)
            if m:
                shapes[m.group(1)] = m.group(2)
    own, calls, collectives = {}, {}, {}
    loops = []
    for name, lines in bodies.items():
        own[name] = sum(_instruction_flops(line, shapes) for line in lines)
        edges = []
        for line in lines:
            trips = 1
            if " while(" in line:
                n = re.search(r'known_trip_count\\?"\s*:\s*\{\s*\\?"n\\?"\s*:\s*\\?"(\d+)', line)
                condition = re.search(r"condition=%?([\w.\-]+)", line)
                body = re.search(r"body=%?([\w.\-]+)", line)
                trips = int(n.group(1)) if n else _trip_count(bodies.get(condition.group(1), []) if condition else [],
                                                             bodies.get(body.group(1), []) if body else [])
                if body:
                    loops.append((body.group(1), trips))
            for key, callee in re.findall(r"(calls|to_apply|body|condition|branch_computations)=\{?%?([\w.\-]+)", line):
                if key in ("to_apply",):
                    continue  # reductions' scalar combiners
                edges.append((callee, trips if key in ("body", "condition") else 1))
            for kind in COLLECTIVES:
                if re.search(rf"\s{kind}(-start)?\(", line):
                    shape = _SHAPE.search(line.split("=", 1)[1])
                    size = math.prod(_dims(shape.group(2))) * _DTYPE_BYTES.get(shape.group(1), 4) if shape else 0
                    collectives.setdefault(name, []).append((kind, size))
        calls[name] = edges

    weight, weight_once = {}, {}

    def visit(name, w, w_once, depth=0):
        if name not in bodies or depth > 64:
            return
        weight[name] = weight.get(name, 0) + w
        weight_once[name] = weight_once.get(name, 0) + w_once
        for callee, trips in calls[name]:
            visit(callee, w * trips, w_once, depth + 1)

    visit(entry or next(iter(bodies)), 1, 1)
    totals: dict[str, dict[str, float]] = {}
    for name, items in collectives.items():
        for kind, size in items:
            row = totals.setdefault(kind, {"count": 0, "bytes": 0.0})
            row["count"] += weight.get(name, 0)
            row["bytes"] += weight.get(name, 0) * size
    return HloCounts(sum(own[n] * w for n, w in weight.items()), sum(own[n] * w for n, w in weight_once.items()),
                     totals, loops)


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
    tick = time.perf_counter()
    with jax.set_mesh(mesh), nn.logical_axis_rules(model_sharding.DEFAULT_RULES):
        compiled = step.lower(*args, **statics).compile()
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
    hbm = int(top.hbm_gib * GIB)
    planned = memory.per_device_gib(config, model, sizes)["total"] * GIB
    return Report(topology=top.name, devices=top.devices, mesh=sizes, hbm_bytes=hbm, per_device_bytes=parts,
                  fits=parts["total"] <= hbm,
                  flops_per_device=xla_flops + hlo.matmul_flops - hlo.matmul_flops_once
                  + (attention_flops(config, model) / top.devices if model.attention_impl == "splash" else 0.0),
                  xla_flops_per_device=xla_flops, model_flops_per_device=model_flops(config, model) / top.devices,
                  collectives=hlo.collectives, loops=hlo.loops, planned_bytes=int(planned), compile_seconds=seconds,
                  config=config_name)


def format_table(report: Report) -> str:
    """The per-device table `alignx compile` prints."""
    gib = lambda b: f"{b / GIB:8.2f} GiB"  # noqa: E731
    mesh = " x ".join(f"{k} {v}" for k, v in report.mesh.items())
    b = report.per_device_bytes
    ratio = report.flops_per_device / report.model_flops_per_device if report.model_flops_per_device else float("nan")
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
    return "\n".join(lines)


def write_json(report: Report, path: pathlib.Path) -> None:
    path.write_text(json.dumps(report.to_json(), indent=2))
