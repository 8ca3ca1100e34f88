"""Compiling a test program against the rendered fixed-point runtime (mcunn_fixedpoint.h), on the
host, strictly and under ASan/UBSan: how the primitives' C twins are tested against fixedpoint.py."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from mcu_nn.codegen.emit import render_runtime_header

RUNTIME_TEXT = render_runtime_header()      # rendered here: the package ships only the template


def build_runtime_program(d: Path, name: str, program: str) -> Path:
    """Write ``program`` and the runtime header into ``d`` and compile it; returns the executable
    (the test is skipped where no host C compiler exists)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        pytest.skip("no host C compiler")
    (d / "mcunn_fixedpoint.h").write_text(RUNTIME_TEXT)
    (d / f"{name}.c").write_text(program)
    exe = d / name
    subprocess.run([cc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1", "-g",
                    "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-I", str(d),
                    str(d / f"{name}.c"), "-o", str(exe)], check=True)
    return exe
