"""The analysis stage must run on CPU-only boxes without torch installed.

Two views of one promise (issue 13, "Checks"):

- with torch installed, importing the CPU-only packages, every submodule of them and the
  CLI's parser does not load torch (a lazy import that slipped to module level shows);
- with torch *uninstalled* (a path finder that does not find torch, torchvision or
  transformers, which is what a box without the ``extract`` extra sees: ``import torch``
  raises ``ModuleNotFoundError``, ``importlib.util.find_spec`` returns None),
  ``import analyze, storage_schema, probestore, probestore.cli`` works, every
  subcommand's ``--help`` works, and a store command runs (that no submodule imports
  torch is the first check's walk and tests/test_architecture.py's static one).

tests/test_architecture.py checks the same statically (import chains read from source,
and no torch import at all, not even inside a function, in these packages).
"""

import json
import os
import subprocess
import sys
import textwrap

MODULES = ("analyze", "storage_schema", "storage_schema.store", "probestore", "probestore.cli")

WALK = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    def import_all(name):
        module = importlib.import_module(name)
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), name + "."):
            info.name.endswith("__main__") or importlib.import_module(info.name)
    """
)

# A sitecustomize that makes the heavy packages look uninstalled. (``sys.modules["torch"] =
# None`` is not the same: libraries that probe ``sys.modules`` for torch, such as scipy's
# array-API helpers, then fail in ways a box without torch never sees.)
UNINSTALL = textwrap.dedent(
    """
    import importlib.machinery
    import sys

    HIDDEN = ("torch", "torchvision", "transformers")


    class _PathFinderWithoutHidden:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name.split(".")[0] in HIDDEN:
                return None
            return importlib.machinery.PathFinder.find_spec(name, path, target)

        @staticmethod
        def invalidate_caches():
            importlib.machinery.PathFinder.invalidate_caches()


    sys.meta_path[:] = [_PathFinderWithoutHidden if f is importlib.machinery.PathFinder else f
                        for f in sys.meta_path]
    """
)


def test_import_does_not_pull_in_torch():
    """One process imports each module (and its submodules) in turn, then builds the CLI's help."""
    code = WALK + textwrap.dedent(
        """
        for name in sys.argv[1:]:
            import_all(name)
            print(name, "torch" in sys.modules)
        from probestore.cli import build_parser
        build_parser().format_help()
        print("probestore-help", "torch" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code, *MODULES], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    seen = dict(line.split() for line in out.stdout.splitlines())
    assert list(seen) == [*MODULES, "probestore-help"], out.stdout
    first = next((name for name, loaded in seen.items() if loaded == "True"), None)
    assert first is None, f"importing {first} (and its submodules) imported torch"


def test_imports_help_and_a_store_command_work_with_torch_uninstalled(tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(UNINSTALL)
    code = textwrap.dedent(
        """
        import argparse
        import contextlib
        import io
        import json
        import sys

        import numpy as np

        try:
            import torch  # noqa: F401
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit("the shim did not hide torch")
        import analyze, storage_schema, probestore, probestore.cli  # noqa: E401
        from probestore.cli import build_parser, main
        from storage_schema.store import create_store

        parser = build_parser()
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        helped = {}
        for command in commands:
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    main([command, "--help"])
                except SystemExit as exc:
                    helped[command] = exc.code
        create_store("s.zarr", dataset_name="toy", sample_ids=["a", "b", "c"], labels=np.array([0, 1, 0]),
                     splits=np.array([0, 1, 2], dtype=np.int8), class_names=["x", "y"]).close()
        with contextlib.redirect_stdout(io.StringIO()):
            rc = main(["inspect", "s.zarr"])
        loaded = [m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "transformers")]
        print(json.dumps({"help": helped, "inspect": rc, "loaded": loaded}))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env=env)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    assert {"inspect", "validate", "layers", "train", "extract", "analyze", "report", "tcav"} <= set(got["help"])
    assert set(got["help"].values()) == {0}, got["help"]  # every subcommand's --help printed and exited 0
    assert got["inspect"] == 0 and got["loaded"] == [], got
