"""``mcu-nn serial-test``: sequences through the board (RUN, and STEP one step at a time for the
export's test vectors), compared with the simulator's outputs: zero differing bits for integer
precisions, verify's tolerance for float32.

By default the sequences are the export's test vectors. With ``inputs`` (``--inputs FILE``) they
are the user's own, of any lengths (mcu_nn.userdata): the simulator runs them from the export's
qmodel.npz, and the board's outputs are also measured against the float model (float_model.npz:
SNR, top-1 agreement) and, with ``labels``, against the true classes (accuracy of the board and
of the float model)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from ..boards import BOARDS
from ..compare import describe_rule, differing, saturation_line
from ..exportdir import Export, open_export, read_float_model, read_qmodel, vector_lengths
from ..errors import McuNnError
from .client import DeviceClient
from .ports import resolve_port
from .protocol import DeviceInfo
from ..results import Shown


@dataclass(repr=False)
class SerialTestResult(Shown):
    ok: bool                               # every sequence matched the simulator (the rule: ``rule``)
    vectors: int                           # sequences run (test vectors or the user's)
    passed: int
    first_mismatch: str
    mean_cycles_per_step: Optional[float]
    max_cycles_per_step: Optional[float]
    bytes_per_second: float
    cycle_unit: str
    outputs: Optional[np.ndarray]      # the board's RUN outputs, one per sequence (per-step ones zero-padded)
    device: Optional[DeviceInfo]
    retransmissions: int = 0
    export_dir: Optional[Path] = None
    precision: str = ""
    inputs: str = "test_vectors"          # where the sequences came from: test_vectors, a file, or "arrays"
    lengths: Optional[np.ndarray] = None  # (N,) steps of each sequence
    rule: str = ""                        # what "matched" means (describe_rule)
    step_checked: bool = True             # STEP step by step was compared too, not only RUN
    float_model: bool = False             # the float metrics below were measured (the export has the float model)
    snr_db: Optional[float] = None        # board vs float model, over every output value
    max_abs_error: Optional[float] = None
    top1_agreement: Optional[float] = None    # classifiers: fraction of sequences with the float model's argmax
    labels: Optional[int] = None          # how many labels were given
    board_accuracy: Optional[float] = None    # fraction of sequences whose board argmax is the label
    float_accuracy: Optional[float] = None    # the same for the float model
    saturation: dict = field(default_factory=dict)   # where the simulator (and board) clipped on these inputs
    whole_firmware: Optional[dict] = None  # flash/RAM of the firmware booted (emulated boards; unknown on a port)

    @property
    def sequences(self) -> int:
        return self.vectors

    def as_dict(self) -> dict:
        """Plain values for ``--json`` (docs/validation.md lists the fields)."""
        d = self.device
        return {
            "ok": self.ok, "export": None if self.export_dir is None else str(self.export_dir),
            "board": d.board if d else None, "model": d.name if d else None, "precision": self.precision,
            "inputs": self.inputs, "sequences": self.vectors, "passed": self.passed, "rule": self.rule,
            "first_mismatch": self.first_mismatch or None, "step_checked": self.step_checked,
            "float_model": self.float_model, "snr_db": self.snr_db, "max_abs_error": self.max_abs_error,
            "top1_agreement": self.top1_agreement, "labels": self.labels,
            "board_accuracy": self.board_accuracy, "float_accuracy": self.float_accuracy,
            "saturation": self.saturation,
            "cycle_unit": self.cycle_unit, "mean_cycles_per_step": self.mean_cycles_per_step,
            "max_cycles_per_step": self.max_cycles_per_step, "bytes_per_second": self.bytes_per_second,
            "retransmissions": self.retransmissions, "whole_firmware": self.whole_firmware,
        }

    def summary_lines(self) -> list[str]:
        d = self.device
        what = {"test_vectors": "test vectors", "arrays": "sequences"}.get(self.inputs, f"sequences of {self.inputs}")
        lines = [f"{'ok' if self.ok else 'FAILED'}: {self.passed}/{self.vectors} {what} match the simulator on "
                 f"{d.board if d else '?'} ({self.rule or self.precision})"]
        if self.float_model:
            snr = "inf" if self.snr_db is not None and np.isinf(self.snr_db) else \
                ("n/a" if self.snr_db is None else f"{self.snr_db:.1f}")
            line = f"board vs float model: SNR {snr} dB, max |error| {self.max_abs_error:.3g}"
            if self.top1_agreement is not None:
                line += f", top-1 agreement {100 * self.top1_agreement:.1f}%"
            lines.append(line)
        if self.labels is not None:
            fa = "n/a (no float model)" if self.float_accuracy is None else f"{100 * self.float_accuracy:.1f}%"
            lines.append(f"accuracy on {self.labels} labels: board {100 * self.board_accuracy:.1f}%, float model {fa}")
        if self.mean_cycles_per_step is not None:
            lines.append(f"{self.cycle_unit} per step: mean {self.mean_cycles_per_step:,.0f}, "
                         f"max {self.max_cycles_per_step:,.0f}")
        if self.first_mismatch:
            lines.append("first mismatch: " + self.first_mismatch.splitlines()[0])
        return lines

    def __repr__(self) -> str:
        return "SerialTestResult(\n" + "".join(f"  {ln}\n" for ln in self.summary_lines()) + ")"


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


@dataclass
class Sequences:
    """What serial-test sends and expects, prepared (and checked) before any board is booted."""
    source: str                        # "test_vectors", a file, or "arrays"
    x: np.ndarray                      # the model inputs as floats (or token ids), zero-padded
    lengths: np.ndarray                # (N,) steps of each sequence
    labels: Optional[np.ndarray]       # (N,) classes, or None
    chip_in: np.ndarray                # what the chip receives
    expected: np.ndarray               # the simulator's outputs
    drift: Optional[np.ndarray]        # float32: per-sequence float32-vs-float64 drift (mcu_nn.compare)
    saturation: dict                   # where the simulator clips on them
    float_ref: Optional[np.ndarray]    # the float model's outputs, when the export holds it

    @property
    def user(self) -> bool:
        return self.source != "test_vectors"


def prepare_sequences(export_dir: Path, inputs: Any = None, labels: Any = None, *, allow_modified: bool = False,
                      log: Callable[[str], None] = print) -> Sequences:
    """The export's test vectors (``inputs`` None) or the user's ``inputs`` with ``labels``, checked
    against the export, with the simulator's and (when the export holds it) the float model's
    outputs on them. Bad inputs raise one McuNnError line."""
    ex = open_export(Path(export_dir), allow_modified=allow_modified)
    manifest = ex.manifest
    graph = read_float_model(ex)
    if inputs is None:
        if labels is not None:
            raise McuNnError("labels need the sequences they label: pass --inputs FILE with --labels")
        v = ex.vectors
        seqs = Sequences("test_vectors", v.get("input", v["input_q"]), vector_lengths(v), None, v["input_q"],
                         v["expected"], v.get("float_drift"),
                         manifest.get("saturation", {}).get("test_vectors") or {}, None)
    else:
        seqs = Sequences(*_user_sequences(ex, inputs, labels, graph, log), None)
    if graph is not None and (seqs.user or "input" in ex.vectors):
        seqs.float_ref = _float_reference(graph, seqs.x, seqs.lengths, manifest["output_per_step"])
    return seqs


def serial_test(export_dir: Path, *, port: str, timeout: float = 5.0, retries: int = 5,
                log: Callable[[str], None] = print, progress: bool = True,
                allow_modified: bool = False, inputs: Any = None, labels: Any = None,
                check_step: Optional[bool] = None) -> SerialTestResult:
    """Compare the outputs of the board on ``port`` (running, firmware flashed or booted: see
    mcu_nn.onboard for build -> boot -> test) with the simulator's for every test vector, or for
    the user's ``inputs`` (an array (N, T, F), a list of sequences of any lengths, or a file:
    see mcu_nn.userdata; or a prepared :class:`Sequences`) with optional ``labels`` (an array,
    a key of the inputs .npz, or a .npy/.npz file: one integer class per sequence). When the
    export holds the float model the board's outputs are also measured against it.
    ``check_step``: also run STEP step by step (default: for the test vectors only; the user's
    sequences go through RUN). The export's files must match model.json (unless
    ``allow_modified``) and the board's firmware must have been built from them."""
    export_dir = Path(export_dir)
    ex = open_export(export_dir, allow_modified=allow_modified)
    if ex.modified:
        log(f"warning: testing modified files ({', '.join(ex.modified)}), as --allow-modified asks")
    manifest = ex.manifest
    seqs = inputs if isinstance(inputs, Sequences) else \
        prepare_sequences(export_dir, inputs, labels, allow_modified=allow_modified, log=log)
    step = (not seqs.user) if check_step is None else check_step
    with board_session(ex, port=port, timeout=timeout, retries=retries, log=log) as client:
        result = _compare(client, client.info, seqs.chip_in, seqs.expected, manifest, log, progress, seqs.drift,
                          seqs.lengths, check_step=step, noun="sequences" if seqs.user else "vectors",
                          saturation=seqs.saturation,
                          sat_where=f"on these {len(seqs.lengths)} sequences" if seqs.user else None)
    result.export_dir, result.inputs, result.lengths = export_dir, seqs.source, seqs.lengths
    result.saturation = seqs.saturation
    y = seqs.labels
    if seqs.float_ref is not None:
        _float_metrics(result, seqs.float_ref, manifest, y)
        line = f"board vs float model: SNR {result.snr_db:.1f} dB, max |error| {result.max_abs_error:.3g}"
        if result.top1_agreement is not None:
            line += f", top-1 agreement {100 * result.top1_agreement:.1f}% of {result.vectors} sequences"
        log(line)
    elif y is not None:
        result.labels = len(y)
        result.board_accuracy = _accuracy(_board_rows(result.outputs, manifest, seqs.lengths), y)
    if y is not None:
        fa = "n/a (no float model)" if result.float_accuracy is None else f"{100 * result.float_accuracy:.1f}%"
        log(f"accuracy on {len(y)} labels: board {100 * result.board_accuracy:.1f}%, float model {fa}")
    return result


