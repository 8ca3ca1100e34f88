"""Serial port discovery: ``--port auto`` picks the one USB serial port whose VID:PID is a known
debug probe or USB-serial bridge; error messages list the ports that exist.

The IDs are those of pyocd's udev rules (ST-Link V2-1/V3, DAPLink, Raspberry Pi probes) and of
the common bridges' vendors (SEGGER, WCH, Silicon Labs, FTDI, Arduino)."""
from __future__ import annotations

import os
from typing import Callable, Optional

from serial.tools import list_ports

from ..errors import McuNnError

AUTO = "auto"
ANY = None          # a vendor whose every product counts

# (vid, pid or ANY) -> what it is
KNOWN_ADAPTERS: dict[tuple[int, Optional[int]], str] = {
    (0x0483, 0x374B): "ST-Link/V2-1", (0x0483, 0x3752): "ST-Link/V2-1",
    (0x0483, 0x374E): "ST-Link/V3", (0x0483, 0x374F): "ST-Link/V3", (0x0483, 0x3753): "ST-Link/V3",
    (0x0D28, 0x0204): "CMSIS-DAP (DAPLink)",
    (0x1366, ANY): "SEGGER J-Link",
    (0x1A86, 0x7523): "CH340",
    (0x10C4, 0xEA60): "CP210x",
    (0x0403, 0x6001): "FTDI FT232R", (0x0403, 0x6010): "FTDI FT2232",
    (0x0403, 0x6014): "FTDI FT232H", (0x0403, 0x6015): "FTDI FT-X",
    (0x2341, ANY): "Arduino", (0x2A03, ANY): "Arduino",
    (0x2E8A, ANY): "Raspberry Pi (Pico / Debug Probe)",
}


def adapter(vid: Optional[int], pid: Optional[int]) -> Optional[str]:
    """The known probe or bridge with this USB VID:PID, or None."""
    if vid is None:
        return None
    return KNOWN_ADAPTERS.get((vid, pid)) or KNOWN_ADAPTERS.get((vid, ANY))


def _label(p) -> str:
    ids = f" {p.vid:04X}:{p.pid:04X}" if p.vid is not None and p.pid is not None else ""
    desc = p.description if p.description and p.description not in ("n/a", p.device) else ""
    return f"{p.device} ({(desc + ids).strip()})" if desc or ids else p.device


def existing_ports() -> str:
    """One phrase naming the serial ports this machine has, for error messages."""
    ports = sorted(list_ports.comports(), key=lambda p: p.device)
    if not ports:
        return "this machine has no serial ports (is the board plugged in, and its USB cable one that carries data?)"
    return "serial ports here: " + ", ".join(_label(p) for p in ports)


def auto_port() -> tuple[str, str]:
    """(device, adapter name) of the one port with a known VID:PID; refuses none or several."""
    found = [(p, adapter(p.vid, p.pid)) for p in list_ports.comports()]
    known = sorted(((p, a) for p, a in found if a), key=lambda pa: pa[0].device)
    if not known:
        raise McuNnError(f"--port auto found no debug probe or USB-serial adapter it knows; "
                         f"{existing_ports()}; pass --port DEVICE")
    if len(known) > 1:
        raise McuNnError("--port auto found several boards: "
                         + ", ".join(f"{p.device} ({a})" for p, a in known) + "; pass --port with one of them")
    return known[0][0].device, known[0][1]


def resolve_port(port: Optional[str], log: Callable[[str], None] = print) -> Optional[str]:
    """``auto`` -> the one known adapter's device; a device path that does not exist -> an error
    listing the ports that do; anything else (URLs such as socket://, COM names) unchanged."""
    if port is None or "://" in port:
        return port
    if port == AUTO:
        device, name = auto_port()
        log(f"--port auto: {device} ({name})")
        return device
    if os.sep in port and not os.path.exists(port):
        raise McuNnError(f"serial port {port} does not exist; {existing_ports()}")
    return port
