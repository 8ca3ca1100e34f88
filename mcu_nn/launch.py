"""The one launcher of emulated boards: the command line that boots an ELF on a board's
emulator row, serving its UART (serial-test, generate, flash --listen, demo) or running a
program to its end under semihosting (the bench, the DSP cell test)."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Optional

from .boards import Board
from .errors import McuNnError
from .toolchain import find_cc, require, run_tool

SIMAVR_RUNNER = Path(__file__).parent / "firmware" / "tools" / "simavr_uart.c"
SIMAVR_HINT = "install simavr and its headers (apt install simavr libsimavr-dev; scripts/install-deps.sh does it)"


def simavr_runner() -> str:
    """The UART bridge around libsimavr (firmware/tools/simavr_uart.c), compiled once per
    source version into the user's cache."""
    src = SIMAVR_RUNNER.read_bytes()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mcu-nn"
    exe = cache / f"simavr-uart-{hashlib.sha256(src).hexdigest()[:12]}"
    if not exe.is_file():
        if not Path("/usr/include/simavr/sim_avr.h").is_file():
            raise McuNnError(f"simavr's headers are missing: {SIMAVR_HINT}")
        cache.mkdir(parents=True, exist_ok=True)
        tmp = exe.with_suffix(f".{os.getpid()}")
        run_tool([find_cc(), "-O2", "-o", str(tmp), str(SIMAVR_RUNNER), "-lsimavr"], "compiling the simavr launcher")
        tmp.replace(exe)                  # atomic: parallel runs never see half a binary
    return str(exe)


def emulator_of(board: Board):
    if board.emulator is None:
        raise McuNnError(f"{board.name} is a real board with no emulator: flash it "
                         f"(mcu-nn flash) and pass its serial port with --port")
    return board.emulator


def emulator_command(board: Board, elf: Path, *, serial: Optional[str] = None, semihosting: bool = False,
                     shift: Optional[int] = None) -> list[str]:
    """``serial``: a QEMU chardev for the board's UART ("tcp:…"), None for none. ``shift``:
    the -icount shift (default the row's serving shift)."""
    e = emulator_of(board)
    if e.binary == "simavr":          # cycle-exact, no -icount; the UART through our bridge
        require("simavr", SIMAVR_HINT)
        mode = ["--run"]
        if serial:
            port = re.match(r"tcp:127\.0\.0\.1:(\d+)", serial)
            if not port:
                raise McuNnError(f"simavr serves its UART on a loopback TCP port only, not {serial!r}")
            mode = ["--serve", port.group(1)]
        return [simavr_runner(), e.machine, str(board.clock_hz), str(elf), *mode]
    # the binary names its apt package (qemu-system-arm)
    cmd = [require(e.binary, f"install it (apt install {e.package or e.binary}; scripts/install-deps.sh does it)"),
           "-M", e.machine, "-kernel", str(elf), "-display", "none", "-monitor", "none",
           "-serial", serial or "null",
           "-icount", f"shift={e.serve_shift if shift is None else shift}", *e.args]
    if semihosting:
        cmd += ["-semihosting-config", "enable=on,target=native"]
    return cmd


def run_to_end(board: Board, elf: Path, *, timeout: float = 300) -> str:
    """Boot ``elf`` under semihosting at the row's bench shift; returns what it printed."""
    e = emulator_of(board)
    return run_tool(emulator_command(board, elf, semihosting=True, shift=e.bench_shift),
                    f"{e.label} running {Path(elf).name}", timeout=timeout)
