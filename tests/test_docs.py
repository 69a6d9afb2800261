"""README.md and docs/ say only what the code accepts.

- Every `alignx ...` command line in a code block parses against the CLI's own parser (the
  subcommands and flags exist, required arguments are there), and every `key=value` override it
  passes to `alignx train` / `alignx compile` names an existing config key.
- Every inline `alignx ...` span names existing subcommands and flags.
- Every config key a YAML block or a `key: value` span names exists.
- The config reference has a meaning for every key (docs/_ext/config_meanings.py has no stale entry),
  and no page speaks of the project's work process.
- The custom-loss example of docs/losses.md runs and passes `losses.resolve`.
"""
import argparse
import dataclasses
import importlib.util
import pathlib
import re
import shlex
import sys
import typing

import pytest
import yaml

from alignx_jax.cli import build_parser
from alignx_jax.train import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
WORK_PROCESS_WORDS = ("this session", "issue notes", "must-show", "closing note")
CONFIG_COMMANDS = ("train", "compile")  # the subcommands that take key=value overrides
OVERRIDE = re.compile(r"^([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*)=")


def _ext_module():
    spec = importlib.util.spec_from_file_location("alignx_docs", REPO / "docs" / "_ext" / "alignx_docs.py")
    sys.path.insert(0, str(REPO / "docs" / "_ext"))  # beside it: config_meanings
    module = importlib.util.module_from_spec(spec)
    sys.modules["alignx_docs"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# ---- reading the pages ----------------------------------------------------------------------------

def code_blocks(text: str):
    """(language, body) of every fenced block (``` or ~~~), nested fences not expected."""
    return re.findall(r"^```([\w{}-]*)[^\n]*\n(.*?)^```", text, flags=re.S | re.M)


def logical_lines(body: str):
    """Lines with `\\` continuations joined and a leading `$ ` prompt dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    for line in joined.splitlines():
        line = line.strip()
        yield line[2:] if line.startswith("$ ") else line


def alignx_commands(line: str):
    """The `alignx` commands in one shell line: as its own command, after `.venv/bin/`, or inside a quoted
    `--command "... && alignx ..."` string; each as its argument list (without `alignx`)."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        return
    for i, token in enumerate(tokens):
        launched = all(re.match(r"^\w+=", t) for t in tokens[:i]) or "srun" in tokens[:i]  # env vars, srun ...
        if (token == "alignx" or token.endswith("/alignx")) and launched:
            rest = []
            for t in tokens[i + 1:]:
                if t in ("&&", "||", ";", "|"):
                    break
                rest.append(t)
            yield rest
            return
        if "alignx " in token and " " in token:  # a command inside a quoted string
            for piece in re.split(r"&&|;|\|\|", token):
                yield from alignx_commands(piece)


def block_commands():
    """(page, line, args, shows_error) of every alignx command in a code block of README.md and docs/;
    shows_error: the block prints `alignx: error: ...` right after it (a documented refusal)."""
    found = []
    for page in PAGES:
        for language, body in code_blocks(page.read_text()):
            if language not in ("", "bash", "sh", "shell", "console", "text"):
                continue
            lines = list(logical_lines(body))
            for i, line in enumerate(lines):
                if line.startswith("#"):
                    continue
                shows_error = i + 1 < len(lines) and lines[i + 1].startswith("alignx: error:")
                for args in alignx_commands(line):
                    found.append((page.name, line, args, shows_error))
    return found


def inline_commands():
    found = []
    for page in PAGES:
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
        for span in re.findall(r"`(alignx [^`]+)`", text):
            found.append((page.name, span))
    return found


# ---- the CLI and the config schema ------------------------------------------------------------------

def _subparsers(parser):
    for action in parser._actions:  # argparse keeps no public list of subparsers
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def command_parser(args):
    """(the parser of the deepest subcommand named in args, the words that named it)."""
    parser, words = build_parser(), []
    for arg in args:
        choices = _subparsers(parser)
        if arg in choices:
            parser, words = choices[arg], words + [arg]
        elif arg == "--debug" and not words:
            continue
        else:
            break
    return parser, words


def config_key_exists(dotted: str) -> bool:
    cls = config_lib.TrainConfig
    for part in dotted.split("."):
        part = part.split("[")[0]
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return False
        tp = hints[part]
        inner = [a for a in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(a)]
        cls = inner[0] if inner else None
        if cls is None:
            return dotted.split(".")[-1].split("[")[0] == part  # a leaf must be the last part
    return True


def yaml_keys(tree, prefix=""):
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        yield dotted
        if isinstance(value, dict) and config_key_exists(dotted) and dotted not in (
                "loss_hparams", "model.overrides"):
            yield from yaml_keys(value, dotted)
        if dotted == "data.files" and isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    yield from (f"data.files.{k}" for k in item)


# ---- the tests ------------------------------------------------------------------------------------

def test_pages_hold_commands_to_check():
    commands = block_commands()
    named = {tuple(command_parser(args)[1][:1]) for _, _, args, _ in commands}
    assert len(commands) >= 20 and {("train",), ("eval",), ("data",), ("compile",), ("convert",)} <= named


@pytest.mark.parametrize("page,line,args,shows_error", block_commands(),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_every_command_in_a_code_block_parses(page, line, args, shows_error):
    parser, words = command_parser(args)
    try:
        build_parser().parse_args(args)
    except SystemExit as error:
        if error.code != 0:  # --help exits 0
            pytest.fail(f"{page}: `alignx {' '.join(args)}` does not parse (exit {error.code})")
    if words and words[0] in CONFIG_COMMANDS:
        keys = [m.group(1) for m in map(OVERRIDE.match, args) if m]
        if shows_error:  # the page shows the refusal of a misspelt key: it must indeed not exist
            assert not all(map(config_key_exists, keys)), f"{page}: {line}: the error it shows cannot happen"
        else:
            missing = [key for key in keys if not config_key_exists(key)]
            assert not missing, f"{page}: {line}: no config key {missing}"


@pytest.mark.parametrize("page,span", inline_commands())
def test_every_inline_command_names_existing_subcommands_and_flags(page, span):
    words = [w for w in shlex.split(span.replace("|", " ").replace("...", " "))[1:]
             if not w.startswith("[") and not w.endswith("]")]
    parser, named = command_parser(words)
    options = {s for action in parser._actions for s in action.option_strings}
    for word in words[len(named):]:
        flag = word.split("=")[0]
        if flag.startswith("--"):
            assert flag in options, f"{page}: `{span}`: alignx {' '.join(named)} has no flag {flag}"
        match = OVERRIDE.match(word)
        if match and named and named[0] in CONFIG_COMMANDS:
            assert config_key_exists(match.group(1)), f"{page}: `{span}`: no config key {match.group(1)!r}"


def config_yaml_blocks():
    found = []
    top = {f.name for f in dataclasses.fields(config_lib.TrainConfig)}
    for page in PAGES:
        for language, body in code_blocks(page.read_text()):
            if language not in ("yaml", "yml"):
                continue
            tree = yaml.safe_load(body)
            if isinstance(tree, dict) and set(tree) & top:
                found.append((page.name, tree))
    return found


def test_pages_hold_config_blocks():
    assert len(config_yaml_blocks()) >= 4


@pytest.mark.parametrize("page,tree", config_yaml_blocks(), ids=lambda v: v if isinstance(v, str) else None)
def test_every_key_of_a_config_block_exists(page, tree):
    missing = [key for key in yaml_keys(tree) if not config_key_exists(key)]
    assert not missing, f"{page}: config keys that do not exist: {missing}"


def test_every_dotted_key_in_prose_exists():
    """`lora.layers: K`, `optimizer.lr=1e-4`: a dotted name with a value is a config key."""
    bad = []
    for page in PAGES:
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
        for key in re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)(?::\s|=)[^`]*`", text):
            if not config_key_exists(key):
                bad.append(f"{page.name}: {key}")
    assert not bad


def test_the_config_reference_has_a_meaning_for_every_key():
    ext = _ext_module()
    _, keys, meanings = ext.config_keys()
    assert len(keys) > 80
    assert [k.name for k in keys if not k.meaning] == []
    assert ext.stale_meanings(keys, meanings) == []


def test_the_cli_reference_lists_every_command():
    ext = _ext_module()
    listed = {" ".join(words) for words, _, _ in ext.all_commands()}
    assert {"alignx compile", "alignx data synth", "alignx convert jax-to-hf", "alignx train"} <= listed


def test_no_page_speaks_of_the_work_process():
    paths = [*PAGES, *(REPO / "configs").glob("*"), *(REPO / "tools").glob("*.py")]
    hits = [f"{p.relative_to(REPO)}: {w!r}" for p in paths for w in WORK_PROCESS_WORDS
            if w in p.read_text().lower()]
    assert not hits


def test_the_notebook_is_linked():
    assert "notebooks/quickstart.ipynb" in (REPO / "README.md").read_text()
    assert "notebooks/quickstart.ipynb" in (REPO / "docs" / "quickstart.md").read_text()


def test_the_custom_loss_example_runs():
    import jax.numpy as jnp

    from alignx_jax import losses

    (example,) = [body for language, body in code_blocks((REPO / "docs" / "losses.md").read_text())
                  if language == "python" and "@losses.register" in body]
    namespace = {}
    exec(compile(example.replace('"margin_hinge"', '"margin_hinge_docs_test"', 1), "losses.md", "exec"), namespace)
    fn = losses.resolve("margin_hinge_docs_test", {"margin": 0.5})
    per_example, metrics = fn(jnp.array([-12.0]), jnp.array([-15.0]), jnp.array([-13.0]), jnp.array([-14.0]),
                              beta=0.1, margin=0.5)
    # delta = (-12 + 13) - (-15 + 14) = 2; max(0, 0.5 - 0.1 * 2) = 0.3
    assert float(per_example[0]) == pytest.approx(0.3)
    assert float(metrics["rewards/accuracies"][0]) == 1.0
