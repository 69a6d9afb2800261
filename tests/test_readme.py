"""The README's quickstart runs as written, on a tiny model.

Blocks are marked by the HTML comment on the line before them:

- `<!-- test: record -->`: a JSON record, which must pass the record schema;
- `<!-- test: file NAME -->`: a file the following commands read (written as NAME);
- `<!-- test: quickstart -->`: commands run in order in a scratch folder, each must exit 0. Two
  changes keep it small: `alignx train` gets overrides that swap the embedded SmolLM2 for a 2-layer
  random-init model with its tokenizer, one step and fewer synthetic users; `alignx eval` scores
  against that trained model instead of the embedded one. Everything else (the config file, the
  commands, their flags, the files they hand each other) is the README's.
- `<!-- test: python -->`: Python run in a scratch folder (slow: it loads the embedded model).
"""
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from alignx_jax import preferences

REPO = pathlib.Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
MARK = re.compile(r"^<!-- test: (\w+)(?: (\S+))? -->\n```\w*\n(.*?)^```", re.S | re.M)
TINY_MODEL = ["model.name=random", "model.preset=tiny", "model.tokenizer=smollm2-135m-instruct",
              "model.overrides={vocab_size: 49152, hidden_size: 32, intermediate_size: 64, num_layers: 2}",
              "lora.layers=1", "steps=1", "data.seq_lengths=[512, 1024]"]
USERS = 4  # synthetic users for the test run (the README writes more)


def marked(kind):
    return [(name, body) for k, name, body in MARK.findall(README) if k == kind]


def commands(body):
    joined = re.sub(r"\\\n\s*", " ", body)
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


def alignx(args, cwd):
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])  # this checkout's alignx_jax
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": path}
    env.pop("ALIGNX_DEBUG", None)
    code = "import sys; from alignx_jax.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_readme_marks_its_quickstart():
    assert len(marked("record")) == 1 and len(marked("quickstart")) == 1 and marked("file")
    steps = [args[:2] for args in commands(marked("quickstart")[0][1])]
    assert steps == [["alignx", "data"], ["alignx", "data"], ["alignx", "train"], ["alignx", "eval"]]


def test_the_example_record_passes_the_schema():
    (_, body), = marked("record")
    record = json.loads(body)
    preferences.validate_record(record, 0, schema="benchmark")
    assert record[preferences.GROUND_TRUTH_PERSONA]


@pytest.mark.slow  # four commands, each a fresh process that compiles its programs (~2 min on 2 busy cores)
def test_the_quickstart_runs(tmp_path):
    for name, body in marked("file"):
        (tmp_path / name).write_text(body)
    run_dir = None
    for args in commands(marked("quickstart")[0][1]):
        assert args[0] == "alignx"
        args = args[1:]
        if args[:2] == ["data", "synth"]:
            args[args.index("--users") + 1] = str(USERS)
        if args[0] == "train":
            args = args + TINY_MODEL
        if args[0] == "eval":
            run_dir = args[args.index("--policy") + 1]
            args[args.index("--reference") + 1] = run_dir  # the trained tiny model, not the embedded one
        done = alignx(args, tmp_path)
        assert done.returncode == 0, f"alignx {' '.join(args)}\n{done.stderr[-3000:]}"
        if args[:2] == ["data", "validate"]:
            assert done.stdout.strip().splitlines()[-1] == f"{USERS * 4} records, 0 bad"
    out = tmp_path / pathlib.Path(run_dir).parent
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 1 and "eval_worst_persona_accuracy" in summary
    assert (out / "heldout.json").is_file() and (out / "eval" / "report.json").is_file()


@pytest.mark.slow  # loads the embedded SmolLM2-135M and writes it as a Hugging Face folder (~30 s)
def test_the_python_api_snippet_runs(tmp_path, monkeypatch):
    (body,) = re.findall(r"^## Python API\n\n```python\n(.*?)^```", README, re.S | re.M)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    exec(compile(body, "README.md[Python API]", "exec"), namespace)  # noqa: S102 - our own README
    assert (tmp_path / "out" / "hf" / "config.json").is_file()
    assert float(namespace["per_pair"][0]) > 0
