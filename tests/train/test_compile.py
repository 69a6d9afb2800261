"""`alignx compile` (issue 22): topologies by their Cloud names, the mesh a slice gets, reading the
compiled HLO (FLOPs with loop bodies times their trip counts, collectives), and, with libtpu, a
real compile for a TPU slice (slow). Also: a `gs://` checkpoint folder reaches orbax unchanged."""
import pathlib

import pytest
import yaml

from alignx_jax.errors import InputError
from alignx_jax.train import ConfigError, config_from_dict
from alignx_jax.train import compile as compile_lib
from alignx_jax.train import fit as fit_lib
from alignx_jax.train.config import MeshConfig

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name, chips, hbm", [("v4-8", 4, 32), ("v4-128", 64, 32), ("v5e-1", 1, 16),
                                              ("v5e-256", 256, 16), ("v5p-8", 4, 95), ("v5p-64", 32, 95),
                                              ("v5p-256", 128, 95), ("v6e-1", 1, 32), ("v6e-256", 256, 32)])
def test_topologies_count_chips_not_cores(name, chips, hbm):
    """v4 / v5p names count TensorCores (two per chip); v5e / v6e count chips. JAX sees one device per chip."""
    top = compile_lib.topology(name)
    assert (top.devices, top.hbm_gib) == (chips, hbm)
    dims = [int(x) for x in top.topology.split(":")[1].split("x")]
    assert dims[0] * dims[1] * (dims[2] if len(dims) == 3 else 1) == chips


def test_unknown_topology_is_an_input_error():
    with pytest.raises(InputError, match="unknown TPU topology; known: v4-8"):
        compile_lib.topology("v5p-63")


@pytest.mark.parametrize("mesh, devices, expected", [
    (MeshConfig(1, 32, 1), 32, {"data": 1, "fsdp": 32, "tensor": 1}),   # fits as configured
    (MeshConfig(1, -1, 1), 16, {"data": 1, "fsdp": 16, "tensor": 1}),   # -1 takes the rest
    (MeshConfig(1, 32, 1), 16, {"data": 1, "fsdp": 16, "tensor": 1}),   # does not fit: fsdp takes the chips
    (MeshConfig(2, 8, 2), 64, {"data": 2, "fsdp": 16, "tensor": 2}),    # data and tensor kept
    (MeshConfig(1, 8, 4), 2, {"data": 1, "fsdp": 2, "tensor": 1}),      # tensor 4 cannot divide 2 chips
])
def test_the_topology_replaces_mesh_sizes_that_do_not_fit(mesh, devices, expected):
    assert compile_lib.fit_mesh(mesh, devices) == expected


