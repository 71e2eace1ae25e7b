"""The analysis stage must run on CPU-only boxes without torch installed."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["analyze", "storage_schema", "storage_schema.store", "storage_schema.cli"])
def test_import_does_not_pull_in_torch(module):
    code = (
        f"import sys, {module}\n"
        "import importlib, pkgutil\n"
        f"pkg = sys.modules['{module}']\n"
        "for info in pkgutil.walk_packages(getattr(pkg, '__path__', []), pkg.__name__ + '.'):\n"
        "    info.name.endswith('__main__') or importlib.import_module(info.name)\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False", f"importing {module} (and its submodules) imported torch"


def test_cli_help_does_not_need_torch():
    code = (
        "import sys\n"
        "from storage_schema.cli import build_parser\n"
        "build_parser().format_help()\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