def _user_sequences(ex: Export, inputs: Any, labels: Any, graph, log: Callable[[str], None]):
    """The user's sequences, checked, with the simulator's outputs on them (from qmodel.npz) and
    what the chip receives."""
    from ..codegen.export import _float_drift, chip_input, run_padded, saturation_counts
    from ..sim import run
    from ..userdata import load_user_data
    m = ex.manifest
    q = read_qmodel(ex)
    if q is None:
        raise McuNnError(f"{ex.dir} has no qmodel.npz (the quantised model the simulator runs on your inputs): "
                         f"it was exported by an older mcu-nn; re-run mcu-nn export")
    classes = m["output_size"] if not m["output_per_step"] and m["output_size"] > 1 else None
    data = load_user_data(inputs, q, labels, classifier=classes, max_steps=m["max_steps"])
    if graph is None:
        log(f"note: {ex.dir} has no float_model.npz (exported by an older mcu-nn): board == simulator is "
            "checked, but SNR and top-1 agreement against the float model need it; re-run mcu-nn export")
    x, lengths = data.x, data.lengths
    n = len(lengths)
    steps = f"{lengths.min()}" if lengths.min() == lengths.max() else f"{lengths.min()}..{lengths.max()}"
    log(f"{n} sequences of {steps} steps from {data.source}"
        f"{f', {n} labels' if data.labels is not None else ''}")
    ln = None if np.all(lengths == x.shape[1]) else lengths
    expected = run_padded(lambda xs: run(q, xs), x, ln, q.output_per_step)
    fp32, tokens = q.precision == "float32", q.input_kind == "tokens"
    chip_in = chip_input(q, x).astype(np.float32 if fp32 else (np.int32 if tokens else np.int16))
    drift = _float_drift(q, x, np.asarray(expected, np.float32), ln) if fp32 else None
    sat = saturation_counts(q, x, ln)
    return data.source, x, lengths, data.labels, chip_in, expected, drift, sat


