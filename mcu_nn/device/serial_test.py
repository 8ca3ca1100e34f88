"""``mcu-nn serial-test``: every test vector of an export through the board (RUN, then STEP
one step at a time), compared with the simulator's outputs: zero differing bits for integer
precisions, verify's tolerance for float32."""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from ..boards import BOARDS
from ..compare import describe_rule, differing, saturation_line
from ..exportdir import Export, open_export, vector_lengths
from ..errors import McuNnError
from .client import DeviceClient
from .ports import resolve_port
from .protocol import DeviceInfo



@dataclass
class SerialTestResult:
    ok: bool
    vectors: int
    passed: int
    first_mismatch: str
    mean_cycles_per_step: Optional[float]
    max_cycles_per_step: Optional[float]
    bytes_per_second: float
    cycle_unit: str
    outputs: Optional[np.ndarray]      # the board's RUN outputs, one per vector
    device: Optional[DeviceInfo]
    retransmissions: int = 0


def _mismatch(got: np.ndarray, exp: np.ndarray, precision: str, drift: Optional[float]) -> Optional[np.ndarray]:
    """Boolean mask of differing values, or None when all match (the rule of mcu_nn.compare)."""
    if got.shape != exp.shape:
        return np.ones(exp.shape, bool)
    bad = differing(got[None], exp[None], precision, None if drift is None else np.array([drift]))[0]
    return bad if bad.any() else None


def _describe(i: int, how: str, got: np.ndarray, exp: np.ndarray, bad: np.ndarray) -> str:
    idx = tuple(int(v) for v in np.argwhere(bad)[0]) if got.shape == exp.shape else ()
    where = f" at index {idx}" if idx else f" (shape {got.shape} != {exp.shape})"
    with np.printoptions(threshold=10_000, linewidth=10_000):
        return (f"vector {i} via {how}: {int(bad.sum())} of {exp.size} values differ{where}\n"
                f"  board:     {np.array2string(np.asarray(got))}\n"
                f"  simulator: {np.array2string(np.asarray(exp))}")


def _cycles(ticks: int, info: DeviceInfo) -> tuple[float, str]:
    """The board row's conversion (instructions under QEMU -icount, cycles, ns); a board this
    mcu-nn does not know reports raw ticks of its counter."""
    board = BOARDS.get(info.board)
    if board is not None and board.counter == info.counter:
        return board.counter_units(ticks)
    if info.counter == "timer":
        return ticks * info.clock_hz / info.counter_hz, "cycles (from a timer)"
    return float(ticks), {"cycles": "cycles", "ns": "ns"}.get(info.counter, "ticks")


def check_device(info: DeviceInfo, ex: Export, port: str) -> None:
    """The board must run firmware built from exactly the export's files as they are now: the
    hash it reports is computed at build time from the sources it compiled."""
    if info.sha256 != ex.digest:
        raise McuNnError(
            f"the board on {port} runs model {info.name!r} (sha256 {info.sha256[:16]}…, built for "
            f"{info.board}{', from modified files' if info.modified else ''}), not the export {ex.dir} "
            f"(sha256 {ex.digest[:16]}…); run mcu-nn build {ex.dir} and flash it")


def serial_test(export_dir: Path, *, port: str, timeout: float = 5.0, retries: int = 5,
                log: Callable[[str], None] = print, progress: bool = True,
                allow_modified: bool = False) -> SerialTestResult:
    """Compare the outputs of the board on ``port`` (running, firmware flashed or booted: see
    mcu_nn.onboard for build -> boot -> test) with the simulator's for every test vector. The
    export's files must match model.json (unless ``allow_modified``) and the board's firmware
    must have been built from them."""
    export_dir = Path(export_dir)
    ex = open_export(export_dir, allow_modified=allow_modified)
    if ex.modified:
        log(f"warning: testing modified files ({', '.join(ex.modified)}), as --allow-modified asks")
    manifest = ex.manifest
    inputs, expected = ex.vectors["input_q"], ex.vectors["expected"]
    with board_session(ex, port=port, timeout=timeout, retries=retries, log=log) as client:
        return _compare(client, client.info, inputs, expected, manifest, log, progress,
                        ex.vectors.get("float_drift"), vector_lengths(ex.vectors))


