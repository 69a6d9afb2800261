"""Reference pages generated from the code, so they cannot drift from it.

Directives:

- ``alignx-config-keys``: every key of `alignx_jax.train.config.TrainConfig`, found by walking the
  public config dataclasses (`dataclasses.fields`, `typing.get_type_hints`), with its type, its
  default and its meaning. The meaning is the field's own comment in the source (a trailing
  ``# ...`` or the comment lines right above it), else its entry in `config_meanings.MEANINGS`. A key
  with neither, or a table entry for a key that does not exist, is a build warning (an error under
  ``-W``): the table follows the dataclasses wherever they live.
- ``alignx-cli``: every `alignx` subcommand and flag, read from `alignx_jax.cli.build_parser()`.

And one safety net: a docstring that is not valid reStructuredText is shown as a literal block
instead of failing the ``-W`` build (docstrings are written for `help()`, not for Sphinx).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
import types
import typing
from typing import Literal

from docutils import nodes
from docutils.core import publish_doctree
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

LOG = logging.getLogger(__name__)
_PROCESS_WORDS = re.compile(r"\s*\(issue \d+\)")  # a config comment's pointer to the tracker, which readers cannot see


# ---- text helpers ---------------------------------------------------------------------------------

def inline(text: str) -> list[nodes.Node]:
    """Text with `backtick` spans as literals: plain docutils nodes, so no markup can misfire."""
    parts = re.split(r"`([^`]+)`", text)
    return [nodes.literal(p, p) if i % 2 else nodes.Text(p) for i, p in enumerate(parts) if p]


def paragraphs(text: str) -> list[nodes.Node]:
    text = _PROCESS_WORDS.sub("", inspect.cleandoc(text or ""))
    return [nodes.paragraph("", "", *inline(" ".join(block.split())))
            for block in re.split(r"\n\s*\n", text) if block.strip()]


def table(header: list[str], rows: list[list[list[nodes.Node]]], widths: list[int]) -> nodes.table:
    tgroup = nodes.tgroup(cols=len(header))
    for width in widths:
        tgroup += nodes.colspec(colwidth=width)
    head = nodes.thead()
    head += nodes.row("", *[nodes.entry("", nodes.paragraph("", h)) for h in header])
    body = nodes.tbody()
    for cells in rows:
        body += nodes.row("", *[nodes.entry("", nodes.paragraph("", "", *cell)) for cell in cells])
    tgroup += head
    tgroup += body
    result = nodes.table("", tgroup)
    result["classes"].append("longtable")
    return result


def section(title: str, anchor: str, document) -> nodes.section:
    node = nodes.section(ids=[nodes.make_id(anchor)], names=[nodes.fully_normalize_name(anchor)])
    node += nodes.title(title, "", nodes.literal(title, title))
    document.note_implicit_target(node, node)
    return node


# ---- config keys ------------------------------------------------------------------------------------

def field_comments(cls) -> dict[str, str]:
    """{field: its comment}: the trailing `# ...` on the field's line(s), else the comment lines above it."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    trailing, own_line = {}, {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row = token.start[0]
            text = token.string.lstrip("#").strip()
            if lines[row - 1].strip().startswith("#"):
                own_line[row] = text
            else:
                trailing[row] = text
    comments = {}
    body = ast.parse(source).body[0].body
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        found = [trailing[r] for r in range(node.lineno, node.end_lineno + 1) if r in trailing]
        if not found:
            row, above = node.lineno - 1, []
            while row in own_line:
                above.insert(0, own_line[row])
                row -= 1
            found = above
        if found:
            comments[node.target.id] = " ".join(found)
    return comments


def type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        named = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(named) + (" or null" if type(None) in args else "")
    if origin in (tuple, list):
        return f"list of {type_name(typing.get_args(tp)[0])}"
    if tp is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def yaml_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def default_of(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def section_class(tp):
    """The dataclass a field holds (also through `X | None` and `tuple[X, ...]`), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


@dataclasses.dataclass
class Key:
    name: str  # dotted
    type: str
    default: str
    meaning: str
    owner: type


def walk(cls, prefix: str = "") -> tuple[list[tuple[str, type]], list[Key]]:
    """(sections as (dotted prefix, class)), keys) of a config dataclass, depth first."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    sections, keys = [(prefix, cls)], []
    for field in dataclasses.fields(cls):
        tp = hints[field.name]
        dotted = f"{prefix}.{field.name}" if prefix else field.name
        inner = section_class(tp)
        if inner is not None:
            list_of = typing.get_origin(tp) in (tuple, list)
            sub_sections, sub_keys = walk(inner, dotted + ("[]" if list_of else ""))
            sections += sub_sections
            keys += sub_keys
            continue
        default = default_of(field)
        keys.append(Key(dotted, type_name(tp), "required" if default is dataclasses.MISSING else yaml_value(default),
                        comments.get(field.name, ""), cls))
    return sections, keys


