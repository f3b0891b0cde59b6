"""The import contract (tools/check_imports.py) that ``make lint`` enforces."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "tools" / "check_imports.py"


def run_check(src: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), str(src)], capture_output=True, text=True, timeout=60)


def test_the_package_keeps_its_layers_and_has_no_cycle():
    res = run_check(ROOT / "src")
    assert res.returncode == 0, res.stdout
    assert res.stdout.splitlines()[-1].startswith("import contract: 0 breach(es)")


def test_a_function_local_cycle_fails_the_check(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "gaheads", src / "gaheads", ignore=shutil.ignore_patterns("__pycache__"))
    heads = src / "gaheads" / "heads" / "common.py"
    # a lower layer reaching up from inside a function: the kind of import that hid cycles before
    heads.write_text(heads.read_text() + "\n\ndef _late():\n    from ..models.base import MultiBranchModel\n"
                     "    return MultiBranchModel\n")
    res = run_check(src)
    assert res.returncode == 1
    lines = res.stdout.splitlines()
    assert "gaheads.heads.common (heads) imports gaheads.models.base (models), a higher layer" in lines
    assert any(line.startswith("import cycle: ") and "gaheads.heads.common" in line for line in lines)


def test_a_new_module_must_be_placed_in_a_layer(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "gaheads", src / "gaheads", ignore=shutil.ignore_patterns("__pycache__"))
    (src / "gaheads" / "stray.py").write_text("X = 1\n")
    res = run_check(src)
    assert res.returncode == 1
    assert "gaheads.stray: not assigned to a layer (add it to LAYERS in tools/check_imports.py)" in res.stdout
