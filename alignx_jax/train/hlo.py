"""Reading a compiled (optimized) HLO module's text: matmul FLOPs with loop bodies weighted by their trip
counts, and the collectives per step (`alignx compile`).

`cost_analysis()` counts a while loop's body once, and the decoder layers are one scanned layer
(and micro-batches one scan), so its figure is low by about the layer count. `read_hlo` counts every
computation's matmul FLOPs (`dot`, `convolution`, and the `CostEstimate` that Pallas kernels carry as
Mosaic custom calls), each computation weighted by how often it runs (a while body by its
`known_trip_count`, nested loops multiply). Loops without `known_trip_count` take the bound of their
condition `i < N` divided by the step their body adds (XLA's bidirectional collective matmuls step
by 2), and a convolution counts only the window positions that meet its input (XLA's rule:
collective matmuls are convolutions over a mostly padded window).
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping

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


def _collective_bytes(result: str) -> int:
    """Bytes a collective produces, from its result shape text. An async `*-start` returns a tuple
    (operand, result[, context scalars]): its second shape is what the collective produces (an
    all-gather's gathered array, not the input shard: the first shape undercounts by the group size)."""
    shapes = _SHAPE.findall(result)
    if not shapes:
        return 0
    dtype, dims = shapes[1] if result.lstrip().startswith("(") and len(shapes) > 1 else shapes[0]
    return math.prod(_dims(dims)) * _DTYPE_BYTES.get(dtype, 4)


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
                m = re.search(rf"\s{kind}(-start)?\(", line)
                if m:
                    collectives.setdefault(name, []).append((kind, _collective_bytes(line.split("=", 1)[1][:m.start()])))
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
