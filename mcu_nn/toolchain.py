"""Running the external tools (host cc, arm-none-eabi-*, QEMU) the way every stage needs:
found on PATH or a one-line install hint, and a failure reduced to the one line of its
output that says what went wrong."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Optional

from .elfsize import section_sizes  # noqa: F401  (read with pyelftools, no size tool needed)
from .errors import McuNnError

INSTALL_HINT = ("apt install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm "
                "(scripts/install-deps.sh does it)")


def require(name: str, hint: str = INSTALL_HINT) -> str:
    """The path of tool ``name``, or a McuNnError saying how to install it."""
    path = shutil.which(name)
    if not path:
        raise McuNnError(f"{name} not found: {hint}")
    return path


def find_cc(cc: Optional[str] = None) -> str:
    """The host C compiler: ``cc`` if given, else the first of cc, gcc, clang on PATH."""
    for cand in ([cc] if cc else ["cc", "gcc", "clang"]):
        if cand and shutil.which(cand):
            return cand
    raise McuNnError(f"no C compiler found ({cc or 'tried cc, gcc, clang'}): apt install gcc")


def first_error_line(text: str) -> str:
    """The line of a tool's output a user needs first: our own linker assertions and
    region overflows, then compiler/sanitizer errors (not collect2's summary), else line 1."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    ours = next((ln for ln in lines if "mcu-nn:" in ln or "overflow" in ln), None)
    if ours is not None:
        return ours.split("mcu-nn:", 1)[1].strip() if "mcu-nn:" in ours else ours
    for key in ("error:", "ERROR:"):
        found = next((ln for ln in lines if key in ln), None)
        if found is not None:
            return found
    found = next((ln for ln in lines if "error" in ln.lower() and "collect2" not in ln), None)
    return found or (lines[0] if lines else "(no output)")


def run_tool(cmd: list[str], what: str, *, cwd: Optional[Path] = None, timeout: float = 300) -> str:
    """Run ``cmd``; return its stdout + stderr (QEMU prints semihosting output on stderr).
    Failure or timeout -> McuNnError("<what> failed: <first error line>")."""
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        raise McuNnError(f"{what} did not finish within {timeout:.0f} s") from None
    if r.returncode != 0:
        raise McuNnError(f"{what} failed: {first_error_line(r.stderr + r.stdout)}")
    return r.stdout + r.stderr
