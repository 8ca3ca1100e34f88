"""Commands on a board, composed: build the firmware (if it is not up to date), boot the emulated
board, then talk to it (DESIGN.md: the serial side never builds firmware). ``mcu_nn.device``
talks to a running board on a port; this module gives it one. The CLI and the examples call here.

    with running_board("build/har", board="qemu-mps2-an386") as port:   # "socket://127.0.0.1:…"
        ...
    serial_test("build/har", board="qemu-riscv32")       # build -> boot -> test
    serial_test("build/har", port="/dev/ttyACM0")        # a flashed real board: test only
    serial_test("build/har", inputs="data.npz", labels="y")   # the user's sequences and labels
    soak("build/har", 10_000, board="qemu-mps2-an386")    # 10,000 random sequences (docs/soak.md)
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from .boards import DEFAULT_BOARD, get_board
from .build import build_firmware, elf_sizes, firmware_path, is_up_to_date
from .device.emulator import Emulator
from .device.generate import GenerateResult
from .device.generate import generate as generate_on_port
from .device.serial_test import SerialTestResult, prepare_sequences
from .device.soak import SoakResult
from .device.soak import soak as soak_on_port
from .device.serial_test import serial_test as serial_test_on_port
from .device.ports import open_port
from .errors import McuNnError


@contextlib.contextmanager
def running_board(export_dir: Path, *, port: Optional[str] = None, board: Optional[str] = None,
                  log: Callable[[str], None] = print, allow_modified: bool = False) -> Iterator[str]:
    """The serial port of a board running ``export_dir``'s firmware: ``port`` as given ("auto": the
    one known probe's; ``labgrid://PLACE``: the place's, acquired meanwhile), else the emulated ``board`` (default: the default board), its firmware
    built if needed and booted for the time of the ``with``."""
    if port is not None:
        with open_port(port, log) as url:         # labgrid://PLACE: acquired for the time of the with
            yield url
        return
    b = get_board(board or DEFAULT_BOARD)
    if not b.emulated and b.flash_method != "host":
        raise McuNnError(f"{b.name} is a real board: flash it (mcu-nn flash) and pass --port")
    if not is_up_to_date(export_dir, b.name, allow_modified=allow_modified):
        build_firmware(export_dir, b.name, log=log, allow_modified=allow_modified)
    with Emulator(firmware_path(export_dir, b.name), b.name, log=log) as emu:
        log(f"booted {b.name} ({b.emulator.label if b.emulator else 'host'}), serial on {emu.url}")
        yield emu.url


def serial_test(export_dir: Path, *, port: Optional[str] = None, board: Optional[str] = None,
                log: Callable[[str], None] = print, allow_modified: bool = False,
                inputs: Any = None, labels: Any = None, soak: Optional[int] = None, seed: int = 0,
                **options: Any) -> "SerialTestResult | SoakResult":
    """``mcu-nn serial-test``: every test vector through the board, or the user's ``inputs``
    (an array, a list of sequences of any lengths, or a .npz/.npy/.pt file) with optional
    ``labels`` (an array, a key of the inputs .npz, or a file), measured against the simulator,
    the float model and the labels (``options``: timeout, retries, progress, check_step; see
    mcu_nn.device.serial_test). The inputs are checked before any board is built or booted.
    ``soak=N``: instead, N random sequences (``seed``) compared with the simulator, see :func:`soak`."""
    if soak is not None:
        if inputs is not None or labels is not None:
            raise McuNnError("a soak draws its own random sequences: leave out --inputs and --labels")
        return _soak(export_dir, soak, port=port, board=board, log=log, allow_modified=allow_modified,
                     seed=seed, **options)
    seqs = prepare_sequences(Path(export_dir), inputs, labels, allow_modified=allow_modified, log=log)
    with running_board(Path(export_dir), port=port, board=board, log=log, allow_modified=allow_modified) as url:
        result = serial_test_on_port(export_dir, port=url, log=log, allow_modified=allow_modified, inputs=seqs,
                                     **options)
    if port is None:                   # the emulated board ran the firmware built here: its sizes are known
        result.whole_firmware = _firmware_sizes(Path(export_dir), get_board(board or DEFAULT_BOARD))
    return result


def soak(export_dir: Path, n: int, *, port: Optional[str] = None, board: Optional[str] = None,
         log: Callable[[str], None] = print, allow_modified: bool = False, seed: int = 0,
         **options: Any) -> SoakResult:
    """``mcu-nn serial-test DIR --soak N``: N seeded random sequences through the board, each
    compared with the simulator, pipelined; stops at the first mismatch (``options``: timeout,
    retries, progress, window, batch, long_every, long_steps, report_every; see
    mcu_nn.device.soak). The emulated board keeps its -icount (exact instruction counts: under
    QEMU 7.2 it is not slower than without)."""
    return _soak(export_dir, n, port=port, board=board, log=log, allow_modified=allow_modified, seed=seed,
                 **options)


def _soak(export_dir: Path, n: int, *, port: Optional[str], board: Optional[str], log: Callable[[str], None],
          allow_modified: bool, seed: int, **options: Any) -> SoakResult:
    if n < 1:
        raise McuNnError(f"--soak needs at least 1 sequence, got {n}")
    with running_board(Path(export_dir), port=port, board=board, log=log, allow_modified=allow_modified) as url:
        return soak_on_port(Path(export_dir), n, port=url, log=log, allow_modified=allow_modified, seed=seed,
                            **options)


def _firmware_sizes(export_dir: Path, b: Any) -> Optional[dict]:
    """The size vocabulary's "whole firmware" of the ELF booted for ``b`` (docs/sizes.md)."""
    elf = firmware_path(export_dir, b.name)
    if not b.cross or not elf.is_file():
        return None
    flash, ram = elf_sizes(elf, b)
    return {"flash_bytes": flash, "ram_bytes": ram, "stack_bytes": b.stack_bytes}


def generate(export_dir: Path, prefix: str, n: int, *, port: Optional[str] = None, board: Optional[str] = None,
             log: Callable[[str], None] = print, allow_modified: bool = False,
             **options: Any) -> GenerateResult:
    """``mcu-nn generate``: text from a language model on the board and on the simulator
    (``options``: temperature, seed, vocab, timeout, retries; see mcu_nn.device.generate)."""
    with running_board(Path(export_dir), port=port, board=board, log=log, allow_modified=allow_modified) as url:
        return generate_on_port(export_dir, prefix, n, port=url, log=log, allow_modified=allow_modified,
                                **options)
