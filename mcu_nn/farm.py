"""Several boards at once: ``mcu-nn serial-test DIR --board a b c`` / ``--port p1 p2 …`` and
``mcu-nn bench DIR --board a b``. Each target (an emulated board, booted in its own emulator, or
a port: a device, ``socket://``, ``rfc2217://`` served by ser2net or a labgrid exporter,
``labgrid://PLACE``) runs in its own thread; the result is one entry per target and a verdict
that fails when any target fails (docs/farms.md). This is not a farm of our own: the boards of a
lab are reached through labgrid places and RFC 2217 ports (mcu_nn.device.ports), and a
firmware team's pytest run gets them through mcu_nn.pytest_plugin.

    r = serial_test_many("build/har", boards=["qemu-mps2-an386", "qemu-mps2-an500"])
    r.ok, [t.result.passed for t in r.targets]
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .errors import McuNnError

_build_locks: dict[tuple[str, str], threading.Lock] = {}
_build_locks_guard = threading.Lock()


def _build_lock(export_dir: Path, board: str) -> threading.Lock:
    """One lock per (export, board): firmware/<board>/ is written by one build at a time."""
    key = (str(Path(export_dir).resolve()), board)
    with _build_locks_guard:
        return _build_locks.setdefault(key, threading.Lock())


def ensure_firmware(export_dir: Path, board: str, *, allow_modified: bool = False,
                    log: Callable[[str], None] = print) -> None:
    """Build ``board``'s firmware of the export unless it is up to date; builds of the same
    export for different boards run in parallel (each writes its own firmware/<board>/), two of
    the same board wait for each other."""
    from .boards import get_board
    from .build import build_firmware, is_up_to_date
    b = get_board(board)
    if not b.emulated and b.flash_method != "host":
        raise McuNnError(f"{b.name} is a real board: flash it (mcu-nn flash) and pass --port")
    with _build_lock(export_dir, b.name):
        if not is_up_to_date(export_dir, b.name, allow_modified=allow_modified):
            build_firmware(export_dir, b.name, log=log, allow_modified=allow_modified)


@dataclass
class TargetResult:
    target: str                      # the board name or the port as given
    kind: str                        # "board" or "port"
    result: Any = None               # SerialTestResult / BenchResult, None when it failed before one
    error: Optional[str] = None      # the one-line reason, when the run raised

    @property
    def ok(self) -> bool:
        return self.error is None and bool(getattr(self.result, "ok", True))

    def line(self) -> str:
        """One line per target for the summary."""
        if self.error is not None:
            return f"FAILED  {self.target}: {self.error}"
        r = self.result
        if hasattr(r, "passed"):
            d = r.device
            on = f" ({d.board}, {d.name})" if d is not None and d.board != self.target else ""
            return (f"{'ok     ' if r.ok else 'FAILED '} {self.target}{on}: {r.passed}/{r.sequences} "
                    f"sequences match the simulator")
        return f"ok      {self.target}: {r.instructions_per_step:,} {r.unit}/step"


@dataclass
class FarmResult:
    command: str                     # "serial-test" or "bench"
    targets: list[TargetResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.targets) and all(t.ok for t in self.targets)

    @property
    def failed(self) -> list[str]:
        return [t.target for t in self.targets if not t.ok]

    def summary_lines(self) -> list[str]:
        n, bad = len(self.targets), len(self.failed)
        verdict = (f"ok: all {n} boards passed" if not bad else
                   f"FAILED: {bad} of {n} boards failed ({', '.join(self.failed)})")
        return [t.line() for t in self.targets] + [verdict]

    def text(self) -> str:
        return "\n".join(self.summary_lines())

    def as_dict(self) -> dict:
        """The multi-board ``--json`` payload (docs/farms.md)."""
        if self.command == "bench":
            from .bench import bench_payload
            done = [t.result for t in self.targets if t.result is not None]
            return {"ok": self.ok, "boards": len(self.targets), "failed": self.failed,
                    **bench_payload(done),
                    "errors": [{"target": t.target, "error": t.error} for t in self.targets if t.error]}
        results = []
        for t in self.targets:
            entry = {"target": t.target, "target_kind": t.kind, "error": t.error}
            if t.result is not None:
                entry.update(t.result.as_dict())
            else:
                entry["ok"] = False
            results.append(entry)
        return {"ok": self.ok, "boards": len(self.targets), "passed_boards": len(self.targets) - len(self.failed),
                "failed": self.failed, "results": results}


def _prefixed(log: Callable[[str], None], target: str, width: int) -> Callable[[str], None]:
    lock = _print_lock
    tag = f"[{target}]".ljust(width + 2)

    def emit(s: str) -> None:
        with lock:
            for ln in str(s).splitlines() or [""]:
                log(f"{tag} {ln}")
    return emit


_print_lock = threading.Lock()


def _run_all(targets: list[tuple[str, str]], work: Callable[[str, str, Callable[[str], None]], Any],
             log: Callable[[str], None], jobs: Optional[int]) -> list[TargetResult]:
    width = max(len(t) for _, t in targets)

    def one(kt: tuple[str, str]) -> TargetResult:
        kind, target = kt
        try:
            return TargetResult(target, kind, work(kind, target, _prefixed(log, target, width)))
        except McuNnError as e:
            return TargetResult(target, kind, error=str(e))
        except Exception as e:           # one board's bug must not hide the others' results
            return TargetResult(target, kind, error=f"internal error: {type(e).__name__}: {e}")

    with ThreadPoolExecutor(max_workers=jobs or len(targets), thread_name_prefix="mcunn-farm") as pool:
        return list(pool.map(one, targets))


def targets_of(boards: Optional[Sequence[str]], ports: Optional[Sequence[str]]) -> list[tuple[str, str]]:
    """[(kind, name)] of the ports then the boards; the same one twice is refused."""
    out = [("port", p) for p in ports or []] + [("board", b) for b in boards or []]
    seen = set()
    for _, t in out:
        if t in seen:
            raise McuNnError(f"{t} is given twice; each board or port runs once")
        seen.add(t)
    if not out:
        raise McuNnError("no board or port given")
    return out


def serial_test_many(export_dir: Path, *, boards: Optional[Sequence[str]] = None,
                     ports: Optional[Sequence[str]] = None, log: Callable[[str], None] = print,
                     allow_modified: bool = False, inputs: Any = None, labels: Any = None,
                     jobs: Optional[int] = None, **options: Any) -> FarmResult:
    """``serial-test`` on every board and port at once: the sequences are prepared (and the
    simulator run on them) once; emulated boards' firmware is built (in parallel, one build per
    board) and each board booted in its own emulator; every target is tested in its own thread.
    A target that fails (no reply, wrong firmware, a mismatch) fails the result, not the others."""
    from .boards import get_board
    from .device.serial_test import prepare_sequences, serial_test as serial_test_on_port
    from .onboard import _firmware_sizes, running_board
    export_dir = Path(export_dir)
    targets = targets_of(boards, ports)
    for kind, t in targets:
        if kind == "board":
            get_board(t)                                  # an unknown name fails before anything runs
    seqs = prepare_sequences(export_dir, inputs, labels, allow_modified=allow_modified, log=log)
    options.setdefault("progress", False)                 # one bar per thread would garble the terminal

    def work(kind: str, target: str, tlog: Callable[[str], None]):
        if kind == "board":
            ensure_firmware(export_dir, target, allow_modified=allow_modified, log=tlog)
        with running_board(export_dir, port=target if kind == "port" else None,
                           board=target if kind == "board" else None, log=tlog,
                           allow_modified=allow_modified) as url:
            r = serial_test_on_port(export_dir, port=url, log=tlog, allow_modified=allow_modified,
                                    inputs=seqs, **options)
        if kind == "board":
            r.whole_firmware = _firmware_sizes(export_dir, get_board(target))
        return r

    return FarmResult("serial-test", _run_all(targets, work, log, jobs))


def bench_many(export_dir: Path, boards: Sequence[str], *, allow_modified: bool = False,
               log: Callable[[str], None] = print, jobs: Optional[int] = None) -> FarmResult:
    """``bench`` on several emulated boards at once, each in its own thread and build directory."""
    from .bench import bench_export
    export_dir = Path(export_dir)
    targets = targets_of(boards, None)

    def work(kind: str, board: str, tlog: Callable[[str], None]):
        r = bench_export(export_dir, board, allow_modified=allow_modified)
        tlog(f"{r.instructions_per_step:,} {r.unit} per step")
        return r

    return FarmResult("bench", _run_all(targets, work, log, jobs))


class PtyBoard:
    """An emulated board whose UART is a pseudo-terminal (QEMU ``-serial pty``), as a real
    board's USB serial port is a device: what ser2net (``serialdev,/dev/pts/N``) and a labgrid
    exporter (``RawSerialPort: port: /dev/pts/N``) serve over RFC 2217 in front of it.

        with PtyBoard(firmware_path(export, "qemu-mps2-an386"), "qemu-mps2-an386") as b:
            b.device      # "/dev/pts/7"
    """

    def __init__(self, elf: Path, board: str, *, start_timeout: float = 10.0) -> None:
        self.elf, self.board_name, self.start_timeout = Path(elf), board, start_timeout
        self.proc = None
        self.device = ""

    def __enter__(self) -> "PtyBoard":
        import re
        import subprocess
        import time
        from .boards import get_board
        from .launch import emulator_command
        b = get_board(self.board_name)
        if not self.elf.is_file():
            raise McuNnError(f"firmware {self.elf} does not exist; run mcu-nn build first")
        if b.emulator is None or b.emulator.binary == "simavr":
            raise McuNnError(f"{b.name}: only QEMU boards serve their UART on a pseudo-terminal")
        self.proc = subprocess.Popen(emulator_command(b, self.elf, serial="pty"), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # QEMU names the pty on stdout
        deadline, seen = time.monotonic() + self.start_timeout, ""
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline and not self.device:
            if not sel.select(timeout=0.2):
                if self.proc.poll() is not None:
                    break
                continue
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                break
            seen += line
            m = re.search(r"redirected to (/dev/pts/\d+)", line)
            if m:
                self.device = m.group(1)
        sel.close()
        if not self.device:
            self.__exit__()
            raise McuNnError(f"{b.name}: the emulator named no pseudo-terminal ({seen.strip() or 'no message'})")
        return self

    def __exit__(self, *exc) -> None:
        from .device.emulator import interrupts_deferred, terminate
        if self.proc is None:
            return
        with interrupts_deferred():                  # a Ctrl-C now must not leave QEMU running
            terminate(self.proc)
        self.proc = None
