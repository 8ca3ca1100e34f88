"""Boot firmware where no hardware is needed: an emulated board through its emulator row
(mcu_nn/launch.py; UART on a loopback TCP port) or the host board's executable (a
pseudo-terminal). Always torn down on exit."""
from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

from ..boards import Board, get_board
from ..errors import McuNnError
from ..launch import emulator_command


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def qemu_command(elf: Path, board: Board, port: int) -> list[str]:
    """The serving command line: the board's UART on a loopback TCP server at ``port``."""
    return emulator_command(board, elf, serial=f"tcp:127.0.0.1:{port},server=on,wait=on,nodelay=on")


@contextmanager
def interrupts_deferred():
    """Ctrl-C (SIGINT) and SIGTERM wait until the block is done, then raise KeyboardInterrupt:
    an emulator being stopped is stopped, never left running behind a traceback. Ignored
    signals stay ignored; off the main thread, nothing changes (Python delivers signals there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hits: list[int] = []
    saved = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if handler in (signal.SIG_IGN, None):
            continue
        saved[sig] = handler
        signal.signal(sig, lambda signum, frame: hits.append(signum))
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    if hits:
        raise KeyboardInterrupt


def terminate(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """Stop a child process (an emulator, a test's helper server): terminate, kill after
    ``grace`` seconds, close its pipes."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()      # SIGKILL cannot be ignored: on a loaded machine reaping may just be slow
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()


class Emulator:
    """``with Emulator(elf, board) as emu: DeviceClient(emu.url)``."""

    def __init__(self, elf: Path, board: str, *, port: Optional[int] = None,
                 log: Callable[[str], None] = print, start_timeout: float = 10.0) -> None:
        self.elf = Path(elf)
        self.board = get_board(board)
        self.port = port
        self.log = log
        self.start_timeout = start_timeout
        self.proc: Optional[subprocess.Popen] = None
        self.url = ""

    def __enter__(self) -> "Emulator":
        try:
            self.start()
        except BaseException:          # Ctrl-C while booting: __exit__ will not run, so stop here
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if not self.elf.is_file():
            raise McuNnError(f"firmware {self.elf} does not exist; run mcu-nn build first")
        if self.board.flash_method == "host":
            self._start_host()
        else:
            self._start_emulator()

    def _start_emulator(self) -> None:
        for _ in range(3):       # a port taken between free_port() and QEMU's bind: try another
            port = self.port or free_port()
            self.proc = subprocess.Popen(qemu_command(self.elf, self.board, port), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if self._wait_listening(port):
                self.port, self.url = port, f"socket://127.0.0.1:{port}"
                return
            err = self._reap()
            if self.port or "ddress already in use" not in err:
                raise McuNnError(f"{self.board.emulator.binary} did not start for {self.board.name}: "
                                 f"{err.strip().splitlines()[-1] if err.strip() else 'no message'}")
        raise McuNnError(f"{self.board.emulator.binary} could not bind a free loopback port after 3 tries")

    def _wait_listening(self, port: int) -> bool:
        """True once QEMU listens. Probing by connecting is safe: with server=on QEMU accepts
        the next client after this one leaves, and the firmware never speaks unasked."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def _start_host(self) -> None:
        self.proc = subprocess.Popen([str(self.elf)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if " on /dev/" not in line:
            err = self._reap()
            raise McuNnError(f"the host board did not start: {(line + err).strip() or 'no message'}")
        self.url = line.rsplit(" on ", 1)[1].strip()

    def _reap(self) -> str:
        err = ""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            try:
                _, err = self.proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self.proc = None
        return err.decode(errors="replace") if isinstance(err, bytes) else (err or "")

    def stop(self) -> None:
        """Terminate the emulator (kill it after 3 s); a Ctrl-C meanwhile is raised once it is gone."""
        interrupted = False
        while self.proc is not None:       # a Ctrl-C landing before the deferral began: stop again
            try:
                with interrupts_deferred():
                    self._stop()
            except KeyboardInterrupt:
                interrupted = True
        if interrupted:
            raise KeyboardInterrupt

    def _stop(self) -> None:
        if self.proc is None:
            return
        terminate(self.proc)
        self.proc = None

    def wait(self) -> int:
        """Block until the emulator exits (flash --listen); returns its exit code."""
        return self.proc.wait() if self.proc else 0
