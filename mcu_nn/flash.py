"""``mcu-nn flash``: put firmware on a board. Emulated boards boot in QEMU and serve their
UART on a loopback TCP port until stopped; real boards go through pyocd (or openocd)."""
from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path
from typing import Callable, Optional

from .boards import get_board
from .errors import McuNnError

NO_PROBE_HINTS = ("no available debug probe", "no connected debug probe", "no probe",
                  "unable to open", "open failed", "no device found", "could not find")


def flash(firmware: Path, board: str, *, listen: Optional[int] = None,
          log: Callable[[str], None] = print) -> int:
    """Flash ``firmware`` (an ELF from mcu-nn build) to ``board``; returns an exit code."""
    firmware = Path(firmware)
    b = get_board(board)
    if not firmware.is_file():
        raise McuNnError(f"firmware {firmware} does not exist; run mcu-nn build DIR --board {b.name} first")
    if b.emulated or b.flash_method == "host":
        return _serve(firmware, b.name, listen, log)
    if b.flash_method == "pyocd":
        return _flash_probe(firmware, b, log)
    raise McuNnError(f"board {b.name} has no flash method mcu-nn knows ({b.flash_method})")


def _serve(firmware: Path, board: str, listen: Optional[int], log: Callable[[str], None]) -> int:
    from .device.emulator import Emulator
    b = get_board(board)
    if b.emulated and listen is None:
        raise McuNnError(f"{board} is emulated: pass --listen PORT to serve its UART on 127.0.0.1:PORT")
    emu = Emulator(firmware, board, port=listen, log=log)

    def _stop(signum, frame):      # `kill` and service managers stop us like Ctrl-C does
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, _stop)
    with emu:
        log(f"{board} running {firmware.name}; serial port {emu.url} "
            f"(mcu-nn serial-test DIR --port {emu.url}); Ctrl-C stops it")
        try:
            code = emu.wait()
        except KeyboardInterrupt:
            log("stopped")
            return 0
        finally:
            signal.signal(signal.SIGTERM, previous)
    return code


def _flash_probe(firmware: Path, b, log: Callable[[str], None]) -> int:
    if shutil.which("pyocd"):
        cmd = ["pyocd", "flash", "-t", b.pyocd_target, str(firmware)]
    elif shutil.which("openocd") and b.openocd_config:
        cmd = ["openocd", *b.openocd_config, "-c", f"program {firmware} verify reset exit"]
    else:
        raise McuNnError(f"flashing {b.name} needs pyocd or openocd: pip install pyocd "
                         "(or apt install openocd)")
    log("running " + " ".join(cmd))
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        raise McuNnError(f"{cmd[0]} did not finish in 300 s; unplug and replug the board and retry") from None
    text = (r.stdout + r.stderr).strip()
    if r.returncode != 0:
        low = text.lower()
        if any(h in low for h in NO_PROBE_HINTS) or not text:
            raise McuNnError(f"no debug probe found for {b.name}: connect the board's ST-Link USB port "
                             f"and retry ({cmd[0]} said: {text.splitlines()[-1] if text else 'nothing'})")
        raise McuNnError(f"{cmd[0]} failed to flash {b.name}: {text.splitlines()[-1]}")
    log(f"flashed {firmware} to {b.name}")
    return 0
