"""Bad input to any `alignx` subcommand: one line `alignx: error: ...` on stderr, exit 2, no traceback,
nothing left behind (issue 17).

The cases run `alignx_jax.cli.main` in one child process (the entry point's own function; the
installed script itself runs in the `--debug` tests below), each in its own folder of tiny bad
inputs, with the process's stdout and stderr file descriptors captured per case, so a line that a
library prints outside Python's `sys.stderr` counts too. One process instead of one per case: the
53 imports of JAX cost 2 minutes on 2 cores.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys

import pytest

from alignx_jax import cli, preferences
from alignx_jax.cli import _common
from alignx_jax.errors import AlignxError, InputError, KeyMismatchError, MissingFileError, RecordError

ALIGNX = pathlib.Path(sys.executable).parent / "alignx"

# A config.json that read_config accepts, so the failure is in the weights.
_HF_CONFIG = {"model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
              "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}
_NATIVE_CONFIG = {"vocab_size": 32, "hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2,
                  "num_kv_heads": 1}


def _write_inputs(folder: pathlib.Path) -> None:
    """Every bad input the cases name, a few bytes each."""
    (folder / "EMPTY_DIR").mkdir()
    (folder / "full_dir").mkdir()
    (folder / "full_dir" / "keep.txt").write_text("not ours")
    (folder / "EMPTY.json").write_text("")
    (folder / "empty.gguf").write_bytes(b"")
    (folder / "NOT_A_GGUF").write_text("hello, not a model\n")
    (folder / "notes.txt").write_text("a file, not a model folder\n")
    (folder / "no_records.json").write_text("[]\n")
    (folder / "truncated.json").write_text('[{"prompt": "p", "chosen": "c"')
    (folder / "latin1.json").write_bytes(b'[{"prompt": "caf\xe9"}]')
    (folder / "bad.parquet").write_text("prompt,chosen,rejected\n")
    (folder / "all_bad.json").write_text(json.dumps([{"prompt": "p"}, {"chosen": "c"}]))
    (folder / "bad_config").mkdir()
    (folder / "bad_config" / "config.json").write_text("{not json")
    (folder / "bad_weights").mkdir()
    (folder / "bad_weights" / "config.json").write_text(json.dumps(_HF_CONFIG))
    (folder / "bad_weights" / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    (folder / "bad_native").mkdir()
    (folder / "bad_native" / "alignx_model.json").write_text(json.dumps({"vocab_size": 32}))
    (folder / "bad_native" / "params").mkdir()
    (folder / "no_params").mkdir()
    (folder / "no_params" / "alignx_model.json").write_text(json.dumps(_NATIVE_CONFIG))
    (folder / "no_params" / "params").mkdir()
    tiny = "model: {name: random, preset: tiny, tokenizer: smollm2-135m-instruct}\nout_dir: run\n"
    users = "data: {synthetic: {users: 2, records_per_user: 1, history_items: 0}"
    (folder / "typo.yaml").write_text(tiny + users + "}\nsetps: 3\n")
    (folder / "wrong_type.yaml").write_text(tiny + users + "}\nsteps: many\n")
    (folder / "missing_data.yaml").write_text(tiny + "data: {files: [absent.json]}\n")
    (folder / "too_long.yaml").write_text(tiny + users + ", seq_lengths: [64]}\n")
    (folder / "unknown_dimension.yaml").write_text(tiny + "data: {synthetic: {users: 2, dimensions: [Likes jazz]}}\n")


# id -> (arguments, text the one line must contain: the bad input it names). `issue-*`: the table.
CASES = {
    "issue-hf-to-jax-empty-dir": (["convert", "hf-to-jax", "EMPTY_DIR", "out"], "EMPTY_DIR/config.json"),
    "issue-jax-to-hf-missing": (["convert", "jax-to-hf", "MISSING", "out"], "MISSING/alignx_model.json"),
    "issue-gguf-not-a-gguf": (["convert", "gguf-to-hf", "out", "--gguf", "NOT_A_GGUF"], "NOT_A_GGUF: not a GGUF"),
    "issue-synth-negative-users": (["data", "synth", "--users", "-5", "--out", "a.json"], "--users must be >= 1"),
    "synth-out-under-a-file": (["data", "synth", "--users", "10", "--out", "EMPTY.json/dir/x.parquet"],
                               "EMPTY.json is a file, not a folder"),
    "issue-synth-txt": (["data", "synth", "--users", "10", "--out", "x.txt"], "x.txt: unknown file type '.txt'"),
    "issue-validate-empty-file": (["data", "validate", "EMPTY.json"], "EMPTY.json: the file is empty"),
    "demo-steps": (["demo", "--steps", "0"], "--steps must be >= 1"),
    "demo-budget": (["demo", "--budget-seconds", "0"], "--budget-seconds must be > 0"),
    "demo-missing-psoups": (["demo", "--psoups", "absent.json"], "--psoups absent.json: no such file"),
    "demo-out-not-empty": (["demo", "--out", "full_dir"], "full_dir: the folder exists and is not empty"),
    "hf-to-jax-config-not-json": (["convert", "hf-to-jax", "bad_config", "out"], "bad_config/config.json: not valid JSON"),
    "hf-to-jax-bad-safetensors": (["convert", "hf-to-jax", "bad_weights", "out"],
                                  "bad_weights/model.safetensors: not a readable safetensors file"),
    "hf-to-jax-output-not-empty": (["convert", "hf-to-jax", "EMPTY_DIR", "full_dir"], "full_dir: the folder exists"),
    "jax-to-hf-config-incomplete": (["convert", "jax-to-hf", "bad_native", "out"],
                                    "bad_native/alignx_model.json: missing LlamaConfig field(s) ['hidden_size'"),
    "jax-to-hf-no-checkpoint": (["convert", "jax-to-hf", "no_params", "out"], "no_params/params: cannot restore"),
    "jax-to-hf-shard-size": (["convert", "jax-to-hf", "no_params", "out", "--max-shard-gb", "0"],
                             "--max-shard-gb must be > 0"),
    "gguf-missing": (["convert", "gguf-to-hf", "out", "--gguf", "absent.gguf"], "absent.gguf: GGUF file not found"),
    "gguf-empty": (["convert", "gguf-to-hf", "out", "--gguf", "empty.gguf"], "empty.gguf: the file is empty"),
    # The output's missing parents are made for the output and removed again when the input is refused.
    "gguf-output-parents-not-left-behind": (["convert", "gguf-to-hf", "nowhere/deeper/out", "--gguf", "NOT_A_GGUF"],
                                            "NOT_A_GGUF: not a GGUF"),
    "synth-unknown-dimension": (["data", "synth", "--users", "2", "--dimensions", "3,Likes jazz", "--out", "a.json"],
                                "--dimensions: 'Likes jazz' is not a synthetic style dimension; known: 16"),
    "synth-out-is-a-folder": (["data", "synth", "--users", "2", "--out", "EMPTY_DIR"], "EMPTY_DIR: is a folder"),
    "validate-no-records": (["data", "validate", "no_records.json"], "no_records.json: holds no records"),
    "validate-truncated-json": (["data", "validate", "truncated.json"], "truncated.json: not valid JSON"),
    "validate-not-parquet": (["data", "validate", "bad.parquet"], "bad.parquet: not a parquet file"),
    "validate-missing": (["data", "validate", "absent.json"], "no JSON file at absent.json"),
    "stats-no-usable-records": (["data", "stats", "all_bad.json"], "all_bad.json: no usable records, all 2 are bad"),
    "stats-not-utf8": (["data", "stats", "latin1.json"], "latin1.json: not UTF-8"),
    "stats-no-parquet-in-folder": (["data", "stats", "EMPTY_DIR"], "no *.parquet files under EMPTY_DIR"),
    "losses-unknown-name": (["losses", "nope"], "unknown loss 'nope'"),
    "losses-not-a-function": (["losses", "os:path"], "loss 'os:path'"),
    "train-typo-key": (["train", "--config", "typo.yaml"], "unknown key 'setps'; did you mean 'steps'?"),
    "train-wrong-type": (["train", "--config", "wrong_type.yaml"], "config key 'steps' must be int, got 'many'"),
    "train-missing-data-file": (["train", "--config", "missing_data.yaml"], "absent.json"),
    "train-records-too-long": (["train", "--config", "too_long.yaml"], "too long for data.seq_lengths"),
    "train-unknown-dimension": (["train", "--config", "unknown_dimension.yaml"],
                                "config key 'data.synthetic.dimensions': 'Likes jazz' is not a synthetic style dimension"),
    "train-missing-config": (["train", "--config", "absent.yaml"], "absent.yaml: no such config file"),
    "train-bad-override": (["train", "--config", "typo.yaml", "steps"], "override 'steps' must look like key=value"),
    "eval-unknown-mode": (["eval", "--policy", "x", "--reference", "x", "--data", "all_bad.json", "--out", "out",
                           "--mode", "nope"], "invalid choice: 'nope'"),
    "eval-not-alignx-records": (["eval", "--policy", "smollm2-135m-instruct", "--reference", "smollm2-135m-instruct",
                                 "--data", "all_bad.json", "--out", "out"], "all_bad.json: record 0: missing field"),
    "eval-pba-soft-without-bridge": (["eval", "--policy", "EMPTY_DIR", "--reference", "EMPTY_DIR", "--data",
                                      "all_bad.json", "--out", "out", "--mode", "pba_soft"],
                                     "--mode pba_soft needs a policy trained with a preference bridge"),
    "eval-bad-mesh": (["eval", "--policy", "smollm2-135m-instruct", "--reference", "smollm2-135m-instruct", "--data",
                       "all_bad.json", "--out", "out", "--mesh", "data=0"], "--mesh must look like data=1,fsdp=-1"),
    "generate-top-p": (["generate", "--prompt", "hi", "--top-p", "2"], "--top-p must be in (0, 1]"),
    "generate-missing-model": (["generate", "--model", "MISSING", "--prompt", "hi"], "MISSING: no such model folder"),
    "generate-out-txt": (["generate", "--data", "all_bad.json", "--out", "x.txt"], "x.txt: unknown file type '.txt'"),
    "generate-unknown-preference": (["generate", "--prompt", "hi", "--preference", "Likes sceince=positive"],
                                    "unknown preference 'Likes sceince'; nearest: 'Likes science'"),
    "generate-preference-setting": (["generate", "--prompt", "hi", "--preference", "Likes science=yes"],
                                    "the setting must be positive, negative or neutral, got 'yes'"),
    "generate-persona-missing": (["generate", "--prompt", "hi", "--persona", "absent.json"],
                                 "--persona absent.json: no such file"),
    "generate-persona-not-a-persona": (["generate", "--prompt", "hi", "--persona", "no_records.json"],
                                       "--persona no_records.json: expected a JSON object with a persona"),
    "judge-missing-file": (["judge", "absent.jsonl", "absent2.jsonl", "--out", "out"],
                           "absent.jsonl: no such generation file"),
    "judge-output-not-empty": (["judge", "absent.jsonl", "absent2.jsonl", "--out", "full_dir"],
                               "full_dir: the folder exists"),
    "compile-missing-config": (["compile", "--config", "absent.yaml", "--topology", "v5p-8"],
                               "absent.yaml: no such config file"),
    "compile-typo-key": (["compile", "--config", "typo.yaml", "--topology", "v5p-8"],
                         "unknown key 'setps'; did you mean 'steps'?"),
    "argparse-bad-int": (["data", "synth", "--users", "x", "--out", "a.json"], "argument --users: invalid int"),
    "argparse-unknown-command": (["frobnicate"], "invalid choice: 'frobnicate'"),
}


def _tree(folder: pathlib.Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ALIGNX_DEBUG"}
    return {**env, "JAX_PLATFORMS": "cpu", **extra}


def _run(args, cwd, **env):
    return subprocess.run([str(ALIGNX), *args], cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=300)


# Runs [(args, folder), ...] from argv[1] through cli.main, one after another, and writes
# [(returncode, stdout, stderr), ...] as JSON to the file argv[2].
_CASE_RUNNER = """
import json, os, sys, tempfile
from alignx_jax import cli
results = []
for args, folder in json.loads(sys.argv[1]):
    os.chdir(folder)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
        try:
            code = cli.main(args)
        except SystemExit as exit:
            code = exit.code
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(saved[0], 1); os.dup2(saved[1], 2)
        texts = []
        for f in (out, err):
            f.seek(0)
            texts.append(f.read().decode())
    results.append((code, *texts))