# A scanned layer: the while body holds a [64, 128] x [128, 256] dot and runs 32 times (the condition's
# bound); a collective inside the body runs 32 times too. TPU HLO names operands without their shapes.
HLO = """HloModule jit_step, is_scheduled=true

%fused_dot (param_0: bf16[64,128], param_1: bf16[128,256]) -> f32[64,256] {
  %param_0 = bf16[64,128]{1,0} parameter(0)
  %param_1 = bf16[128,256]{1,0} parameter(1)
  ROOT %dot.1 = f32[64,256]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%body (p: (s32[], bf16[64,128], bf16[128,256])) -> (s32[], bf16[64,128], bf16[128,256]) {
  %p = (s32[], bf16[64,128], bf16[128,256]) parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%p), index=0
  %x = bf16[64,128]{1,0} get-tuple-element(%p), index=1
  %w = bf16[128,256]{1,0} get-tuple-element(%p), index=2
  %fusion.1 = f32[64,256]{1,0} fusion(%x, %w), kind=kOutput, calls=%fused_dot
  %all-gather.1 = bf16[128,256]{1,0} all-gather(%w), replica_groups={{0,1}}, dimensions={0}
  ROOT %t = (s32[], bf16[64,128], bf16[128,256]) tuple(%i, %x, %w)
}

%cond (p.1: (s32[], bf16[64,128], bf16[128,256])) -> pred[] {
  %p.1 = (s32[], bf16[64,128], bf16[128,256]) parameter(0)
  %constant.7 = s32[]{:T(128)} constant(32)
  %i.1 = s32[]{:T(128)} get-tuple-element(%p.1), index=0
  ROOT %lt = pred[] compare(%i.1, %constant.7), direction=LT
}

ENTRY %main (a: bf16[64,128], b: bf16[128,256]) -> f32[64,256] {
  %a = bf16[64,128]{1,0} parameter(0)
  %b = bf16[128,256]{1,0} parameter(1)
  %zero = s32[]{:T(128)} constant(0)
  %init = (s32[], bf16[64,128], bf16[128,256]) tuple(%zero, %a, %b)
  %while.1 = (s32[], bf16[64,128], bf16[128,256]) while(%init), condition=%cond, body=%body
  %head = f32[64,256]{1,0} custom-call(%a, %b), custom_call_target="tpu_custom_call", backend_config={"custom_call_config":{"body":"x","cost_estimate": {"flops": 1000, "transcendentals": 5, "bytes_accessed": 7}}}
  ROOT %fusion.2 = f32[64,256]{1,0} fusion(%a, %b), kind=kOutput, calls=%fused_dot
}
"""


def test_hlo_flops_weigh_loop_bodies_by_their_trip_counts():
    counts = compile_lib.read_hlo(HLO)
    dot = 2 * 64 * 256 * 128
    assert counts.loops == [("body", 32)]
    assert counts.matmul_flops_once == 2 * dot + 1000  # as cost_analysis counts: the body once
    assert counts.matmul_flops == 33 * dot + 1000  # the body 32 times, the entry's dot and the kernel once
    assert counts.collectives == {"all-gather": {"count": 32, "bytes": 32 * 128 * 256 * 2}}


@pytest.mark.parametrize("key", ["kernel_impl", "attention_impl"])
def test_kernel_choices_are_config_keys_checked_before_anything_loads(key):
    config = config_from_dict({"data": {"synthetic": {"users": 2}}, "model": {key: "auto"}})
    assert getattr(config.model, key) == "auto"
    with pytest.raises(ConfigError, match=f"config key 'model.{key}' must be one of .*got 'pallas'"):
        config_from_dict({"data": {"synthetic": {"users": 2}}, "model": {key: "pallas"}})


def _topologies_or_skip():
    pytest.importorskip("libtpu", reason="libtpu (pip install 'alignx_jax[tpu]') is not installed")
    from jax.experimental import topologies

    return topologies


@pytest.mark.slow
def test_tiny_config_compiles_for_a_v5p_slice_and_counts_its_flops():
    """A 2-layer config through the whole `alignx compile` path on v5p-8 (4 chips): the step compiles
    with the Pallas kernels under Mosaic, fits, and the FLOPs column (loop bodies x trip counts plus
    splash's count) is within the issue's band of the model's own count."""
    _topologies_or_skip()
    from alignx_jax.train import load_config

    config = load_config(CONFIGS / "tiny_ica.yaml", ["data.rows=4", "model.overrides.vocab_size=4096"])
    report = compile_lib.compile_step(config, "v5p-8")
    assert report.devices == 4 and report.mesh == {"data": 1, "fsdp": 4, "tensor": 1}
    assert report.fits and 0 < report.per_device_bytes["total"] < report.hbm_bytes
    assert report.loops and all(trips == 2 for _, trips in report.loops[1:])  # the 2 scanned layers
    assert 0.9 < report.flops_per_device / report.model_flops_per_device < 1.4


