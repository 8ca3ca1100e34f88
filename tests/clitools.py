"""Running the real `mcu-nn` command from tests: a subprocess with the checkout on the path."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "mcu_nn"]
ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def mcu_nn(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=ENV, stdin=subprocess.DEVNULL)


def one_error_line(r: subprocess.CompletedProcess) -> str:
    """The failure's single stderr line (asserting there is exactly one, and no traceback)."""
    assert r.returncode != 0, r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("mcu-nn: error: "), lines[0]
    assert "Traceback" not in r.stderr
    return lines[0]
