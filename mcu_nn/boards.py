"""The board table. A board is a row of data: an architecture (mcu_nn/arch.py), memory, UART,
counter, clock, how it is flashed, and for emulated boards an emulator row (binary, machine,
how to count). Rows are read from ``firmware/boards/<folder>/board.toml`` beside the folder's
``board.c``, so adding a board edits no central list (docs/boards.md)."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

from .arch import Arch, get_arch
from .errors import McuNnError

if sys.version_info >= (3, 11):
    import tomllib
else:                                   # pragma: no cover (3.10: the tomli backport)
    import tomli as tomllib

BOARD_DIR = Path(__file__).parent / "firmware" / "boards"
MIN_PAYLOAD = 512          # bytes per frame payload unless a row asks for less (small RAM)


@dataclass(frozen=True)
class Memory:
    origin: int
    size: int


@dataclass(frozen=True)
class EmulatorRow:
    """How an emulator boots and counts. Under QEMU ``-icount shift=N`` every instruction is
    2^N ns of virtual time, so a timer of known frequency counts instructions: ``serve_shift``
    for the serial server (coarser, keeps the 1 ms tick rare), ``bench_shift`` for the bench
    (fine enough that rounding ticks to instructions is exact)."""
    binary: str                       # "qemu-system-arm"
    machine: str                      # "-M" value
    serve_shift: int = 6
    bench_shift: int = 10
    args: tuple[str, ...] = ()        # anything else the machine needs
    package: str = ""                 # its apt package when not named like the binary (qemu-system-misc)

    @property
    def label(self) -> str:
        return f"QEMU -M {self.machine}" if self.binary.startswith("qemu-system-") else f"{self.binary} {self.machine}"

    def instructions(self, ticks: float, counter_hz: int, shift: int) -> float:
        """Timer ticks at ``counter_hz`` -> instructions under ``-icount shift``."""
        return float(Fraction(ticks) * Fraction(10**9, counter_hz) / (1 << shift))


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    arch: Arch
    flash: Optional[Memory]
    ram: Optional[Memory]
    uart: str                         # human description of the serial link
    counter: str                      # "timer" (virtual time under QEMU), "cycles" (DWT), "ns" (host)
    counter_hz: int
    clock_hz: int
    flash_method: str                 # "qemu", "host", "pyocd" (else openocd), "openocd", "avrdude", "esptool"
    firmware_dir: str                 # folder under mcu_nn/firmware/boards
    emulator: Optional[EmulatorRow] = None
    pyocd_target: Optional[str] = None
    openocd_config: tuple[str, ...] = field(default_factory=tuple)
    stack_bytes: int = 4096
    flash_args: tuple[str, ...] = ()  # avrdude/esptool options, e.g. ("-p", "atmega328p", "-c", "arduino")
    payload_max: int = MIN_PAYLOAD    # the server's frame payload (its buffers scale with it)
    defines: tuple[tuple[str, str], ...] = ()   # -D for board.c (one board.c, several machines)

    # the row's fields under the names the stages have always used
    @property
    def cpu(self) -> str:
        return self.arch.cpu

    @property
    def arch_flags(self) -> tuple[str, ...]:
        return self.arch.cflags

    @property
    def fpu(self) -> Optional[str]:
        return self.arch.fpu

    @property
    def emulated(self) -> bool:
        return self.emulator is not None

    @property
    def qemu_machine(self) -> Optional[str]:
        return self.emulator.machine if self.emulator else None

    @property
    def icount_shift(self) -> Optional[int]:
        return self.emulator.serve_shift if self.emulator else None

    @property
    def cross(self) -> bool:
        return self.arch.cross

    def cflags(self) -> list[str]:
        """Compiler flags of this board: the core's, the portable kernels where the core has no
        DSP extension (the row decides, not the compiler's guess; ARMv7-M cores without it run
        the MCUNN_V7M kernels, ARMv6-M ones the MCUNN_V6M kernels), the board's defines."""
        return [*self.arch.cflags, *([] if self.arch.dsp or self.arch.v7m or self.arch.v6m or not self.cross
                                     else ["-DMCUNN_PORTABLE"]),
                *(f"-D{k}={v}" for k, v in self.defines)]

    def counter_units(self, ticks: float, *, shift: Optional[int] = None) -> tuple[float, str]:
        """The one conversion from this board's counter to what a person reads: instructions
        (a timer under QEMU -icount), cycles, or ns (the host board)."""
        if self.counter == "timer" and self.emulator is not None:
            s = self.emulator.serve_shift if shift is None else shift
            return round(self.emulator.instructions(ticks, self.counter_hz, s)), "instructions"
        if self.counter == "timer":
            return ticks * self.clock_hz / self.counter_hz, "cycles (from a timer)"
        return float(ticks), {"cycles": "cycles", "ns": "ns"}.get(self.counter, "ticks")


