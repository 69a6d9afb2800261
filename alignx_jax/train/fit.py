"""Where a config fits: the smallest v5p / v6e slice, by `train.memory`'s plan (no compile) or by
compiling (`alignx compile --fit`).

    planned_slices(config)          -> {"v5p": "v5p-64", "v6e": "v6e-128"}
    find_smallest_slices(config)    -> {"v5p": Report, "v6e": Report}: XLA's answer, about two compiles per kind
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

from alignx_jax.errors import InputError
from alignx_jax.train import config as config_lib
from alignx_jax.train import memory
from alignx_jax.train.compile import Report, compile_step, model_of
from alignx_jax.train.topologies import TOPOLOGIES, Topology, fit_mesh

FIT_KINDS = ("v5p", "v6e")  # the slices `--fit` suggests: the training chips one rents today


MAX_TENSOR = 4  # a tensor axis stays within one host's chips (4 per v5p and v6e host)


def slice_mesh(config: config_lib.TrainConfig, top: Topology) -> dict[str, int] | None:
    """The mesh the config runs on `top`: `fit_mesh`'s, or, where the rows do not split over that many
    batch shards (rows 32 on 64 chips), the extra chips on `tensor` (up to MAX_TENSOR); None: neither."""
    sizes = fit_mesh(config.mesh, top.devices)
    for tensor in sorted({sizes["tensor"], 2, MAX_TENSOR}):
        if tensor < sizes["tensor"] or top.devices % (sizes["data"] * tensor):
            continue
        mesh = {"data": sizes["data"], "fsdp": top.devices // (sizes["data"] * tensor), "tensor": tensor}
        if config.data.rows % (mesh["data"] * mesh["fsdp"]) == 0:
            return mesh
    return None


def _runnable_slices(config: config_lib.TrainConfig, kind: str) -> list[tuple[str, config_lib.TrainConfig]]:
    """`kind`'s slices, smallest first, each with the config on its `slice_mesh` (where there is one)."""
    out = []
    for top in sorted((t for t in TOPOLOGIES.values() if t.name.startswith(kind + "-")), key=lambda t: t.devices):
        mesh = slice_mesh(config, top)
        if mesh is not None:
            out.append((top.name, dataclasses.replace(config, mesh=config_lib.MeshConfig(**mesh))))
    return out


def planned_slices(config: config_lib.TrainConfig, kinds=FIT_KINDS) -> dict[str, str | None]:
    """Per kind, the smallest slice `train.memory` plans the step to fit (no compile; None: none does)."""
    model = model_of(config.model)
    out = {}
    for kind in kinds:
        out[kind] = next((name for name, sized in _runnable_slices(config, kind) if memory.per_device_gib(
            sized, model, dataclasses.asdict(sized.mesh))["total"] <= TOPOLOGIES[name].hbm_gib), None)
    return out


def find_smallest_slices(config: config_lib.TrainConfig, kinds=FIT_KINDS, *, config_name: str = "",
                         compile_fn: Callable[..., Report] | None = None,
                         progress: Callable[[Report], None] = lambda _: None,
                         refused: Callable[[str, str], None] = lambda name, why: None) -> dict[str, Report | None]:
    """Per kind, the report of the smallest slice XLA fits the step on (None: not even the largest).
    A bounded search: it starts at the slice the plan names, then steps down while XLA fits and up
    while it does not, so it compiles about two slices per kind (the plan is within ~25% of XLA). A slice
    where the compiler refuses the step (InputError) counts as no fit; `refused(name, why)` hears of it."""
    compile_fn = compile_fn or compile_step
    planned = planned_slices(config, kinds)
    found = {}
    for kind in kinds:
        slices = _runnable_slices(config, kind)
        if not slices:
            found[kind] = None
            continue
        names = [name for name, _ in slices]
        i = names.index(planned[kind]) if planned[kind] else len(names) - 1
        reports: dict[int, Report] = {}

        def fits(index):
            if index not in reports:
                try:
                    reports[index] = compile_fn(slices[index][1], names[index], config_name=config_name)
                except InputError as error:  # the compiler refused the step there (a kernel's VMEM): no fit
                    refused(names[index], str(error))
                    reports[index] = None
                else:
                    progress(reports[index])
            return reports[index] is not None and reports[index].fits

        if fits(i):
            while i > 0 and fits(i - 1):
                i -= 1
            found[kind] = reports[i]
        else:
            while i + 1 < len(names) and not fits(i + 1):
                i += 1
            found[kind] = reports.get(i + 1) if i + 1 < len(names) else None
    return found
