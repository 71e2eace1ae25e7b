"""The import rules of the architecture (docs/architecture.md), checked on every module's source.

The packages are layered; a module may import its own layer and the layers below it,
never a layer above (so no cycle can form between packages):

    4  probestore.cli, probestore.__main__        the command line: imports the stages
    3  extract | analyze                          the stages: never each other
    2  probestore.experiment                      the experiment-file parser
    1  storage_schema                             the on-disk contract
    0  probestore (errors, fields, paths,         the neutral base: imports nothing
       atomic, locking, selectors, progress)      of the project but itself

Besides the layers: only the CLI imports the stages' ``commands`` modules (they
register subcommands; nothing else should depend on them), and the packages a CPU-only
analysis box runs (``analyze``, ``storage_schema``, ``probestore``) never import torch,
torchvision or transformers, not even through another module at import time.

Imports are read with :mod:`ast` (the modules are not imported), including imports
inside functions: a lazy import still couples two packages. ``if TYPE_CHECKING:``
blocks are skipped (they never run).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("probestore", "storage_schema", "extract", "analyze")
BASE = ("probestore", "probestore.errors", "probestore.fields", "probestore.paths", "probestore.atomic",
        "probestore.locking", "probestore.selectors", "probestore.progress")
CLI = ("probestore.cli", "probestore.__main__")
COMMANDS = ("storage_schema.commands", "extract.commands", "analyze.commands", "analyze.tcav_commands")
HEAVY = ("torch", "torchvision", "transformers")
# ``python -m storage_schema`` is a deprecated forwarder to the CLI for one release: it
# runs the command line, so it sits on top with the CLI although its file is in the contract.
FORWARDERS = ("storage_schema.__main__",)


@dataclass(frozen=True)
class Import:
    """One imported module, where it is imported, and whether that runs at import time."""

    module: str  # importer
    target: str  # imported module (absolute dotted name)
    line: int
    at_import_time: bool  # False when inside a function body

    def __str__(self) -> str:
        where = "" if self.at_import_time else " (inside a function)"
        return f"{module_file(self.module)}:{self.line}: {self.module} imports {self.target}{where}"


@cache
def project_modules() -> dict[str, Path]:
    """Every module of the four packages, by dotted name."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def module_file(name: str) -> str:
    return project_modules()[name].relative_to(REPO).as_posix()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute package a ``from ... import`` reads from (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    is_package = project_modules()[module].name == "__init__.py"
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    source = _resolve(module, node)
    names = [source]
    for alias in node.names:  # ``from pkg import sub`` imports the submodule pkg.sub
        if f"{source}.{alias.name}" in project_modules():
            names.append(f"{source}.{alias.name}")
    return names


@cache
def imports_of(module: str) -> tuple[Import, ...]:
    """Every import statement of one module, with whether it runs when the module is imported."""
    tree = ast.parse(project_modules()[module].read_text(), filename=module_file(module))
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for other in node.orelse:  # only the else branch runs
                visit(other, in_function)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.extend(Import(module, t, node.lineno, not in_function) for t in _targets(module, node))
        inside = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(tree, False)
    return tuple(found)


def _under(name: str, prefixes: tuple[str, ...] | str) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def layer(name: str) -> int | None:
    """The layer of a project module (None for anything outside the project)."""
    if _under(name, CLI) or _under(name, FORWARDERS):
        return 4
    if _under(name, ("extract", "analyze")):
        return 3
    if _under(name, "probestore.experiment"):
        return 2
    if _under(name, "storage_schema"):
        return 1
    if name in BASE:
        return 0
    return None  # outside the project, or a new probestore module not yet placed in a layer


def all_imports() -> list[Import]:
    return [imp for module in project_modules() for imp in imports_of(module)]


def project_imports() -> list[Import]:
    return [imp for imp in all_imports() if _under(imp.target, PACKAGES)]


# --------------------------------------------------------------------------- the checker itself


def test_the_checker_sees_every_package_and_the_imports_it_must():
    """Guard against a checker that passes because it reads nothing."""
    modules = project_modules()
    for name in ("probestore.errors", "probestore.cli", "storage_schema.store", "extract.runner", "analyze.engine",
                 *COMMANDS):
        assert name in modules, name
    targets = {(imp.module, imp.target) for imp in imports_of("probestore.cli")}
    assert {("probestore.cli", c) for c in COMMANDS} <= targets
    # relative imports resolve to absolute modules, in a package and in a package's module
    assert {imp.target for imp in imports_of("extract.concepts")} >= {"extract.concepts.compute",
                                                                        "extract.concepts.presets"}
    assert {imp.target for imp in imports_of("extract.concepts.presets")} >= {"extract.concepts",
                                                                                "extract.concepts.colour"}
    # a lazy import is seen, and marked as such
    lazy = [imp for imp in imports_of("extract.commands") if not imp.at_import_time]
    assert lazy and all(imp.module == "extract.commands" for imp in lazy)


def test_every_probestore_module_has_a_layer():
    """A new module of probestore/ must be placed in the layers (here and in docs/architecture.md)."""
    unplaced = [name for name in project_modules() if _under(name, "probestore") and layer(name) is None]
    assert not unplaced, f"modules of probestore/ in no layer (add them to BASE, CLI or a new layer): {unplaced}"


def test_the_base_exists():
    present = [name for name in BASE if name in project_modules()]
    assert {"probestore", "probestore.errors", "probestore.fields", "probestore.locking"} <= set(present), present


# --------------------------------------------------------------------------- the rules


def test_no_module_imports_a_layer_above_its_own():
    wrong = []
    for imp in project_imports():
        own, other = layer(imp.module), layer(imp.target)
        if own is None or other is None:
            continue  # reported by test_every_probestore_module_has_a_layer
        if other > own:
            wrong.append(f"{imp} (layer {own} imports layer {other})")
    assert not wrong, "imports that point up the layers (see docs/architecture.md):\n" + "\n".join(wrong)


def test_base_modules_import_only_the_base():
    wrong = [str(imp) for imp in project_imports() if imp.module in BASE and imp.target not in BASE]
    assert not wrong, "the base (probestore errors, fields, paths, atomic, locking, selectors) imports only "\
                      "itself:\n" + "\n".join(wrong)


def test_the_contract_imports_only_itself_and_the_base():
    wrong = [str(imp) for imp in project_imports()
             if _under(imp.module, "storage_schema") and not _under(imp.module, FORWARDERS)
             and not (_under(imp.target, "storage_schema") or imp.target in BASE)]
    assert not wrong, "storage_schema imports only storage_schema and the probestore base:\n" + "\n".join(wrong)


@pytest.mark.parametrize(("stage", "other"), [("extract", "analyze"), ("analyze", "extract")])
def test_the_stages_never_import_each_other(stage, other):
    wrong = [str(imp) for imp in project_imports() if _under(imp.module, stage) and _under(imp.target, other)]
    assert not wrong, f"{stage} must not import {other} (they meet only through the store):\n" + "\n".join(wrong)


def test_only_the_cli_imports_the_commands_modules():
    wrong = [str(imp) for imp in project_imports()
             if _under(imp.target, COMMANDS) and not _under(imp.module, CLI) and imp.target != imp.module]
    assert not wrong, "only probestore.cli imports the stages' commands modules:\n" + "\n".join(wrong)


def test_cpu_only_packages_never_import_torch():
    """analyze, storage_schema and probestore: no torch, not even inside a function."""
    wrong = [str(imp) for imp in all_imports()
             if _under(imp.module, ("analyze", "storage_schema", "probestore")) and _under(imp.target, HEAVY)]
    assert not wrong, "these packages must run without torch installed:\n" + "\n".join(wrong)


def _chain_to_heavy(start: str) -> list[str] | None:
    """The chain of import-time imports from ``start`` to torch & co., if there is one."""
    seen = {start}
    queue: list[list[str]] = [[start]]
    while queue:
        chain = queue.pop(0)
        for imp in imports_of(chain[-1]):
            if not imp.at_import_time:
                continue
            if _under(imp.target, HEAVY):
                return [*chain, imp.target]
            parts = imp.target.split(".")  # importing a.b.c runs a, a.b and a.b.c
            for k in range(1, len(parts) + 1):
                name = ".".join(parts[:k])
                if name in project_modules() and name not in seen:
                    seen.add(name)
                    queue.append([*chain, name])
    return None


def test_the_cli_and_the_cpu_only_packages_reach_no_torch_at_import_time():
    """Importing the CLI (it imports every stage's commands) or any CPU-only module never loads torch."""
    starts = [name for name in project_modules()
              if _under(name, ("analyze", "storage_schema", "probestore", *COMMANDS))]
    chains = {name: chain for name in starts if (chain := _chain_to_heavy(name))}
    assert not chains, "imports that load torch at import time:\n" + "\n".join(
        " -> ".join(chain) for chain in chains.values())


def test_the_torch_chain_finder_finds_a_real_chain():
    """The chain finder is not vacuous: the extraction loop does import torch at import time."""
    chain = _chain_to_heavy("extract.runner")
    assert chain is not None and chain[0] == "extract.runner" and _under(chain[-1], HEAVY), chain