def config_keys():
    from alignx_jax.train import config as config_module
    from config_meanings import MEANINGS

    sections, keys = walk(config_module.TrainConfig)
    for key in keys:
        own = f"{key.owner.__name__}.{key.name.rpartition('.')[2]}"
        key.meaning = _PROCESS_WORDS.sub("", MEANINGS.get(own, key.meaning)).strip()
    return sections, keys, MEANINGS


def stale_meanings(keys, meanings) -> list[str]:
    """Entries of the meanings table that name no field of a config dataclass."""
    fields = {f"{k.owner.__name__}.{k.name.rpartition('.')[2]}" for k in keys}
    return sorted(set(meanings) - fields)


class ConfigKeys(SphinxDirective):
    """Every config key, one table per section."""

    def run(self):
        sections, keys, meanings = config_keys()
        for stale in stale_meanings(keys, meanings):
            LOG.warning(f"docs/_ext/config_meanings.py names {stale!r}, which is no config key",
                        location=self.get_location())
        out = []
        for prefix, cls in sections:
            rows = [[inline(f"`{k.name}`"), inline(f"`{k.type}`"), inline(f"`{k.default}`"), inline(k.meaning)]
                    for k in keys if k.name.rpartition(".")[0] == prefix]
            for k in keys:
                if k.name.rpartition(".")[0] == prefix and not k.meaning:
                    LOG.warning(f"config key {k.name!r} has no meaning: add a comment beside the field in "
                                f"{k.owner.__module__}.{k.owner.__name__} or an entry in docs/_ext/config_meanings.py",
                                location=self.get_location())
            if not rows:
                continue
            title = prefix or "top level"
            node = section(title, f"config-{prefix or 'top'}", self.state.document)
            node += paragraphs(f"`{cls.__name__}`" + (": " + cls.__doc__ if cls.__doc__ and not
                                                      cls.__doc__.startswith(cls.__name__ + "(") else ""))
            node += table(["key", "type", "default", "meaning"], rows, [22, 18, 14, 46])
            out.append(node)
        return out


# ---- the CLI ------------------------------------------------------------------------------------------

def subcommands(parser: argparse.ArgumentParser):
    for action in parser._actions:  # argparse keeps no public list of its subparsers
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, sub, helps.get(name)


def all_commands(parser=None, prefix=("alignx",)):
    """[(words, parser, help)] for every command and nested subcommand."""
    if parser is None:
        from alignx_jax.cli import build_parser
        parser = build_parser()
    found = [(prefix, parser, parser.description)]
    for name, sub, help_text in subcommands(parser):
        found += [(w, p, h if w != prefix + (name,) else (help_text or p.description))
                  for w, p, h in all_commands(sub, prefix + (name,))]
    return found


def expand_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    return parser._get_formatter()._expand_help(action) if action.help else ""


class Cli(SphinxDirective):
    """Every command: its usage line, then one row per argument."""

    def run(self):
        out = []
        for words, parser, help_text in all_commands():
            command = " ".join(words)
            node = section(command, "cli-" + "-".join(words[1:] or ["alignx"]), self.state.document)
            if help_text:
                node += paragraphs(help_text)
            usage = parser.format_usage().strip().removeprefix("usage: ")
            node += nodes.literal_block(usage, usage)
            rows = []
            for action in parser._actions:
                if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                    continue
                flags = ", ".join(action.option_strings) or action.metavar or action.dest
                if action.choices and not action.option_strings:
                    flags = f"{action.dest} ({' | '.join(map(str, action.choices))})"
                default = "" if action.default in (None, argparse.SUPPRESS, False) or action.required \
                    else yaml_value(action.default)
                listed = action.choices and action.option_strings
                choices = f" One of: {', '.join(map(str, action.choices))}." if listed else ""
                rows.append([inline(f"`{flags}`"), inline(f"`{default}`" if default else ""),
                             inline(expand_help(parser, action) + choices)])
            if rows:
                node += table(["argument", "default", "meaning"], rows, [28, 14, 58])
            out.append(node)
        return out


# ---- docstrings that are not reStructuredText --------------------------------------------------------

def literal_if_not_rst(app, what, name, obj, options, lines):
    text = "\n".join(lines)
    if not text.strip():
        return
    text = _PROCESS_WORDS.sub("", text)
    stream = io.StringIO()
    settings = {"report_level": 5, "halt_level": 5, "warning_stream": stream, "file_insertion_enabled": False,
                "raw_enabled": False, "env": app.env}  # Sphinx's roles and directives read the env
    try:
        tree = publish_doctree(text, settings_overrides=settings)
    except Exception:  # noqa: BLE001 - anything the trial parse cannot take is shown as written
        tree = None
    broken = tree is None or any(m["level"] >= 2 for m in tree.findall(nodes.system_message))
    new = ["::", ""] + ["    " + line for line in text.splitlines()] if broken else text.splitlines()
    lines[:] = new + [""]


def setup(app):
    app.add_directive("alignx-config-keys", ConfigKeys)
    app.add_directive("alignx-cli", Cli)
    app.connect("autodoc-process-docstring", literal_if_not_rst, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
