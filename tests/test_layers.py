"""The house rules of the code (`.importlinter`): layers import one way (cli -> app -> hub -> training -> evaluation
-> data -> loading -> files -> model -> kernels), the model package imports none of the library, and no package's
modules import each other round in a circle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_layers_import_one_way_and_no_package_has_a_cycle():
    # In its own process: import-linter reconfigures logging, which would silence later tests' log captures.
    command = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
               "--config", ".importlinter", "--no-cache"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 kept, 0 broken" in done.stdout