def _memory(v: Any, where: str) -> Optional[Memory]:
    if v is None:
        return None
    if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) for x in v)):
        raise McuNnError(f"{where}: memory must be [origin, size] integers")
    return Memory(v[0], v[1])


def board_from_row(row: dict[str, Any], folder: str, where: str = "board row") -> Board:
    """One board from a ``[[board]]`` table of a board.toml (its folder holds board.c)."""
    row = dict(row)
    try:
        emu = row.pop("emulator", None)
        b = Board(name=row.pop("name"), description=row.pop("description"), arch=get_arch(row.pop("arch")),
                  flash=_memory(row.pop("flash", None), where), ram=_memory(row.pop("ram", None), where),
                  uart=row.pop("uart"), counter=row.pop("counter"), counter_hz=row.pop("counter_hz"),
                  clock_hz=row.pop("clock_hz"), flash_method=row.pop("flash_method"), firmware_dir=folder,
                  emulator=EmulatorRow(**{**emu, "args": tuple(emu.get("args", ()))}) if emu else None,
                  pyocd_target=row.pop("pyocd_target", None),
                  openocd_config=tuple(row.pop("openocd_config", ())),
                  flash_args=tuple(row.pop("flash_args", ())),
                  stack_bytes=row.pop("stack_bytes", 4096), payload_max=row.pop("payload_max", MIN_PAYLOAD),
                  defines=tuple((k, str(v)) for k, v in row.pop("defines", {}).items()))
    except KeyError as e:
        raise McuNnError(f"{where}: missing field {e.args[0]!r}") from None
    except TypeError as e:
        raise McuNnError(f"{where}: {e}") from None
    if row:
        raise McuNnError(f"{where}: unknown field(s) {', '.join(sorted(row))}")
    return b


def load_boards(root: Path = BOARD_DIR) -> dict[str, Board]:
    """Every row of every ``<folder>/board.toml`` under ``root``, default board first."""
    boards: dict[str, Board] = {}
    for toml in sorted(root.glob("*/board.toml")):
        try:
            rows = tomllib.loads(toml.read_text())
        except tomllib.TOMLDecodeError as e:
            raise McuNnError(f"{toml}: {e}") from None
        for i, row in enumerate(rows.get("board", [])):
            b = board_from_row(row, toml.parent.name, f"{toml} board {i + 1}")
            if b.name in boards:
                raise McuNnError(f"{toml}: board {b.name!r} is also defined in "
                                 f"{boards[b.name].firmware_dir}/board.toml")
            boards[b.name] = b
    order = sorted(boards.values(), key=lambda b: (b.name != DEFAULT_BOARD, not b.emulated, b.name == "host"))
    return {b.name: b for b in order}


DEFAULT_BOARD = "qemu-mps2-an386"
BOARDS: dict[str, Board] = load_boards()


def get_board(name: str) -> Board:
    try:
        return BOARDS[name]
    except KeyError:
        raise McuNnError(f"unknown board {name!r}; known boards: {', '.join(BOARDS)}") from None


def board_summary(b: Board) -> dict[str, Any]:
    """What ``mcu-nn boards --json`` prints for one row."""
    return {"name": b.name, "arch": b.arch.name, "core": b.arch.core, "features": sorted(b.arch.features),
            "flash": [b.flash.origin, b.flash.size] if b.flash else None,
            "ram": [b.ram.origin, b.ram.size] if b.ram else None, "counter": b.counter,
            "emulator": (f"{b.emulator.binary} -M {b.emulator.machine}" if b.emulator.binary.startswith("qemu-")
                         else b.emulator.label) if b.emulator else None,
            "flash_method": b.flash_method, "description": b.description}


def describe_boards() -> str:
    rows = [("board", "arch", "core", "flash/RAM", "counter", "runs on")]
    for b in BOARDS.values():
        mem = f"{b.flash.size >> 10}K/{b.ram.size >> 10}K" if b.flash and b.ram else "-"
        where = b.emulator.label if b.emulator else b.flash_method
        rows.append((b.name, b.arch.name, b.arch.core, mem, b.counter, where))
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in rows)