@contextlib.contextmanager
def board_session(ex: Export, *, port: str, timeout: float = 5.0, retries: int = 5,
                  log: Callable[[str], None] = print) -> Iterator[DeviceClient]:
    """A client talking to the running board on ``port`` ("auto": the one known probe's port),
    HELLO done and checked: its firmware was built from exactly ``ex``."""
    if port == "auto":                         # mcu_nn.onboard resolves it (and checks a path) first
        port = resolve_port(port, log)
    if not port:
        raise McuNnError("no serial port given: pass --port (or --board for an emulated board)")
    with DeviceClient(port, timeout=timeout, retries=retries) as client:
        info = client.hello()
        check_device(info, ex, port)
        log(f"board {info.board}: model {info.name} ({info.precision}), sha256 {info.sha256[:16]}… matches "
            f"the export{' (modified on purpose: --allow-modified)' if info.modified else ''}; "
            f"{info.input_size} in / {info.output_size} out per step")
        yield client


def _compare(client: DeviceClient, info: DeviceInfo, inputs: np.ndarray, expected: np.ndarray,
             manifest: dict, log: Callable[[str], None], progress: bool,
             drift: Optional[np.ndarray] = None, lengths: Optional[np.ndarray] = None) -> SerialTestResult:
    precision = manifest["precision"]
    n = inputs.shape[0]
    passed, first, outputs, per_step_ticks = 0, "", [], []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n, desc="serial-test", unit="vector", file=sys.stderr, leave=False)
    try:
        for i in range(n):
            steps = int(lengths[i]) if lengths is not None else inputs.shape[1]
            x = inputs[i, :steps]                         # the padding after a sequence never runs
            exp = expected[i, :steps] if info.output_per_step else expected[i]
            got, ticks = client.run(x)
            if info.output_per_step and steps < inputs.shape[1]:   # pad as the test vectors are
                got_padded = np.zeros((inputs.shape[1],) + got.shape[1:], got.dtype)
                got_padded[:steps] = got
                outputs.append(got_padded)
            else:
                outputs.append(got)
            checks = [("RUN", got)]
            if not info.has_step:
                per_step_ticks.append(ticks / steps)
            else:
                client.reset()
                ys = []
                for t in range(steps):
                    y, tk = client.step(x[t])
                    ys.append(y)
                    per_step_ticks.append(tk)
                checks.append(("STEP", np.stack(ys) if info.output_per_step else ys[-1]))
            ok = True
            for how, g in checks:
                bad = _mismatch(g, exp, precision, None if drift is None else float(drift[i]))
                if bad is not None:
                    ok = False
                    if not first:
                        first = _describe(i, how, g, exp, bad)
            passed += ok
            if bar:
                bar.update(1)
    finally:
        if bar:
            bar.close()
    cyc = [_cycles(int(round(t)), info) for t in per_step_ticks]
    unit = cyc[0][1] if cyc else "cycles"
    mean = float(np.mean([c for c, _ in cyc])) if cyc and info.counter != "none" else None
    mx = float(np.max([c for c, _ in cyc])) if cyc and info.counter != "none" else None
    bps = (client.bytes_sent + client.bytes_received) / client.link_seconds if client.link_seconds else 0.0
    result = SerialTestResult(passed == n, n, passed, first, mean, mx, bps, unit,
                              np.stack(outputs) if outputs else None, info, client.retransmissions)
    kind = "board vs simulator, " + describe_rule(precision, drift)
    log(f"{passed}/{n} vectors passed ({kind}; RUN{'' if info.has_step else ' only'}"
        f"{' and STEP step by step' if info.has_step else ', bidirectional model'})")
    if first:
        log("first mismatch: " + first)
    if precision != "float32":
        log(saturation_line(manifest, "test_vectors", f"on these {n} vectors (simulator"
                            + (" and board alike)" if passed == n else ")")))
    if mean is not None:
        log(f"{unit} per step: mean {mean:,.0f}, max {mx:,.0f}")
    log(f"link: {client.bytes_sent + client.bytes_received:,} bytes at {bps:,.0f} B/s"
        f"{f', {client.retransmissions} retransmissions' if client.retransmissions else ''}")
    return result
