"""Every example in README.md and docs/*.md runs (or, for a fragment, at least parses).

The fenced code blocks are read out of the Markdown:

- ``toml``: a block with an ``[experiment]`` table is a whole experiment file and is
  parsed by the experiment parser (from a file in a temporary folder, so its relative
  paths resolve there); a block marked ``toml fragment`` is parsed as TOML.
- ``sh``: every ``probestore ...`` command is parsed by the CLI's own argparse (no
  ``--help``, nothing run), and every repository file it names must exist; every
  ``make TARGET`` must be a target of the Makefile.
- ``python``: a self-contained block is executed in a temporary folder; a block marked
  ``python fragment`` (it uses names defined elsewhere) is compiled, and its imports of
  probestore's own packages are executed (a renamed API fails here).

Blocks without a language (diagrams, message formats) are not code. SCHEMA.md has its
own recipe test.
"""

from __future__ import annotations

import ast
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from probestore.cli import build_parser
from probestore.experiment import load_config
from probestore.experiment.keys import all_tables

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PROJECT_PACKAGES = ("probestore", "storage_schema", "extract", "analyze")
#: Top-level folders of the repository whose files a command may cite (outputs such as
#: demo-output/ do not exist before the command runs).
SOURCE_DIRS = ("experiments", "docs", "storage_schema", "tests", "benchmarks")
_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int
    info: str
    code: str

    @property
    def language(self) -> str:
        return self.info.split()[0] if self.info.split() else ""

    @property
    def fragment(self) -> bool:
        return "fragment" in self.info.split()[1:]

    def __str__(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line} ({self.info or 'no language'})"


def _blocks() -> list[Block]:
    out = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in _FENCE.finditer(text):
            out.append(Block(doc, text.count("\n", 0, m.start()) + 1, m.group(1).strip(), m.group(2)))
    return out


def _of(language: str) -> list[Block]:
    return [b for b in _blocks() if b.language == language]


def test_the_docs_have_examples_of_every_kind():
    kinds = {b.language for b in _blocks()}
    assert {"sh", "toml", "python"} <= kinds, kinds
    assert any(b.doc.name == "configuration.md" and b.language == "toml" for b in _blocks())


# --------------------------------------------------------------------------- TOML


@pytest.mark.parametrize("block", _of("toml"), ids=str)
def test_toml_examples_parse(block, tmp_path):
    data = tomllib.loads(block.code)
    if block.fragment:
        _check_fragment_keys(block, data)
        return
    assert "experiment" in data, f"{block}: a whole experiment file, or mark it ```toml fragment"
    path = tmp_path / "exp.toml"
    path.write_text(block.code, encoding="utf-8")
    config = load_config(path)
    assert tmp_path in config.store.parents  # relative to the file's folder


def _check_fragment_keys(block: Block, data: dict) -> None:
    """A fragment uses only keys the parser knows (the registry of each table it shows)."""
    tables = {t.header.strip("[]"): t for t in all_tables()}
    for name, body in data.items():
        if name not in tables:
            continue
        for entry in body if isinstance(body, list) else [body]:
            unknown = set(entry) - set(tables[name])
            assert not unknown, f"{block}: [{name}] keys the parser refuses: {sorted(unknown)}"


# --------------------------------------------------------------------------- shell


def _commands(code: str) -> list[list[str]]:
    """Each simple command of a shell block, as argv (comments, ``&``, ``&&``, ``;`` split off)."""
    joined = re.sub(r"\\\n", " ", code)
    out = []
    for line in joined.splitlines():
        for part in re.split(r"\s&&\s|\s&\s|;\s|\s&$", line):
            argv = shlex.split(part, comments=True)
            if argv:
                out.append(argv)
    return out


def _make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, re.MULTILINE))


def _cited(argv: list[str]) -> list[str]:
    return [a for a in argv if a.split("/")[0] in SOURCE_DIRS and "/" in a and "*" not in a]


@pytest.mark.parametrize("block", _of("sh"), ids=str)
def test_shell_examples_parse_and_cite_existing_files(block, capsys):
    commands = _commands(block.code)
    assert commands, block
    parser = build_parser()
    for argv in commands:
        if argv[0] == "probestore":
            try:
                args = parser.parse_args(argv[1:])
            except SystemExit as exc:  # argparse's refusal: the message is on stderr
                pytest.fail(f"{block}: `{shlex.join(argv)}` does not parse: {capsys.readouterr().err.strip()}"
                            f" (exit {exc.code})")
            assert getattr(args, "func", None), f"{block}: `{shlex.join(argv)}` names no command"
        elif argv[0] == "make":
            assert set(argv[1:]) <= _make_targets(), f"{block}: `{shlex.join(argv)}`: no such Makefile target"
        for path in _cited(argv):
            assert (REPO / path).exists(), f"{block}: `{shlex.join(argv)}` cites {path}, which does not exist"


def test_the_command_checks_can_fail():
    """The checks above refuse a made-up option and see a cited file."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["extract", "x.toml", "--no-such-option"])
    assert _cited(["probestore", "train", "experiments/mnist_mlp.toml"]) == ["experiments/mnist_mlp.toml"]
    assert _commands("probestore a b &  probestore c   # d\nmake x \\\n  y") == [
        ["probestore", "a", "b"], ["probestore", "c"], ["make", "x", "y"]]


# --------------------------------------------------------------------------- Python


@pytest.mark.parametrize("block", [b for b in _of("python") if not b.fragment], ids=str)
def test_self_contained_python_examples_run(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = compile(block.code, str(block), "exec")
    exec(code, {"__name__": "__doc_example__"})  # noqa: S102 - the project's own documentation


def _project_imports(tree: ast.Module) -> list[ast.stmt]:
    out: list[ast.stmt] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PROJECT_PACKAGES:
            out.append(node)
        elif isinstance(node, ast.Import) and any(a.name.split(".")[0] in PROJECT_PACKAGES for a in node.names):
            out.append(node)
    return out


@pytest.mark.parametrize("block", [b for b in _of("python") if b.fragment], ids=str)
def test_python_fragments_compile_and_their_imports_exist(block):
    tree = ast.parse(block.code, filename=str(block))
    imports = _project_imports(tree)
    if imports:
        exec(compile(ast.Module(body=imports, type_ignores=[]), str(block), "exec"), {})  # noqa: S102
