"""The README's short commands run as written.

Blocks marked `<!-- test: runs -->` run line by line and must exit 0; blocks that show a session
(`$ command`, then its output) must print that output. They run in a scratch folder that holds
`configs/` and, when present, `../shared` beside it, as a checkout would.
"""
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BIN = pathlib.Path(sys.executable).parent
MARK = "<!-- test: runs -->"


def blocks():
    """(kind, lines) of the README's runnable blocks: 'runs' (marked) or 'session' ($ lines)."""
    found, body, before, previous = [], None, "", ""
    for line in README.splitlines():
        if body is None and line.startswith("```"):
            body, before = [], previous
        elif body is not None and line.startswith("```"):
            if before.strip() == MARK:
                found.append(("runs", body))
            elif body and body[0].startswith("$ "):
                found.append(("session", body))
            body = None
        elif body is not None:
            body.append(line)
        previous = line
    return found


def command(line: str) -> list[str]:
    line = re.split(r"\s{2,}#", line)[0].strip()  # drop a trailing comment
    return shlex.split(line)


@pytest.fixture()
def checkout(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "configs").symlink_to(REPO / "configs")
    (work / "notes.txt").write_text("a file, not a model\n")
    shared = REPO.parent / "shared"
    if shared.is_dir():
        (tmp_path / "shared").symlink_to(shared)
    return work


def run(args, cwd):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    env.pop("ALIGNX_DEBUG", None)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_readme_marks_runnable_blocks():
    kinds = [kind for kind, _ in blocks()]
    assert kinds.count("runs") >= 1 and kinds.count("session") >= 2


@pytest.mark.parametrize("index", range(len(blocks())))
def test_readme_block_runs_as_written(index, checkout):
    kind, lines = blocks()[index]
    if kind == "runs":
        for line in lines:
            args = command(line)
            if any("../shared" in a for a in args) and not (checkout.parent / "shared").exists():
                continue  # a fresh clone has no ../shared
            done = run(args, checkout)
            assert done.returncode == 0, f"{line}\n{done.stderr[-2000:]}"
    else:
        args, expected = command(lines[0][2:]), [line for line in lines[1:] if line.strip()]
        done = run(args, checkout)
        printed = (done.stdout + done.stderr).strip().splitlines()
        assert printed[: len(expected)] == expected, f"{lines[0]}\nprinted: {printed}"
