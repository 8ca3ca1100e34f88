"""Compiling a test program against the rendered fixed-point runtime (mcunn_fixedpoint.h/.c), on the
host, strictly and under ASan/UBSan: how the primitives' C twins are tested against fixedpoint.py."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from mcu_nn.codegen.emit import RUNTIME_HEADER, RUNTIME_SOURCE, render_runtime

RUNTIME = render_runtime()      # rendered here: the package ships only the templates
RUNTIME_TEXT = RUNTIME[RUNTIME_HEADER] + RUNTIME[RUNTIME_SOURCE]   # all of it, for tests that read the tables


def build_runtime_program(d: Path, name: str, program: str) -> Path:
    """Write ``program`` and the runtime header into ``d`` and compile it; returns the executable
    (the test is skipped where no host C compiler exists)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        pytest.skip("no host C compiler")
    for fname, text in RUNTIME.items():
        (d / fname).write_text(text)
    (d / f"{name}.c").write_text(program)
    exe = d / name
    subprocess.run([cc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1", "-g",
                    "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-I", str(d),
                    str(d / f"{name}.c"), str(d / RUNTIME_SOURCE), "-o", str(exe)], check=True)
    return exe