def test_cli_refuses_an_unknown_topology_in_one_line(capsys):
    from alignx_jax.cli import main

    assert main(["compile", "--config", str(CONFIGS / "tiny_ica.yaml"), "--topology", "v5p-63"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("alignx: error: --topology 'v5p-63': unknown TPU topology")


@pytest.mark.pod  # ~20 min each on 2 cores: `make test-pod`, not CI
@pytest.mark.parametrize("name, topology", [("llama3_1_8b_tpu_v5p_64.yaml", "v5p-64"),
                                            ("llama3_1_70b_tpu_v5p_64.yaml", "v5p-64")])
def test_tpu_configs_compile_for_their_slice_fit_and_the_plan_is_within_25_percent(name, topology):
    """The shipped TPU configs as shipped (~20 min each on 2 shared cores): they compile for their
    slice, fit its HBM, and train.memory's plan is within 25% of XLA's per-device total."""
    _topologies_or_skip()
    from alignx_jax.train import load_config

    report = compile_lib.compile_step(load_config(CONFIGS / name), topology)
    assert report.fits
    assert report.planned_bytes == pytest.approx(report.per_device_bytes["total"], rel=0.25)
    if "8b" in name:
        assert 0.9 < report.flops_per_device / report.model_flops_per_device < 1.4


def test_collective_matmul_convolutions_count_only_taps_inside_the_input():
    """XLA writes a windowed (collective) matmul step as a convolution over a padded window: here a
    [8192 tokens x 2 shards x 128] block against [32 x 128 x 2 x 128] weights, the 32-wide window padded
    31 on both sides over a 1-wide input (one real tap per output). Its FLOPs are the matmul's:
    2 x 8192 x (32 x 128 outputs) x (2 x 128 contracted), as XLA's cost analysis counts them."""
    line = ("ROOT %convolution.230 = bf16[8192,32,128,1]{2,0,3,1} convolution(%a, %b), window={size=32x2 "
            "pad=31_31x0_0 rhs_reversal=1x0}, dim_labels=b1f0_0o1i->b0f1")
    assert compile_lib._convolution_flops(line, [8192, 2, 128, 1], [32, 128, 2, 128]) == 2 * 8192 * 4096 * 256


def test_a_loop_stepping_by_two_runs_half_its_bound():
    """XLA's bidirectional collective matmul: `i < 16` with `i + 2` written back runs 8 times."""
    condition = ["  %c = u32[]{:T(128)} constant(16)", "  %i = u32[] get-tuple-element(%p), index=4",
                 "  ROOT %lt = pred[] compare(%i, %c), direction=LT"]
    body = ["  %two = u32[]{:T(128)} constant(2)", "  %g = u32[] get-tuple-element(%q), index=4",
            "  %next = u32[]{:T(128)} add(%g, %two)",
            "  ROOT %t = (f32[], f32[], f32[], f32[], u32[]) tuple(%a, %b, %c2, %d, %next)"]
    assert compile_lib._trip_count(condition, body) == 8
    assert compile_lib._trip_count(condition, []) == 16


# ---- "does not fit" is an answer (docs/pods-defects.md) -------------------------------------------

# A 1-layer model with a 262144 x 8192 embedding: ~2.2e9 fp32 parameters with AdamW do not fit one
# v5e chip (16 GiB), and the TPU compiler says so in ~10 s.
TOO_BIG = ["model.overrides.vocab_size=262144", "model.overrides.hidden_size=8192", "model.overrides.num_heads=64",
           "model.overrides.num_kv_heads=8"]  # head_dim 128: splash attention's blocks fit a core's VMEM


@pytest.mark.parametrize("message, temp, total", [
    ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (60.28G) "
     "exceeds available HBM (15.75G).", int(60.28 * 2**30), int(60.28 * 2**30) + 2**30),
    ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space hbm. Used 120.50G "
     "of 95.74G hbm. Exceeded hbm capacity by 24.76G.", int(120.5 * 2**30) - 2**30, int(120.5 * 2**30)),
])
def test_xla_out_of_memory_messages_give_what_the_step_needs(message, temp, total):
    parts = compile_lib.out_of_memory_bytes(message, arguments=2**30)
    assert parts == {"argument": 2**30, "output": 0, "temp": temp, "alias": 0, "total": total}
    assert compile_lib.out_of_memory_bytes("RESOURCE_EXHAUSTED: something else", 2**30) is None


