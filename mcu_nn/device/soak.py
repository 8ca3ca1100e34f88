"""``mcu-nn serial-test DIR --soak N``: N random sequences through a board, each compared with
the simulator (bit for bit for integer precisions, verify's tolerance for float32), fast enough
for hundreds of thousands of inferences (docs/soak.md).

* The sequences are drawn by a seeded generator in the model's calibrated input range (token
  ids in the vocabulary), most of the export's sequence length, and every ``long_every``-th one
  much longer (several RUN_DATA chunks, or one STEP per step: the state must carry across
  ``_run`` and ``_step`` calls), so ``--seed`` reproduces a run exactly.
* The simulator computes the expected outputs a batch at a time (``mcu_nn.sim.run`` over all
  the sequences of one length at once, from the export's qmodel.npz); a batch is compared when
  its last sequence is back.
* One RUN_BEGIN + RUN_DATA per sequence, and several sequences in flight
  (:meth:`DeviceClient.run_many`: the next frames go out before the replies arrive), so the
  rate is what the link and the chip allow, not a round trip per request. A frame lost or
  damaged either way makes its whole sequence go again (counted); nothing is passed that was
  not compared.
* It stops at the first mismatch (index, steps, both outputs) and reports sequences,
  inferences (= model steps), retransmissions, elapsed time, rate and the host's peak RSS."""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from ..compare import describe_rule, differing
from ..errors import McuNnError
from ..exportdir import open_export, read_qmodel
from ..results import Shown
from .protocol import DeviceInfo


@dataclass(repr=False)
class SoakResult(Shown):
    ok: bool                      # every sequence sent was compared and matched, and none was left out
    requested: int                # N asked for
    sequences: int                # sequences compared with the simulator
    steps: int                    # inferences: model steps of the compared sequences
    mismatches: int               # sequences that differ (the soak stops at the batch of the first)
    first_mismatch: str
    retransmissions: int          # frames sent again (a lost or damaged frame resends its sequence)
    sequences_resent: int
    link_faults: int              # garbled replies, damaged-request errors, gaps and timeouts seen
    elapsed_s: float
    rss_start_kb: int             # peak RSS (getrusage) once the first batch was compared
    rss_peak_kb: int              # peak RSS at the end
    board: str = ""
    model: str = ""
    precision: str = ""
    rule: str = ""
    seed: int = 0
    seq_len: int = 0              # steps of the ordinary sequences
    long_steps: int = 0           # steps of the long ones
    long_sequences: int = 0       # of which long (compared)
    step_sequences: int = 0       # of which sent one STEP per step
    window: int = 0               # bytes of requests in flight (0: one request at a time)
    mean_cycles_per_step: Optional[float] = None
    cycle_unit: str = ""
    bytes: int = 0                # on the link, both ways
    simulator_s: float = 0.0      # of elapsed_s: the simulator computing expected outputs
    host_cpu_s: float = 0.0       # CPU time of this process (all threads) during the soak
    export_dir: Optional[Path] = None

    @property
    def sequences_per_s(self) -> float:
        return self.sequences / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def rss_growth_kb(self) -> int:
        return self.rss_peak_kb - self.rss_start_kb

    def as_dict(self) -> dict:
        return {"ok": self.ok, "soak": True, "export": None if self.export_dir is None else str(self.export_dir),
                "board": self.board, "model": self.model, "precision": self.precision, "rule": self.rule,
                "seed": self.seed, "requested": self.requested, "sequences": self.sequences,
                "inferences": self.steps, "mismatches": self.mismatches,
                "first_mismatch": self.first_mismatch or None, "retransmissions": self.retransmissions,
                "sequences_resent": self.sequences_resent, "link_faults": self.link_faults,
                "elapsed_s": round(self.elapsed_s, 3), "sequences_per_s": round(self.sequences_per_s, 2),
                "inferences_per_s": round(self.steps_per_s, 1), "rss_start_kb": self.rss_start_kb,
                "rss_peak_kb": self.rss_peak_kb, "rss_growth_kb": self.rss_growth_kb,
                "seq_len": self.seq_len, "long_steps": self.long_steps, "long_sequences": self.long_sequences,
                "step_sequences": self.step_sequences, "window_bytes": self.window,
                "cycle_unit": self.cycle_unit, "mean_cycles_per_step": self.mean_cycles_per_step,
                "link_bytes": self.bytes, "simulator_s": round(self.simulator_s, 3),
                "host_cpu_s": round(self.host_cpu_s, 3)}

    def summary_lines(self) -> list[str]:
        lines = [f"{'ok' if self.ok else 'FAILED'}: soak of {self.sequences:,}/{self.requested:,} sequences, "
                 f"{self.steps:,} inferences on {self.board or '?'}: {self.mismatches} mismatches "
                 f"({self.rule or self.precision})",
                 f"{self.elapsed_s:.1f} s: {self.sequences_per_s:,.1f} sequences/s, {self.steps_per_s:,.0f} "
                 f"inferences/s; {self.retransmissions:,} retransmissions ({self.sequences_resent:,} sequences "
                 f"resent, {self.link_faults:,} link faults)",
                 f"host peak RSS {self.rss_start_kb / 1024:.1f} MiB after the first batch, "
                 f"{self.rss_peak_kb / 1024:.1f} MiB at the end (growth {self.rss_growth_kb:,} KiB)",
                 f"time: {self.simulator_s:.1f} s in the simulator, {self.host_cpu_s:.1f} s of host CPU in all "
                 f"(the rest of the {self.elapsed_s:.1f} s is the board and its link: "
                 f"{self.bytes / max(self.elapsed_s, 1e-9):,.0f} B/s)"]
        if self.mean_cycles_per_step is not None:
            lines.append(f"{self.cycle_unit} per step: mean {self.mean_cycles_per_step:,.0f}")
        if self.first_mismatch:
            lines.append("first mismatch: " + self.first_mismatch)
        return lines

    def text(self) -> str:
        return "\n".join(self.summary_lines())


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak_rss_kb() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)      # KiB on Linux


