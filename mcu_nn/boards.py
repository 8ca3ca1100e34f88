"""The board table: each board is a row of data (cpu flags, memory, UART, counter, how to
flash it, which emulator runs it); the firmware's C is shared, only ``board.c`` differs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .errors import McuNnError


@dataclass(frozen=True)
class Memory:
    origin: int
    size: int


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    cpu: str                          # "cortex-m4", or "host"
    arch_flags: tuple[str, ...]       # compiler flags selecting cpu and float ABI
    fpu: Optional[str]                # None, "fpv4-sp-d16", ...
    flash: Optional[Memory]
    ram: Optional[Memory]
    uart: str                         # human description of the serial link
    counter: str                      # "timer" (QEMU virtual time), "cycles" (DWT), "ns" (host)
    counter_hz: int
    clock_hz: int
    flash_method: str                 # "qemu", "host", "pyocd" (else openocd), "openocd", "avrdude", "esptool"
    firmware_dir: str                 # folder under mcu_nn/firmware/boards
    qemu_machine: Optional[str] = None
    icount_shift: Optional[int] = None
    pyocd_target: Optional[str] = None
    openocd_config: tuple[str, ...] = field(default_factory=tuple)
    stack_bytes: int = 4096
    flash_args: tuple[str, ...] = ()  # avrdude/esptool options, e.g. ("-p", "atmega328p", "-c", "arduino")

    @property
    def emulated(self) -> bool:
        return self.qemu_machine is not None

    @property
    def cross(self) -> bool:
        return self.cpu != "host"


def _mps2(machine: str, cpu: str, flags: tuple[str, ...], fpu: Optional[str], what: str) -> Board:
    # icount shift 6: one instruction = 64 ns of virtual time and one timer tick = 40 ns, so
    # every instruction moves the 25 MHz timer by 1.6 ticks and ceil(ticks * 40 / 64) is the
    # exact instruction count (shift 0 would give a 40-instruction resolution).
    return Board(
        name=f"qemu-{machine}", description=f"Arm MPS2 {machine[-5:].upper()} ({what}) emulated by QEMU",
        cpu=cpu, arch_flags=("-mthumb", f"-mcpu={cpu}", *flags), fpu=fpu,
        flash=Memory(0x00000000, 4 << 20), ram=Memory(0x20000000, 4 << 20),
        uart="CMSDK UART0 @0x40004000 on a TCP socket", counter="timer", counter_hz=25_000_000,
        clock_hz=25_000_000, flash_method="qemu", firmware_dir="mps2", qemu_machine=machine,
        icount_shift=6)


BOARDS: dict[str, Board] = {b.name: b for b in [
    _mps2("mps2-an386", "cortex-m4", ("-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"), "fpv4-sp-d16",
          "Cortex-M4F"),
    _mps2("mps2-an385", "cortex-m3", ("-mfloat-abi=soft",), None, "Cortex-M3"),
    _mps2("mps2-an500", "cortex-m7", ("-mfloat-abi=hard", "-mfpu=fpv5-d16"), "fpv5-d16", "Cortex-M7"),
    Board(name="nucleo-f411re", description="ST NUCLEO-F411RE (STM32F411RE, Cortex-M4F @ 84 MHz)",
          cpu="cortex-m4", arch_flags=("-mthumb", "-mcpu=cortex-m4", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
          fpu="fpv4-sp-d16", flash=Memory(0x08000000, 512 << 10), ram=Memory(0x20000000, 128 << 10),
          uart="USART2 (PA2/PA3) on the ST-Link virtual COM port, 115200 8N1", counter="cycles",
          counter_hz=84_000_000, clock_hz=84_000_000, flash_method="pyocd", firmware_dir="nucleo-f411re",
          pyocd_target="stm32f411retx",
          openocd_config=("-f", "interface/stlink.cfg", "-f", "target/stm32f4x.cfg")),
    Board(name="host", description="this machine, over a pseudo-terminal (protocol debugging)",
          cpu="host", arch_flags=(), fpu=None, flash=None, ram=None, uart="pseudo-terminal",
          counter="ns", counter_hz=1_000_000_000, clock_hz=0, flash_method="host", firmware_dir="host"),
]}

DEFAULT_BOARD = "qemu-mps2-an386"


def get_board(name: str) -> Board:
    try:
        return BOARDS[name]
    except KeyError:
        raise McuNnError(f"unknown board {name!r}; known boards: {', '.join(BOARDS)}") from None


def describe_boards() -> str:
    rows = [("board", "cpu", "flash/RAM", "counter", "runs on")]
    for b in BOARDS.values():
        mem = f"{b.flash.size >> 10}K/{b.ram.size >> 10}K" if b.flash and b.ram else "-"
        where = f"QEMU -M {b.qemu_machine}" if b.emulated else b.flash_method
        rows.append((b.name, b.cpu + (f"+{b.fpu}" if b.fpu else ""), mem, b.counter, where))
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in rows)