with open(sys.argv[2], "w") as f:
    json.dump(results, f)
"""


def _run_cases(cases: dict, folders: dict) -> dict:
    """name -> CompletedProcess-like (returncode, stdout, stderr) of each case, all in one process."""
    names = list(cases)
    work = json.dumps([(cases[name][0], str(folders[name])) for name in names])
    results = folders[names[0]].parent / "case_results.json"
    process = subprocess.run([sys.executable, "-c", _CASE_RUNNER, work, str(results)], env=_env(), capture_output=True,
                             text=True, timeout=600, cwd=folders[names[0]])
    assert process.returncode == 0, process.stderr
    return {name: subprocess.CompletedProcess(cases[name][0], code, out, err)
            for name, (code, out, err) in zip(names, json.loads(results.read_text()))}


SPELLS_OFFICIAL_LABELS = {"generate-unknown-preference", "generate-preference-setting"}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """id -> (completed process, files before, files after) for every case."""
    if not ALIGNX.is_file():
        pytest.skip(f"no installed entry point at {ALIGNX} (pip install -e . first)")
    folders = {}
    for name in CASES:
        folders[name] = tmp_path_factory.mktemp(name)
        _write_inputs(folders[name])
    before = {name: _tree(folder) for name, folder in folders.items()}
    done = _run_cases(CASES, folders)
    return {name: (done[name], before[name], _tree(folders[name])) for name in CASES}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_line_and_exit_2(results, case):
    if case in SPELLS_OFFICIAL_LABELS and preferences.vocabulary_path() is None:
        pytest.skip("no preference vocabulary file (../shared/data absent): dimensions are named by index")
    process, before, after = results[case]
    assert "Traceback" not in process.stderr
    assert process.returncode == 2, process.stderr
    lines = process.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("alignx: error: "), process.stderr
    assert CASES[case][1] in lines[0]
    assert process.stdout == ""
    assert after == before, f"left behind: {sorted(after - before)}"


def _leaf_commands(parser, prefix=()):
    """'demo', 'convert hf-to-jax', ...: every command a user can run, from the parser itself."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _leaf_commands(sub, (*prefix, name))
            return
    yield " ".join(prefix)