class _Batch:
    """Sequences [start, start + count): inputs, what the chip receives, the simulator's outputs,
    grouped by length (a group is one vectorised simulator run) and the board's outputs as they
    come back."""

    def __init__(self, start: int, groups: list, hows: dict) -> None:
        self.start = start
        self.groups = groups        # [(indices (k,), chip inputs (k, T, ...), expected (k, ...), drift|None, long)]
        self.hows = hows            # index -> "run" | "step"
        self.got: dict[int, np.ndarray] = {}
        self.ticks = 0
        self.count = sum(len(g[0]) for g in groups)

    def items(self) -> Iterator[tuple[int, np.ndarray, str]]:
        where = {}
        for gi, (idx, *_) in enumerate(self.groups):
            for k, i in enumerate(idx):
                where[int(i)] = (gi, k)
        for i in sorted(where):
            gi, k = where[i]
            yield i, self.groups[gi][1][k], self.hows.get(i, "run")


def _simulate(q: Any, x: np.ndarray) -> np.ndarray:
    """The simulator's outputs for the inputs ``x`` (N, T, F) (token ids (N, T)), all at once."""
    from .. import sim
    return np.asarray(sim.run(q, x))


class _Plan:
    """The seeded sequences of a soak, made a batch at a time."""

    def __init__(self, q: Any, info: DeviceInfo, n: int, seed: int, batch: int, long_every: int,
                 long_steps: Optional[int], per_chunk: int) -> None:
        self.q, self.info, self.n, self.batch = q, info, n, max(1, batch)
        self.sim_s = 0.0
        self.rng = np.random.default_rng(seed)
        self.seq_len = max(1, int(q.seq_len or 1))
        if info.max_steps:
            self.seq_len = min(self.seq_len, info.max_steps)
        self.long_every = long_every
        self.long_steps = int(long_steps) if long_steps else max(20 * self.seq_len, 3 * per_chunk + 1)
        if info.max_steps:
            self.long_steps = min(self.long_steps, info.max_steps)
        self.tokens = q.input_kind == "tokens"
        cal = (getattr(q, "calibration", None) or {}).get("input") or {}
        if self.tokens:
            self.lo, self.hi = 0, q.input_size
        elif "min" in cal and "max" in cal and cal["max"] > cal["min"]:
            self.lo, self.hi = float(cal["min"]), float(cal["max"])
        elif q.precision != "float32":
            r = 32767 * float(q.input_scale)
            self.lo, self.hi = -r, r
        else:
            self.lo, self.hi = -1.0, 1.0

    def is_long(self, i: int) -> bool:
        return self.long_every > 0 and i % self.long_every == self.long_every - 1

    def _draw(self, k: int, steps: int) -> np.ndarray:
        if self.tokens:
            return self.rng.integers(self.lo, self.hi, size=(k, steps)).astype(np.int64)
        return self.rng.uniform(self.lo, self.hi, size=(k, steps, self.q.input_size)).astype(np.float32)

    def batches(self) -> Iterator[_Batch]:
        from ..codegen.export import _float_drift, chip_input
        q, fp32 = self.q, self.q.precision == "float32"
        ctype = np.float32 if fp32 else (np.int32 if self.tokens else np.int16)
        for start in range(0, self.n, self.batch):
            idx = np.arange(start, min(start + self.batch, self.n))
            long_ = np.array([self.is_long(int(i)) for i in idx], bool)
            groups, hows, nlong = [], {}, 0
            for sel, steps, is_long in ((idx[~long_], self.seq_len, False), (idx[long_], self.long_steps, True)):
                if not len(sel):
                    continue
                x = self._draw(len(sel), steps)
                t = time.perf_counter()
                exp = _simulate(q, x)
                drift = _float_drift(q, x, np.asarray(exp, np.float32)) if fp32 else None
                self.sim_s += time.perf_counter() - t
                groups.append((sel, np.ascontiguousarray(chip_input(q, x).astype(ctype)), exp, drift, is_long))
            for i in idx[long_]:                   # every other long sequence one STEP per step
                nlong += 1
                if self.info.has_step and nlong % 2 == 0:
                    hows[int(i)] = "step"
            yield _Batch(start, groups, hows)


