"""Cloud TPU slices by their names, their abstract devices (libtpu's compiler view, no TPU needed) and
the mesh a config gets on them (`alignx compile`).

    top = topology("v5p-64")           # Topology: 32 chips, 95 GiB HBM each
    devices = topology_devices(top)    # abstract TPU devices to build a Mesh on and compile for
    sizes = fit_mesh(config.mesh, top.devices)
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping

from alignx_jax.errors import InputError
from alignx_jax.train import config as config_lib


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