def test_the_smallest_slice_search_is_bounded_and_finds_the_smallest_fit():
    """A stand-in compiler that fits from 16 chips up: from the plan's guess the search steps to the
    smallest slice that fits, compiling only the slices next to the answer."""
    from alignx_jax.train import load_config

    config = load_config(CONFIGS / "tiny_ica.yaml", ["data.rows=256"])
    compiled = []

    def fake_compile(config, name, config_name=""):
        compiled.append(name)
        top = compile_lib.topology(name)
        return compile_lib.Report(name, top.devices, {}, 0, {"total": 0}, top.devices >= 16, 0, 0, 0, {}, [], 0, 0)

    assert fit_lib.planned_slices(config) == {"v5p": "v5p-8", "v6e": "v6e-1"}  # the tiny model fits one chip
    found = fit_lib.find_smallest_slices(config, compile_fn=fake_compile)
    assert {kind: r.topology for kind, r in found.items()} == {"v5p": "v5p-32", "v6e": "v6e-16"}
    assert compiled == ["v5p-8", "v5p-16", "v5p-32", "v6e-1", "v6e-4", "v6e-8", "v6e-16"]


def test_cli_answers_does_not_fit_with_xlas_figure_in_one_line(tmp_path, capsys):
    """The TPU compiler's RESOURCE_EXHAUSTED was a 45-line traceback, exit 1; now it is the report
    with XLA's figure against the chip's HBM, fits: false in --out, one stderr line, exit 2."""
    _topologies_or_skip()
    import json

    from alignx_jax.cli import main

    out = tmp_path / "report.json"
    code = main(["compile", "--config", str(CONFIGS / "tiny_ica.yaml"), "--topology", "v5e-1", *TOO_BIG,
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("alignx: error: ") and "does not fit v5e-1: XLA needs " in err[0]
    assert "the chip has 16 GiB" in err[0] and "(train.memory plans it to fit v5p-8, v6e-16)" in err[0]
    assert "DOES NOT FIT" in captured.out and "RESOURCE_EXHAUSTED" in captured.out
    report = json.loads(out.read_text())
    assert report["fits"] is False and "RESOURCE_EXHAUSTED" in report["xla_error"]
    assert report["per_device_bytes"]["total"] > report["hbm_bytes"] == 16 * 2**30
    assert report["smallest_slices"] == {"v5p": "v5p-8", "v6e": "v6e-16"}  # v6e-16: fsdp 8 x tensor 2


@pytest.mark.slow  # three compiles (~40 s)
def test_cli_fit_compiles_to_find_the_smallest_slices(tmp_path, capsys):
    _topologies_or_skip()
    import json

    from alignx_jax.cli import main

    out = tmp_path / "report.json"
    assert main(["compile", "--config", str(CONFIGS / "tiny_ica.yaml"), "--topology", "v5e-1", *TOO_BIG,
                 "--out", str(out), "--fit"]) == 2
    captured = capsys.readouterr()
    report = json.loads(out.read_text())
    # The search starts at the plan's slice (v5p-8) and names only slices XLA compiled and fitted.
    assert report["slices_by"] == "xla" and "--fit: v5p-8 " in captured.out, captured.out
    for name in filter(None, report["smallest_slices"].values()):
        assert f"--fit: {name} fits" in captured.out, captured.out


@pytest.mark.parametrize("command", ["compile", pytest.param("train", marks=pytest.mark.slow)])  # train: ~1.5 min
def test_no_libtpu_noise_on_a_cpu_machine(tmp_path, command):
    """libtpu initializes on a machine without TPU chips too (`alignx compile`, and any command whose
    JAX looks for backends, such as a bare `alignx train`) and printed `INVALID_ARGUMENT: Error:
    unexpected worker hostname ...` with a source trace on stderr; a second compile of the same step
    warned that the compilation cache could not be read (INVALID_ARGUMENT: PjRtCompiler ...). Without
    JAX_PLATFORMS nothing of it is printed."""
    _topologies_or_skip()
    import os
    import subprocess
    import sys

    alignx = pathlib.Path(sys.executable).parent / "alignx"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "JAX_PLATFORMS", "XLA_FLAGS"))}
    if command == "compile":  # twice: the second one would read the first one's cache entry
        args = ["compile", "--config", str(CONFIGS / "tiny_ica.yaml"), "--topology", "v5e-4", "data.rows=4"]
        runs = [subprocess.run([str(alignx), *args], env=env, capture_output=True, text=True, timeout=600)
                for _ in range(2)]
    else:
        config = tmp_path / "tiny.yaml"  # one step of a tiny model: the backends load, nothing else matters
        config.write_text(yaml.safe_dump({
            "out_dir": str(tmp_path / "run"), "steps": 1, "mesh": {"fsdp": 1},
            "model": {"name": "random", "preset": "tiny", "tokenizer": "smollm2-135m-instruct",
                      "overrides": {"vocab_size": 49152, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1}},
            "data": {"synthetic": {"users": 4, "records_per_user": 2, "history_items": 0}, "rows": 2,
                     "seq_lengths": [512]}}))
        runs = [subprocess.run([str(alignx), "train", "--config", str(config)], env=env, capture_output=True,
                               text=True, timeout=600)]
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert "INVALID_ARGUMENT" not in run.stderr and "Source Location Trace" not in run.stderr, run.stderr
        assert "TPU_WORKER_HOSTNAMES" not in run.stderr and "TPU_ACCELERATOR_TYPE" not in run.stderr, run.stderr


