"""Every option of every subcommand says what it does and what happens when it is not given.

Walks the real argparse tree of ``probestore`` (no subprocess: the parser is built
in-process), so a new option without help, or without its default, fails here with
its command and flag named. Also: every help page renders, the top-level help points
at docs/configuration.md, and every file a help text cites exists.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from probestore.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
#: How a help text states a default: "default ...", "off by default", "required".
_STATES_DEFAULT = re.compile(r"default|required", re.IGNORECASE)


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _options() -> list[tuple[str, argparse.Action]]:
    out = []
    for name, parser in _subcommands().items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            out.append((name, action))
    return out


def _label(item) -> str:
    if isinstance(item, str):
        return item
    return "/".join(item.option_strings) or item.dest


def _help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help as ``--help`` prints it (``%(default)s`` expanded)."""
    formatter = parser._get_formatter()
    return formatter._expand_help(action) if action.help else ""


def test_there_are_subcommands_and_options():
    names = set(_subcommands())
    assert {"layers", "train", "extract", "analyze", "similarity", "report", "tcav", "inspect", "validate"} <= names
    assert len(_options()) > 60


@pytest.mark.parametrize("command, action", _options(), ids=_label)
def test_every_option_has_help_that_states_its_default(command, action):
    parser = _subcommands()[command]
    text = _help_text(parser, action)
    flag = _label(action)
    assert action.help and action.help != argparse.SUPPRESS, f"probestore {command} {flag}: no help text"
    if action.required:
        return  # a required option or positional: nothing to default (usage shows it without brackets)
    assert _STATES_DEFAULT.search(text), (
        f"probestore {command} {flag}: the help does not say its default ({text!r}); add '(default: ...)', "
        "'%(default)s', or for a flag 'off by default'")
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        assert re.search(r"off by default|default: (on|off|ask)|\(default: on", text), (
            f"probestore {command} {flag}: a flag says whether it is on by default ({text!r})")


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_help_page_renders(command):
    text = _subcommands()[command].format_help()
    assert "usage: probestore" in text


def test_top_level_help_points_at_the_configuration_reference():
    parser = build_parser()
    text = parser.format_help()
    assert "docs/configuration.md" in text
    for command in ("layers", "train", "extract"):
        assert "docs/configuration.md" in _subcommands()[command].format_help(), command
    assert (REPO / "docs" / "configuration.md").exists()


def _cited_files(text: str) -> list[str]:
    return re.findall(r"(?<![\w/.-])((?:experiments|docs|storage_schema)/[\w./-]+\.(?:toml|md|py))", text)


def test_every_file_a_help_text_cites_exists():
    texts = [build_parser().format_help()] + [p.format_help() for p in _subcommands().values()]
    cited = sorted({path for text in texts for path in _cited_files(text)})
    assert cited, "expected the help to cite example files"
    missing = [path for path in cited if not (REPO / path).exists()]
    assert not missing, f"help texts cite files that do not exist: {missing}"


def test_the_file_check_catches_a_missing_file():
    """The check above cannot pass vacuously: a made-up path is found and reported missing."""
    assert _cited_files("e.g. probestore extract experiments/mnist_mlp.toml") == ["experiments/mnist_mlp.toml"]
    assert not (REPO / "experiments" / "mnist_mlp.toml").exists()