def test_every_subcommand_has_two_bad_inputs():
    """A subcommand that lands later (train, eval, ...) fails here until it has its cases above."""
    counts = {}
    for args, _ in CASES.values():
        for command in _leaf_commands(cli.build_parser()):
            if args[:len(command.split())] == command.split():
                counts[command] = counts.get(command, 0) + 1
    assert {c: counts.get(c, 0) for c in _leaf_commands(cli.build_parser()) if counts.get(c, 0) < 2} == {}


@pytest.mark.parametrize("how", [["--debug"], "ALIGNX_DEBUG"])
def test_debug_shows_the_traceback_and_still_exits_2(tmp_path, how):
    if not ALIGNX.is_file():
        pytest.skip(f"no installed entry point at {ALIGNX}")
    (tmp_path / "EMPTY.json").write_text("")
    args = ["data", "validate", "EMPTY.json"]
    if how == "ALIGNX_DEBUG":
        process = _run(args, tmp_path, ALIGNX_DEBUG="1")
    else:
        process = _run(how + args, tmp_path)
    assert process.returncode == 2
    assert process.stderr.startswith("Traceback")
    assert "alignx_jax.errors.InputError: EMPTY.json: the file is empty" in process.stderr
    assert process.stderr.splitlines()[-1].startswith("alignx: error: EMPTY.json: the file is empty")


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only our own error types are input errors: a ValueError from a bug propagates (exit 1)."""
    from alignx_jax.cli import losses

    def broken(args):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(losses, "run", broken)
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["losses"])


def test_errors_are_also_the_builtins_callers_catch():
    assert issubclass(InputError, ValueError) and issubclass(RecordError, InputError)
    assert issubclass(MissingFileError, FileNotFoundError) and issubclass(KeyMismatchError, KeyError)
    assert all(issubclass(e, AlignxError) for e in (InputError, RecordError, MissingFileError, KeyMismatchError))
    assert str(KeyMismatchError("model.safetensors: missing tensor(s) ['x']")) == \
        "model.safetensors: missing tensor(s) ['x']"  # KeyError would quote the whole message


def test_a_failure_while_writing_leaves_no_output(tmp_path, monkeypatch, capsys):
    """jax-to-hf writes into a hidden temporary folder; a failure halfway removes it, `out` never appears."""
    from alignx_jax import interop

    def half_written(params, config, folder, **kwargs):
        (pathlib.Path(folder) / "model-00001-of-00002.safetensors").write_bytes(b"half")
        raise InputError("the disk said no")

    monkeypatch.setattr(interop, "load_native", lambda src: ({}, None))
    monkeypatch.setattr(interop, "save_hf", half_written)
    assert cli.main(["convert", "jax-to-hf", str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == "alignx: error: the disk said no\n"
    assert list(tmp_path.iterdir()) == []


def test_atomic_output(tmp_path):
    out = tmp_path / "records.jsonl"
    with _common.atomic_output(out) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".jsonl" and tmp.name.startswith(".records.jsonl.tmp-")
        tmp.write_text("{}\n")
        assert not out.exists()
    assert out.read_text() == "{}\n" and [p.name for p in tmp_path.iterdir()] == ["records.jsonl"]
    with pytest.raises(KeyboardInterrupt), _common.atomic_output(out) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert out.read_text() == "{}\n" and [p.name for p in tmp_path.iterdir()] == ["records.jsonl"]
    (tmp_path / "model").mkdir()  # an existing empty folder is replaced by the finished one
    with _common.atomic_output(tmp_path / "model", kind="folder") as tmp:
        (tmp / "config.json").write_text("{}")
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["config.json"]
    assert oct((tmp_path / "model").stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def test_atomic_output_makes_missing_parents_and_removes_them_on_failure(tmp_path):
    (tmp_path / "runs").mkdir()
    with pytest.raises(KeyboardInterrupt), _common.atomic_output(tmp_path / "runs/a/b/out", kind="folder") as tmp:
        assert tmp.parent == tmp_path / "runs/a/b"
        raise KeyboardInterrupt
    assert list((tmp_path / "runs").iterdir()) == []  # a/ and b/ were made here, so they go; runs/ was there
    with _common.atomic_output(tmp_path / "runs/a/b/out.json") as tmp:
        tmp.write_text("{}")
    assert (tmp_path / "runs/a/b/out.json").read_text() == "{}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_output_path_refuses_before_any_work(tmp_path):
    # Missing folders above an output are fine (created when it is written); a file in the way is not.
    assert _common.output_path(tmp_path / "nope" / "x.json", flag="--out") == tmp_path / "nope" / "x.json"
    assert not (tmp_path / "nope").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match=f"--out .*/file/a/x.json: {tmp_path}/file is a file, not a folder"):
        _common.output_path(tmp_path / "file" / "a" / "x.json", flag="--out")
    with pytest.raises(InputError, match=r"unknown file type '\.csv', expected one of \.json"):
        _common.output_path(tmp_path / "x.csv", suffixes=(".json",))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a").write_text("")
    with pytest.raises(InputError, match="full: the folder exists and is not empty"):
        _common.output_path(tmp_path / "full", kind="folder")
    with pytest.raises(InputError, match="a: is a file, expected a folder"):
        _common.output_path(tmp_path / "full" / "a", kind="folder")
    assert _common.output_path(tmp_path / "new", kind="folder") == tmp_path / "new"
    assert not (tmp_path / "new").exists()