def test_the_70b_config_plans_the_smallest_v5p_and_v6e_slices():
    """rows 32 do not split over 64 or 128 batch shards: there the extra chips go to `tensor` (within a
    host), so the v6e answer exists (v6e-128: fsdp 32 x tensor 4)."""
    from alignx_jax.train import load_config

    config = load_config(CONFIGS / "llama3_1_70b_tpu_v5p_64.yaml")
    assert fit_lib.planned_slices(config) == {"v5p": "v5p-64", "v6e": "v6e-128"}
    assert fit_lib.slice_mesh(config, compile_lib.topology("v6e-128")) == {"data": 1, "fsdp": 32, "tensor": 4}


def test_an_async_all_gather_counts_the_gathered_bytes_not_its_input_shard():
    """Defect 9: `all-gather-start` returns (input shard, gathered array); its bytes were read from the
    first shape, the shard, under by the group size (8 here). A sync all-gather's result is the
    gathered array itself; an all-reduce-start's result is one array."""
    hlo = HLO.replace(
        "%all-gather.1 = bf16[128,256]{1,0} all-gather(%w), replica_groups={{0,1}}, dimensions={0}",
        "%ags = (bf16[16,256]{1,0}, bf16[128,256]{1,0}) all-gather-start(%w), replica_groups={{0,1,2,3,4,5,6,7}}, "
        "dimensions={0}\n  %agd = bf16[128,256]{1,0} all-gather-done(%ags)\n"
        "  %ars = f32[64,256]{1,0} all-reduce-start(%x), replica_groups={{0,1}}, to_apply=%add")
    counts = compile_lib.read_hlo(hlo)
    assert counts.collectives["all-gather"] == {"count": 32, "bytes": 32 * 128 * 256 * 2}
    assert counts.collectives["all-reduce"] == {"count": 32, "bytes": 32 * 64 * 256 * 4}
