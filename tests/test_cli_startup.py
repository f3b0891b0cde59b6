"""`gaheads --help` and every subcommand's --help answer without importing torch or timm (start-up < 1 s),
while `import gaheads` still registers every model with timm; --threads and its default."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gaheads.cli import COMMANDS
from gaheads.threads import default_threads


def imported_modules(*args: str) -> tuple[set[str], str]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "gaheads", *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    mods = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return mods, proc.stdout


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_loads_neither_torch_nor_timm(command):
    mods, out = imported_modules(*([command, "--help"] if command else ["--help"]))
    assert "torch" not in mods and "timm" not in mods and "numpy" not in mods
    assert out.startswith("usage: gaheads")


def test_import_gaheads_still_registers_the_models():
    code = "import gaheads, timm; print(timm.is_model('ga8_cct_7_3x1_32'), gaheads.create_model.__module__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.split() == ["True", "gaheads.models.factory"], proc.stderr[-2000:]


def test_default_threads_leave_a_core_free_unless_told():
    assert default_threads({}, cores=2) == 1 and default_threads({}, cores=16) == 8
    assert default_threads({}, cores=1) == 1
    assert default_threads({"OMP_NUM_THREADS": "3"}, cores=2) == 3
    assert default_threads({"OMP_NUM_THREADS": "zero"}, cores=4) == 2


def test_threads_flag_sets_torch_threads_at_the_command_entry(tmp_path):
    code = ("import sys, torch; from gaheads.cli.predict import main; code = main(['--threads', '1', "
            "'--checkpoint', sys.argv[1], 'x.png']); print(code, torch.get_num_threads())")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "none.pth")], capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"})
    assert proc.stdout.split() == ["2", "1"], proc.stderr[-2000:]  # bad checkpoint -> 2, after setting 1 thread