def soak(export_dir: Path, n: int, *, port: str, seed: int = 0, timeout: float = 5.0, retries: int = 5,
         log: Callable[[str], None] = print, progress: bool = True, allow_modified: bool = False,
         window: Optional[int] = None, batch: int = 256, long_every: int = 64,
         long_steps: Optional[int] = None, report_every: float = 5.0) -> SoakResult:
    """``n`` seeded random sequences through the board on ``port`` (running the export's
    firmware), each compared with the simulator. ``window``: bytes of requests in flight
    (default 8192 on ``socket://`` ports, i.e. emulators, whose UART holds the sender back;
    0 on other ports: a real UART without flow control would lose bytes the chip cannot take
    while it computes). ``batch`` sequences are simulated and compared at a time;
    every ``long_every``-th is ``long_steps`` long (default 20 x the export's sequence length,
    at least three RUN_DATA chunks), every other one of those sent one STEP per step."""
    from .serial_test import _cycles, board_session
    from ..progress import bar as progress_bar
    if n < 1:
        raise McuNnError(f"--soak needs at least 1 sequence, got {n}")
    export_dir = Path(export_dir)
    ex = open_export(export_dir, allow_modified=allow_modified)
    if ex.modified:
        log(f"warning: testing modified files ({', '.join(ex.modified)}), as --allow-modified asks")
    q = read_qmodel(ex)
    if q is None:
        raise McuNnError(f"{export_dir} has no qmodel.npz (the quantised model the simulator runs the soak's "
                         "random sequences on): it was exported by an older mcu-nn; re-run mcu-nn export")
    if window is None:
        window = 8192 if port.startswith("socket://") else 0
    precision = ex.manifest["precision"]
    with board_session(ex, port=port, timeout=timeout, retries=retries, log=log) as client:
        info = client.info
        plan = _Plan(q, info, n, seed, batch, long_every, long_steps, client._steps_per_chunk())
        log(f"soak: {n:,} sequences (seed {seed}) of {plan.seq_len} steps, every {long_every}th of "
            f"{plan.long_steps} (RUN_DATA chunks or STEP), inputs in [{plan.lo:.4g}, {plan.hi:.4g}]"
            f"{'' if window else ', one request at a time'}")
        pending: dict[int, _Batch] = {}          # batch start -> batch in flight
        state = dict(sequences=0, steps=0, longs=0, stepped=0, mismatches=0, first="", ticks=0, rss0=0)
        drifts: list[float] = []

        def items() -> Iterator[tuple[Any, np.ndarray, str]]:
            for b in plan.batches():
                pending[b.start] = b
                for i, x, how in b.items():
                    yield i, x, how

        def compare(b: _Batch) -> None:
            for idx, chip, exp, drift, _ in b.groups:
                got = np.stack([b.got[int(i)] for i in idx])
                bad = differing(got, exp, precision, drift).reshape(len(idx), -1)
                if drift is not None:
                    drifts.append(float(np.max(drift)))
                rows = np.flatnonzero(bad.any(axis=1))
                state["mismatches"] += len(rows)
                if len(rows) and (not state["first"] or int(idx[rows[0]]) < state["first_i"]):
                    r = int(rows[0])
                    state["first_i"] = int(idx[r])
                    state["first"] = _describe(int(idx[r]), chip.shape[1], b.hows.get(int(idx[r]), "run"),
                                               got[r], exp[r], bad[r].reshape(got[r].shape))
            for idx, chip, _, _, is_long in b.groups:
                state["sequences"] += len(idx)
                state["steps"] += len(idx) * chip.shape[1]
                state["longs"] += len(idx) if is_long else 0
            state["stepped"] += sum(1 for h in b.hows.values() if h == "step")
            state["ticks"] += b.ticks

        bar = progress_bar(total=n, desc="soak", unit="seq") if progress else None
        cpu0 = _cpu_s()
        t0 = time.monotonic()
        next_report = t0 + report_every
        done = 0
        try:
            stream = client.run_many(items(), window=window)
            for i, y, ticks in stream:
                b = pending[i - i % plan.batch]
                b.got[i] = y
                b.ticks += ticks
                done += 1
                if bar is not None:
                    bar.update(1)
                if len(b.got) == b.count:
                    del pending[b.start]
                    compare(b)
                    if not state["rss0"]:
                        state["rss0"] = _peak_rss_kb()
                    if state["mismatches"]:
                        stream.close()
                        log(f"soak: mismatch after {state['sequences']:,} sequences: {state['first']}")
                        break
                now = time.monotonic()
                if now >= next_report:
                    next_report = now + report_every
                    dt = now - t0
                    log(f"soak: {done:,}/{n:,} sequences, {state['steps']:,} inferences compared, "
                        f"{done / dt:,.1f} sequences/s, {state['steps'] / dt:,.0f} inferences/s, "
                        f"{client.retransmissions:,} retransmissions, {state['mismatches']} mismatches, "
                        f"peak RSS {_peak_rss_kb() / 1024:.1f} MiB")
        finally:
            if bar is not None:
                bar.close()
        elapsed = time.monotonic() - t0
        mean = unit = None
        if state["steps"] and info.counter != "none":
            mean, unit = _cycles(int(round(state["ticks"] / state["steps"])), info)
            mean = float(mean)
        peak = _peak_rss_kb()
        rule = describe_rule(precision, np.array(drifts) if drifts else None)
        result = SoakResult(
            ok=state["mismatches"] == 0 and state["sequences"] == n, requested=n, sequences=state["sequences"],
            steps=state["steps"], mismatches=state["mismatches"], first_mismatch=state["first"],
            retransmissions=client.retransmissions, sequences_resent=client.sequences_resent,
            link_faults=client.link_faults, elapsed_s=elapsed, rss_start_kb=state["rss0"] or peak,
            rss_peak_kb=peak, board=info.board, model=info.name, precision=precision, rule=rule, seed=seed,
            seq_len=plan.seq_len, long_steps=plan.long_steps, long_sequences=state["longs"],
            step_sequences=state["stepped"], window=window, mean_cycles_per_step=mean, cycle_unit=unit or "",
            bytes=client.bytes_sent + client.bytes_received, simulator_s=plan.sim_s, host_cpu_s=_cpu_s() - cpu0,
            export_dir=export_dir)
    for line in result.summary_lines():
        log(line)
    return result


def _describe(i: int, steps: int, how: str, got: np.ndarray, exp: np.ndarray, bad: np.ndarray) -> str:
    where = tuple(int(v) for v in np.argwhere(bad)[0])
    with np.printoptions(threshold=2000, linewidth=10_000, edgeitems=8):
        return (f"sequence {i} ({steps} steps via "
                f"{'STEP' if how == 'step' else 'RUN'}): {int(bad.sum())} of {exp.size} values differ "
                f"at index {where}\n  board:     {np.array2string(np.asarray(got))}\n"
                f"  simulator: {np.array2string(np.asarray(exp))}")