def _float_reference(graph, x: np.ndarray, lengths: np.ndarray, per_step: bool) -> np.ndarray:
    from ..codegen.export import run_padded
    from ..sim import run_float
    ln = None if np.all(lengths == x.shape[1]) else lengths
    return np.asarray(run_padded(lambda xs: run_float(graph, xs), x, ln, per_step), np.float64)


def _rows(a: np.ndarray, lengths: np.ndarray, per_step: bool) -> np.ndarray:
    """Output vectors (K, O): one per sequence, or one per real step (padding left out)."""
    if not per_step:
        return a.reshape(a.shape[0], -1)
    return np.concatenate([a[i, :int(n)] for i, n in enumerate(lengths)])


def _board_rows(outputs: np.ndarray, m: dict, lengths: np.ndarray) -> np.ndarray:
    from ..fixedpoint import dequantize
    got = np.asarray(outputs, np.float32) if m["precision"] == "float32" else dequantize(outputs, m["output_scale"])
    return _rows(np.asarray(got, np.float64), lengths, m["output_per_step"])


def _accuracy(rows: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(rows, axis=-1) == y))


def _float_metrics(result: SerialTestResult, ref: np.ndarray, m: dict, y: Optional[np.ndarray]) -> None:
    from ..quant.metrics import max_abs_error, snr_db, top1_agreement
    got = _board_rows(result.outputs, m, result.lengths)
    want = _rows(ref, result.lengths, m["output_per_step"])
    result.float_model = True
    result.snr_db = float(snr_db(want, got))
    result.max_abs_error = float(max_abs_error(want, got))
    if not m["output_per_step"] and m["output_size"] > 1:
        result.top1_agreement = float(top1_agreement(want, got))
    if y is not None:
        result.labels = len(y)
        result.board_accuracy = _accuracy(got, y)
        result.float_accuracy = _accuracy(want, y)


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
             drift: Optional[np.ndarray] = None, lengths: Optional[np.ndarray] = None, *,
             check_step: bool = True, noun: str = "vectors", saturation: Optional[dict] = None,
             sat_where: Optional[str] = None) -> SerialTestResult:
    from ..progress import bar as progress_bar
    precision = manifest["precision"]
    n = inputs.shape[0]
    passed, first, outputs, per_step_ticks = 0, "", [], []
    stepping = info.has_step and check_step
    bar = progress_bar(total=n, desc="serial-test", unit="sequence") if progress else None
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
            if not stepping:
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
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    cyc = [_cycles(int(round(t)), info) for t in per_step_ticks]
    unit = cyc[0][1] if cyc else "cycles"
    mean = float(np.mean([c for c, _ in cyc])) if cyc and info.counter != "none" else None
    mx = float(np.max([c for c, _ in cyc])) if cyc and info.counter != "none" else None
    bps = (client.bytes_sent + client.bytes_received) / client.link_seconds if client.link_seconds else 0.0
    rule = describe_rule(precision, drift)
    result = SerialTestResult(passed == n, n, passed, first, mean, mx, bps, unit,
                              np.stack(outputs) if outputs else None, info, client.retransmissions,
                              precision=precision, rule=rule, step_checked=stepping)
    how = ("RUN and STEP step by step" if stepping else
           "RUN only" + ("" if info.has_step else ", bidirectional model"))
    log(f"{passed}/{n} {noun} passed (board vs simulator, {rule}; {how})")
    if first:
        log("first mismatch: " + first)
    if precision != "float32":
        if sat_where is None:
            log(saturation_line(manifest, "test_vectors", f"on these {n} vectors (simulator"
                                + (" and board alike)" if passed == n else ")")))
        else:
            log(saturation_line({"saturation": {"inputs": saturation or {}}}, "inputs",
                                f"{sat_where} (simulator" + (" and board alike)" if passed == n else ")")))
    if mean is not None:
        log(f"{unit} per step: mean {mean:,.0f}, max {mx:,.0f}")
    log(f"link: {client.bytes_sent + client.bytes_received:,} bytes at {bps:,.0f} B/s"
        f"{f', {client.retransmissions} retransmissions' if client.retransmissions else ''}")
    return result
