"""Benchmark a fixed set of recurrent layers on every emulated board and write bench/RESULTS.md.

    python bench/run.py                      # the whole bench/RESULTS.md (every core, goals, cells)
    python bench/run.py --out FILE           # the same, written to FILE
    python bench/run.py --board qemu-mps3-an547 --shape lstm:16x32   # a subset, printed only
    python bench/run.py --quick              # Cortex-M4F only (DSP and portable), printed only
    python bench/run.py --cores [--board B]  # only the at-a-glance table, one column per core
    python bench/run.py --cells              # only the hand-written cells table (issue 9)

Every model is a single layer, batch 1, with seeded random weights quantised by mcu-nn's own
quantiser (mcu_nn.quant.quantize) and exported by mcu_nn.codegen.write_export. Each figure is one
`mcu-nn bench` measurement (mcu_nn.bench.bench_export): QEMU -icount (exact instruction counts)
or simavr (exact CPU cycles), steady-state step, outputs checked bit for bit against the
simulator on the board. Runs the measurements on ``--jobs`` worker threads (each measurement is
a compiler and an emulator process), prints one line per measurement as it finishes, and exits
1 if any measurement failed (its cell says why); a model that does not fit a board (linker
region overflow, or an array over avr-gcc's 32 KiB object limit) is a result, not a failure.
"""
# no `from __future__ import annotations`: the dataclasses below then need no sys.modules entry,
# so tests can load this script with importlib as they always have
import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from mcu_nn.arch import ARCHES  # noqa: E402
from mcu_nn.bench import BOARDS, BenchResult, bench_export  # noqa: E402
from mcu_nn.cells import cell_of, cells  # noqa: E402
from mcu_nn.errors import McuNnError  # noqa: E402
from mcu_nn.codegen import write_export  # noqa: E402
from mcu_nn.ir import DirectionWeights, Graph, Recurrent  # noqa: E402
from mcu_nn.quant import quantize  # noqa: E402
from mcu_nn.sim import run  # noqa: E402
from mcu_nn.sim.float_sim import run_float  # noqa: E402

SHAPES = [("lstm", 16, 32), ("lstm", 40, 64), ("gru", 16, 32), ("gru", 40, 64)]
PRECISIONS = ("int8", "int16", "float32")
STEPS, VECTORS = 8, 4
DEFAULT_OUT = HERE / "RESULTS.md"
M4F = "qemu-mps2-an386"
WITH_PORTABLE = (M4F, "qemu-mps2-an385", "qemu-microbit")    # a column of the same export built with -DMCUNN_PORTABLE

# hand-written cells (issue 9): each cell unit beside the fused kernel of the nn module it extends
CELL_PAIRS = [("lstm", "peephole_lstm"), ("gru", "gru_reset_before")]
CELL_SHAPES = [(16, 32), (40, 64)]

# CMSIS-NN: reproduced figures (bench/cmsis_nn, written by its own harness) if present, else the
# published ones. Keys of results.json: {"cmsis_nn_commit": str, "results": {board: {"arm_lstm_unidirectional_s16 16x32":
# {"instructions_per_step": N, "flash_bytes": N, "ram_bytes": N}, "s8 40x64": {...}}}}.
CMSIS_JSON = HERE / "cmsis_nn" / "results.json"
PUBLISHED_CMSIS = {   # (board, kernel, I, H) -> (instructions per step, source)
    (M4F, "s16", 16, 32): (37070, "published: issue 4, same emulated Cortex-M4, -O2"),
    (M4F, "s16", 40, 64): (106500, "published: issue 4, same emulated Cortex-M4, -O2"),
    ("qemu-mps3-an547", "s8", 40, 64): (31078, "published: issue 14"),
    ("qemu-mps3-an547", "s16", 16, 32): (22500, "published: issue 14, approximate (~)"),
}

SIM_GOAL = 100_000


# ---------------------------------------------------------------------------------------------
# the models

def make_graph(kind: str, i: int, h: int, seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    k = 1.0 / math.sqrt(h)
    g = cell_of(kind).n_gates * h
    u = lambda *s: rng.uniform(-k, k, s).astype(np.float32)  # noqa: E731
    d = DirectionWeights(u(g, i), u(g, h), u(g), u(g))
    if "peephole" in cell_of(kind).extra_params:
        d.extra["peephole"] = u(3, h)
    return Graph(f"{kind}{i}x{h}", "float", i, STEPS, [Recurrent(kind, i, h, 0, False, [d], "bench")])


def export(kind: str, i: int, h: int, precision: str, layout: str, out: Path) -> Path:
    graph = make_graph(kind, i, h)
    rng = np.random.default_rng(1)
    calib = rng.normal(0, 1, (32, STEPS, i)).astype(np.float32)
    x = rng.normal(0, 1, (VECTORS, STEPS, i)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize(graph, calib, precision)
    expected = run_float(graph, x) if precision == "float32" else run(q, x)
    d = out / f"{kind}{i}x{h}_{precision}_{layout}"
    write_export(q, d, x, expected, weight_layout=layout)
    return d


# ---------------------------------------------------------------------------------------------
# what to measure

@dataclass(frozen=True)
class Job:
    kind: str
    i: int
    h: int
    precision: str
    layout: str
    board: str
    portable: bool = False

    @property
    def model(self) -> tuple:
        return (self.kind, self.i, self.h, self.precision, self.layout)

    def label(self) -> str:
        extra = (" wide" if self.layout == "wide" else "") + (" portable" if self.portable else "")
        return f"{self.board}{extra} {layer_label(self.kind, self.i, self.h)} {self.precision}"


@dataclass
class Outcome:
    result: Optional[BenchResult] = None
    error: Optional[str] = None          # why there is no figure
    fits: bool = True                    # False: the model does not fit the board (a result)
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.result is None and self.fits


def layer_label(kind: str, i: int, h: int) -> str:
    return f"{kind.upper() if kind in ('lstm', 'gru') else kind} I={i} H={h}"


def has_fpu(board: str) -> bool:
    return "fpu" in BOARDS[board].arch.features


def is_avr(board: str) -> bool:
    return BOARDS[board].counter == "cycles"


def board_order(only: Optional[list[str]] = None) -> list[str]:
    """Every emulated board the bench runs on, smallest Arm core first, then RISC-V, then AVR."""
    order = list(ARCHES)
    names = [n for n in BOARDS if not only or n in only]
    return sorted(names, key=lambda n: (is_avr(n), BOARDS[n].arch.name.startswith("rv"),
                                        order.index(BOARDS[n].arch.name), n))


def core_jobs(boards: list[str], shapes: list[tuple]) -> list[Job]:
    """Per core: every shape x precision (float32 where the core has an FPU); the M4F, M3 and M0
    also compiled with -DMCUNN_PORTABLE."""
    jobs = []
    for b in boards:
        for kind, i, h in shapes:
            for p in PRECISIONS:
                if p == "float32" and not has_fpu(b):
                    continue
                jobs.append(Job(kind, i, h, p, "packed", b))
                if b in WITH_PORTABLE:
                    jobs.append(Job(kind, i, h, p, "packed", b, portable=True))
    return jobs


def wide_jobs(boards: list[str], shapes: list[tuple]) -> list[Job]:
    return [Job(kind, i, h, "int8", "wide", b) for b in boards if BOARDS[b].arch.dsp for kind, i, h in shapes]


def cell_jobs(shapes: Optional[list[tuple]] = None) -> list[Job]:
    jobs = []
    for fused, unit in CELL_PAIRS:
        for i, h in CELL_SHAPES:
            if shapes and (fused, i, h) not in shapes:
                continue
            for p in ("int8", "int16"):
                for kind in (fused, unit):
                    jobs += [Job(kind, i, h, p, "packed", M4F), Job(kind, i, h, p, "packed", M4F, portable=True)]
    return jobs


# ---------------------------------------------------------------------------------------------
# measuring

_OVERFLOW = re.compile(r"region [`'](\w+)' overflowed by (\d+) bytes")


def classify(message: str) -> tuple[str, bool]:
    """(cell text, fits) for a failed bench: a linker region overflow or avr-gcc's 32 KiB object
    limit is "does not fit" (a result), anything else a failure."""
    m = _OVERFLOW.search(message)
    if m:
        region = "RAM" if m.group(1).lower() in ("data", "ram", "bss") else "flash"
        return f"does not fit ({region} overflowed by {int(m.group(2)):,} B)", False
    if "size of array" in message and "too large" in message:
        m = re.search(r"size of array [‘'`]?(\w+)", message)
        what = f"`{m.group(1)}`" if m else "an array"
        return f"does not build ({what} is over avr-gcc's 32 KiB object limit)", False
    return "FAILED: " + message.replace("|", "/").replace("\n", " ")[:300], True


def measure(jobs: list[Job], workers: int, tmp: Path, bench=bench_export, exporter=export) -> dict[Job, Outcome]:
    """Export each model once, then bench every job on ``workers`` threads; prints a line per
    job as it finishes."""
    exports: dict[tuple, Path | Exception] = {}     # a failed export is remembered, not retried per job
    lock = threading.Lock()         # one export at a time (CPU-bound Python; the cell registry loads lazily)
    cells()                         # ... so load it before the threads start
    outcomes: dict[Job, Outcome] = {}

    def one(job: Job) -> Outcome:
        t0 = time.perf_counter()
        try:
            with lock:
                if job.model not in exports:
                    try:
                        exports[job.model] = exporter(*job.model, tmp)
                    except Exception as e:  # noqa: BLE001
                        exports[job.model] = e
            made = exports[job.model]
            if isinstance(made, Exception):
                raise made
            return Outcome(bench(made, job.board, portable=job.portable), seconds=time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 (any failure is one cell, not the run)
            # mcu-nn's own errors are one line for people; anything else keeps its type (a bug)
            text, fits = classify(str(e) if isinstance(e, McuNnError) else f"{type(e).__name__}: {e}")
            return Outcome(None, text, fits, time.perf_counter() - t0)

    # the slow emulations first (AVR, soft-float and portable cores), so the pool ends together
    cost = lambda j: (is_avr(j.board), j.h, not BOARDS[j.board].arch.dsp, j.precision != "int8")  # noqa: E731
    ordered = sorted(jobs, key=cost, reverse=True)
    n = len(ordered)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(one, j): j for j in ordered}
        for k, f in enumerate(as_completed(futures), 1):
            j, o = futures[f], f.result()
            outcomes[j] = o
            if o.result is not None:
                r = o.result
                unit = "cycles" if r.unit == "cycles" else "instr"
                what = (f"{r.instructions_per_step:,} {unit}/step ({r.path}), {r.instructions_per_mac:.2f} {unit}/MAC, "
                        f"flash {r.flash_bytes:,} B, RAM {r.ram_bytes:,} B")
            else:
                what = o.error
            print(f"[{k}/{n}] {j.label()}: {what}  ({o.seconds:.1f} s)", flush=True)
    return outcomes


# ---------------------------------------------------------------------------------------------
# CMSIS-NN figures

def load_cmsis(path: Path = CMSIS_JSON) -> tuple[dict, Optional[str]]:
    """{(board, kernel, I, H): (instructions, flash or None, RAM or None, source)} from the
    reproduced results.json (tolerating missing keys) over the published figures; and the
    CMSIS-NN commit the reproduction used."""
    figures = {k: (v, None, None, src) for k, (v, src) in PUBLISHED_CMSIS.items()}
    commit = None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return figures, None
    commit = data.get("cmsis_nn_commit") if isinstance(data, dict) else None
    results = data.get("results", {}) if isinstance(data, dict) else {}
    for board, rows in (results.items() if isinstance(results, dict) else []):
        for key, row in (rows.items() if isinstance(rows, dict) else []):
            m = re.fullmatch(r"(?:arm_lstm_unidirectional_)?(s8|s16)\s+(\d+)x(\d+)", str(key).strip())
            if not m or not isinstance(row, dict) or not isinstance(row.get("instructions_per_step"), (int, float)):
                continue
            src = "reproduced: bench/cmsis_nn" + (f" @ CMSIS-NN {str(commit)[:12]}" if commit else "")
            figures[(board, m.group(1), int(m.group(2)), int(m.group(3)))] = (
                int(row["instructions_per_step"]), row.get("flash_bytes"), row.get("ram_bytes"), src)
    return figures, commit


def cmsis_for(cmsis: dict, board: str, i: int, h: int) -> list[tuple[str, tuple]]:
    """The CMSIS-NN LSTM figures for ``board`` and shape, `_s16` first (the same arithmetic as
    our int8: int8 weights, int16 state), then `_s8`."""
    return [(k, cmsis[(board, k, i, h)]) for k in ("s16", "s8") if (board, k, i, h) in cmsis]


def _short_source(src: str) -> str:
    return "reproduced" if src.startswith("reproduced") else src.split(",")[0].replace("published: ", "published, ")


# ---------------------------------------------------------------------------------------------
# the document

def fmt_int(v) -> str:
    return "–" if v is None else f"{int(v):,}"


def md_table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def step_f32(r: BenchResult) -> Optional[int]:
    """The step with float inputs quantised inside it (<name>_step_f32), when the bench measured it."""
    return r.instructions_per_step_f32 or None


def core_title(board: str) -> str:
    b = BOARDS[board]
    core = b.arch.core.split(" (")[0]
    kernels = "Helium (MVE) and DSP kernels" if "mve" in b.arch.features else \
        "DSP kernels" if b.arch.dsp else "ARMv7-M MLA kernels" if b.arch.v7m else \
        "ARMv6-M LDRSB/MULS kernels" if b.arch.v6m else "portable C"
    mem = f", {b.flash.size >> 10} KiB flash / {b.ram.size >> 10} KiB RAM" if b.flash and b.ram else ""
    how = (f"simavr {b.emulator.machine}: **CPU cycles**, exact" if is_avr(board) else
           f"{b.emulator.label} `-icount shift={b.emulator.bench_shift}`: **instructions**, exact")
    return f"### {core} — `{board}` ({kernels}{mem}; {how})"


def core_table(board: str, shapes: list[tuple], out: dict[Job, Outcome], cmsis: dict) -> str:
    avr, arm = is_avr(board), BOARDS[board].arch.name.startswith("cortex")
    u = "cycles" if avr else "instr"
    head = ["layer", "precision", "kernels", f"{u}/step", f"{u}/MAC", "MACs/step",
            "model+runtime flash B", "RAM B (state+stack)"]
    quant = board == M4F and any(o.result is not None and step_f32(o.result) is not None
                                 for j, o in out.items() if j.board == board)
    if board in WITH_PORTABLE:
        head.insert(4, "portable C instr/step (-DMCUNN_PORTABLE)")
    if quant:
        head.insert(4, "float-input step instr (step + input quantisation)")
    if arm:
        head += ["CMSIS-NN instr/step (kernel, source)", "CMSIS-NN flash / RAM B", "our speed-up"]
    rows = []
    for kind, i, h in shapes:
        for p in PRECISIONS:
            job = Job(kind, i, h, p, "packed", board)
            if job not in out:
                continue
            o = out[job]
            r = o.result
            if r is None:
                row = [layer_label(kind, i, h), p, "–", o.error, "–", "–", "–", "–"]
            else:
                row = [layer_label(kind, i, h), p, r.path, f"{r.instructions_per_step:,}",
                       f"{r.instructions_per_mac:.2f}", f"{r.macs_per_step:,}", f"{r.flash_bytes:,}",
                       f"{r.ram_bytes:,} ({r.state_bytes}+{r.stack_bytes})"]
            if board in WITH_PORTABLE:
                po = out.get(Job(kind, i, h, p, "packed", board, portable=True))
                row.insert(4, "–" if po is None else
                           f"{po.result.instructions_per_step:,}" if po.result else po.error)
            if quant:
                q = step_f32(r) if r else None
                row.insert(4, "–" if q is None else f"{q:,}")
            if arm:
                found = cmsis_for(cmsis, board, i, h) if kind == "lstm" and p == "int8" else []
                if not found:
                    reason = "–" if kind == "lstm" and p == "int8" else "(no GRU in CMSIS-NN)" if kind == "gru" \
                        else "(no int16-weight LSTM in CMSIS-NN)" if p == "int16" else "(no float LSTM in CMSIS-NN)"
                    row += [reason, "–", "–"]
                else:
                    row.append("; ".join(f"{fmt_int(v[0])} (`_{k}`, {_short_source(v[3])})" for k, v in found))
                    row.append("; ".join(f"{fmt_int(v[1])} / {fmt_int(v[2])}" if v[1] or v[2] else
                                         "(not published)" for _, v in found))
                    # against each kernel: `_s16` is the same arithmetic, `_s8` the faster one
                    row.append(", ".join(f"{v[0] / r.instructions_per_step:.2f}x vs `_{k}`" for k, v in found)
                               if r else "–")
            rows.append(row)
    return md_table(head, rows)


def glance_table(boards: list[str], shapes: list[tuple], out: dict[Job, Outcome]) -> str:
    """One column per core: instructions (cycles on AVR) per step."""
    def col(b):
        unit = "cycles" if is_avr(b) else "instr"
        return f"{BOARDS[b].arch.core.split(' (')[0]} `{b}` {unit}/step"
    head = ["layer", "precision"] + [col(b) for b in boards]
    rows = []
    for kind, i, h in shapes:
        for p in PRECISIONS:
            cells = []
            for b in boards:
                o = out.get(Job(kind, i, h, p, "packed", b))
                cells.append("(no FPU)" if p == "float32" and not has_fpu(b) else "–" if o is None else
                             f"{o.result.instructions_per_step:,}" if o.result else o.error)
            if any(c != "–" for c in cells):
                rows.append([layer_label(kind, i, h), p] + cells)
    return md_table(head, rows)


def wide_table(boards: list[str], shapes: list[tuple], out: dict[Job, Outcome]) -> str:
    head = ["layer", "board", "packed int8 instr/step", "wide instr/step", "wide instr/MAC",
            "packed flash B", "wide flash B", "wide RAM B"]
    rows = []
    for b in boards:
        for kind, i, h in shapes:
            w = out.get(Job(kind, i, h, "int8", "wide", b))
            if w is None:
                continue
            pk = out.get(Job(kind, i, h, "int8", "packed", b))
            pr, wr = (pk.result if pk else None), w.result
            rows.append([layer_label(kind, i, h), f"`{b}`",
                         f"{pr.instructions_per_step:,}" if pr else (pk.error if pk else "–"),
                         f"{wr.instructions_per_step:,}" if wr else w.error,
                         f"{wr.instructions_per_mac:.2f}" if wr else "–",
                         f"{pr.flash_bytes:,}" if pr else "–", f"{wr.flash_bytes:,}" if wr else "–",
                         f"{wr.ram_bytes:,} ({wr.state_bytes}+{wr.stack_bytes})" if wr else "–"])
    return md_table(head, rows)


def cells_table(out: dict[Job, Outcome]) -> str:
    head = ["layer", "precision", "M4F instr/step", "M4F portable instr/step", "instr/MAC (M4F)",
            "model+runtime flash B (M4F)", "RAM B (M4F)"]
    rows = []
    for fused, unit in CELL_PAIRS:
        for i, h in CELL_SHAPES:
            for p in ("int8", "int16"):
                for kind in (fused, unit):
                    a = out.get(Job(kind, i, h, p, "packed", M4F))
                    b = out.get(Job(kind, i, h, p, "packed", M4F, portable=True))
                    if a is None:
                        continue
                    r = a.result
                    rows.append([f"{kind} I={i} H={h}", p, f"{r.instructions_per_step:,}" if r else a.error,
                                 f"{b.result.instructions_per_step:,}" if b and b.result else (b.error if b else "–"),
                                 f"{r.instructions_per_mac:.2f}" if r else "–", f"{r.flash_bytes:,}" if r else "–",
                                 f"{r.ram_bytes:,} ({r.state_bytes}+{r.stack_bytes})" if r else "–"])
    return md_table(head, rows)


def goal_rows(out: dict[Job, Outcome], cmsis: dict, sim: Optional[dict]) -> list[list[str]]:
    """Issue 14's goals: [goal, board, today's figure, goal, status]."""
    def res(kind, i, h, p, board):
        o = out.get(Job(kind, i, h, p, "packed", board))
        return (o.result, None) if o and o.result else (None, o.error if o else "not measured in this run")

    rows = []
    M55 = "qemu-mps3-an547"
    for i, h, goal in ((40, 64, 16000), (16, 32, 6000)):
        r, why = res("lstm", i, h, "int8", M55)
        rows.append([f"Cortex-M55 LSTM {i}x{h} int8", f"`{M55}`",
                     f"{r.instructions_per_step:,} instr/step ({r.path})" if r else why, f"≤ {goal:,} instr/step",
                     ("met" if r.instructions_per_step <= goal else "missed") if r else "not measured"])
    r, why = res("lstm", 40, 64, "int16", M4F)
    rows.append(["int16 weights (int16 model) LSTM 40x64 on Cortex-M4", f"`{M4F}`",
                 f"{r.instructions_per_mac:.2f} instr/MAC ({r.instructions_per_step:,} instr/step, {r.path})" if r else why,
                 "≤ 2.0 instr/MAC", ("met" if r.instructions_per_mac <= 2.0 else "missed") if r else "not measured"])
    M3 = "qemu-mps2-an385"
    for i, h in ((16, 32), (40, 64)):
        r, why = res("lstm", i, h, "int8", M3)
        c = (cmsis.get((M3, "s16", i, h)) or (None,))[0]
        if r and c:
            x = c / r.instructions_per_step
            fig = f"{x:.2f}x ({r.instructions_per_step:,} vs `_s16` {c:,} instr/step)"
            status = "met" if x >= 2.0 else "missed"
        else:
            fig = why if not r else (f"{r.instructions_per_step:,} instr/step; no CMSIS-NN `_s16` figure for the M3 "
                                     f"({CMSIS_JSON.relative_to(ROOT)} has none)")
            status = "not measured"
        rows.append([f"Cortex-M3 LSTM {i}x{h} int8 vs CMSIS-NN `_s16`", f"`{M3}`", fig, "≥ 2x faster", status])
    for i, h, goal in ((16, 32, 10300), (40, 64, 38000)):
        r, why = res("lstm", i, h, "int8", M4F)
        q = step_f32(r) if r else None
        if r and q is not None:
            fig = (f"{q:,} instr/step (`_step_f32`: the step, {r.instructions_per_step:,}, with the float input "
                   f"quantised inside it; per-value `_quantize_input` calls would add {r.quantize_input_instructions:,})")
            status = "met" if q <= goal else "missed"
        else:
            fig, status = why if not r else "no float-input step measured", "not measured"
        rows.append([f"Cortex-M4 LSTM {i}x{h} int8 including input quantisation", f"`{M4F}`", fig,
                     f"≤ {goal:,} instr/step", status])
    if sim:
        rows.append(["host simulator LSTM I=40 H=64 int8, batch 256", "host (`mcu_nn.sim.run`)",
                     f"{sim['cpu']:,.0f} sequence-steps/s by CPU time ({sim['wall']:,.0f} by wall time)",
                     f"≥ {SIM_GOAL:,} sequence-steps/s", "met" if sim["cpu"] >= SIM_GOAL else "missed"])
    else:
        rows.append(["host simulator LSTM I=40 H=64 int8, batch 256", "host", "not measured in this run "
                     "(`python bench/sim_speed.py --quick`)", f"≥ {SIM_GOAL:,} sequence-steps/s", "not measured"])
    return rows


def tool_version(cmd: list[str], name: str = "") -> str:
    """``name`` and the version ``cmd`` prints (first line, its last version-like word)."""
    name = name or Path(cmd[0]).name
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return f"{name} (not installed)"
    line = ((r.stdout or r.stderr).strip().splitlines() or [""])[0]
    found = re.findall(r"\d+\.\d+(?:\.\d+)?\S*", line.split("(")[0] if "QEMU" in line else line)
    return f"{name} {found[-1] if 'QEMU' not in line else found[0]}" if found else f"{name} ({line or 'unknown'})"


def environment() -> dict:
    try:    # the commit, "+changes" if tracked files other than this output differ from it
        git = lambda *a: subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True,  # noqa: E731
                                        text=True, timeout=20).stdout.strip()
        commit = git("rev-parse", "--short", "HEAD") or "unknown"
        if git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/RESULTS.md"):
            commit += " +uncommitted changes"
    except (OSError, subprocess.TimeoutExpired):
        commit = "unknown"
    return {
        "qemu-system-arm": tool_version(["qemu-system-arm", "--version"]),
        "qemu-system-riscv32": tool_version(["qemu-system-riscv32", "--version"]),
        "arm-none-eabi-gcc": tool_version(["arm-none-eabi-gcc", "--version"]),
        "riscv64-unknown-elf-gcc": tool_version(["riscv64-unknown-elf-gcc", "--version"]),
        "avr-gcc": tool_version(["avr-gcc", "--version"]),
        "simavr": tool_version(["dpkg-query", "-W", "-f", "${Version}", "simavr"], "simavr"),
        "numpy": f"numpy {np.__version__}",
        "commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": f"{platform.machine()}, {os.cpu_count()} cores",
    }


def sim_speed(batch: int = 256, steps: int = 50, repeat: int = 3) -> dict:
    """Sequence-steps/s of the bit-exact simulator on LSTM I=40 H=64 int8 (bench/sim_speed.py's
    first row, its default path only)."""
    spec = importlib.util.spec_from_file_location("sim_speed", HERE / "sim_speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    g = mod.make_graph(kind="lstm", input_size=40, hidden=64, seq_len=steps, seed=0)
    x = mod.make_input(g, n=batch, steps=steps, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize(g, x[:64], "int8")
    wall, cpu, _, _ = mod.timed(q, x, repeat)
    n = batch * steps
    return {"wall": n / wall, "cpu": n / cpu, "batch": batch, "steps": steps, "repeat": repeat}


HEADER = """# mcu-nn benchmark results

Generated by `{command}` from one run ({date}, commit `{commit}`, {seconds:.0f} s wall time on
{host} with `--jobs {jobs}`). Do not edit by hand: change `bench/run.py` and run it again.

**Method.** One recurrent layer, batch 1, seeded random weights quantised by `mcu_nn.quant.quantize`
(`export(kind, I, H, precision, layout, dir)` in `bench/run.py`), 4 test vectors of {steps} steps. Every
figure is one `mcu-nn bench` run (`mcu_nn.bench.bench_export`) whose outputs matched the simulator
bit for bit on all 4 vectors (float32: within verify's tolerance); a row whose outputs differ is
reported as FAILED, never as a figure. "/step" = steady state, the mean of steps 2..{steps} of vector 0,
less the cost of reading the counter.

- **Arm and RISC-V cores: instructions**, not cycles: {qemu_arm} / {qemu_rv} with `-icount shift={shift}`
  (every instruction is 2^{shift} ns of virtual time, so each board's timer counts instructions exactly;
  checked on every run against calibration loops of 2,000 and 4,000 instructions).
- **AVR: CPU cycles**, not instructions: {simavr} (cycle-exact; Timer1 at the CPU clock, its overflow
  interrupt, about 30 cycles every 65,536, is inside the figure). Not comparable column for column with
  the instruction counts.
- Compilers: {arm_gcc} (`-O2`, `-mthumb -mcpu=...`); {rv_gcc} (`-O2 -march=rv32imac`); {avr_gcc} (`-O2`,
  weights, tables and requantisation records in flash via PROGMEM).
- "kernels" = the path that ran (`BenchResult.path`): `mve` Helium, `simd` DSP (SMLAD/SMLALD),
  `v7m` the ARMv7-M kernels without DSP (MLA/SMLAL, Cortex-M3),
  `v6m` the ARMv6-M kernels (LDRSB/MULS asm, requantisation from MULS partial products, Cortex-M0/M0+), `portable` C, `mixed`. float32 rows only on cores with an FPU.
- "model+runtime flash" = model code + model constants + shared runtime (docs/sizes.md): `.text` +
  `.rodata` of the model's and the runtime's symbols in the linked ELF. "RAM" = state struct + stack
  high-water mark of one step.
- CMSIS-NN: our int8 rows (int8 weights, int16 state) are compared with both of its LSTM kernels
  where there is a figure, each named in its cell: `arm_lstm_unidirectional_s16` (int8 weights, int16
  activations: the same arithmetic) and `_s8` (int8 activations: less work, the faster on every core). "reproduced" = `bench/cmsis_nn` on the same emulated core
  ({cmsis_source}); "published" = figures quoted in the issues (issue 4: the same emulated Cortex-M4,
  `-O2`; issue 14). Speed-up = CMSIS-NN instr/step / ours. CMSIS-NN has no GRU and no int16-weight LSTM.
"""


def render(out: dict[Job, Outcome], boards: list[str], shapes: list[tuple], cmsis: dict, cmsis_commit: Optional[str],
           sim: Optional[dict], env: dict, seconds: float, command: str, jobs: int) -> str:
    parts = [HEADER.format(command=command, date=env["date"], commit=env["commit"], seconds=seconds,
                           host=env["host"], jobs=jobs, steps=STEPS, shift="/".join(sorted({
                               str(BOARDS[b].emulator.bench_shift) for b in boards if not is_avr(b)} or {"10"})), qemu_arm=env["qemu-system-arm"],
                           qemu_rv=env["qemu-system-riscv32"], simavr=env["simavr"],
                           arm_gcc=env["arm-none-eabi-gcc"], rv_gcc=env["riscv64-unknown-elf-gcc"],
                           avr_gcc=env["avr-gcc"],
                           cmsis_source=(f"CMSIS-NN commit `{cmsis_commit}`" if cmsis_commit else
                                         f"`{CMSIS_JSON.relative_to(ROOT)}`" + (" present" if CMSIS_JSON.exists()
                                                                                else " absent in this run")))]
    parts.append("## Goals (issue 14)\n\nFrom the figures below, same run.\n\n"
                 + md_table(["goal", "board", "today", "goal", "status"], goal_rows(out, cmsis, sim)))
    if sim:
        parts.append(f"The simulator figure: `mcu_nn.sim.run` on this machine ({env['host']}, {env['numpy']}), "
                     f"batch {sim['batch']} x {sim['steps']} steps, input quantisation included, best of "
                     f"{sim['repeat']}, measured before the board runs started (`bench/sim_speed.py` has the other "
                     "models and the reference path). It depends on the machine, unlike the board figures.")
    parts.append("## Every core at a glance\n\nInstructions per step (cycles on AVR), kernels as each core's "
                 "table below.\n\n" + glance_table(boards, shapes, out))
    parts.append("## Per core")
    notes = {
        "cortex-m0plus": "ARMv6-M: no 32x32->64 multiply and no saturating instructions (the M3 has both). "
                         "The portable column is the same export compiled with `-DMCUNN_PORTABLE` on the same core.",
        "cortex-m3": "The portable column is the same export compiled with `-DMCUNN_PORTABLE` on the same core.",
        "cortex-m4f": "The portable column is the same export compiled with `-DMCUNN_PORTABLE` on the same core.",
        "cortex-m55": "Instructions are not cycles here in particular: QEMU has no M55 timing model, and "
                      "Helium gather loads cost more cycles than instructions.",
        "atmega2560": "The Mega's extra cycles against the 328P are its 3-byte return addresses (22-bit PC).",
        "atmega328p": "Arduino Uno/Nano: 32 KiB flash, 2 KiB SRAM; \"does not fit\" is what the link reported.",
        "avr": "\"does not build\": the export keeps each weight matrix in one C array, and avr-gcc allows no "
               "object over 32 KiB (int16 40x64 layers need more); splitting them is not done yet.",
        "rv32imac": "RV32IMAC, no DSP, no FPU: the int16 kernels' 64-bit accumulation is `mul` + `mulh` + a "
                    "carry (one `smlal` on the M3).",
    }
    for b in boards:
        if not any(j.board == b and j.layout == "packed" for j in out):
            continue
        note = notes.get(BOARDS[b].arch.name, "")
        if is_avr(b) and any(o.error and o.error.startswith("does not build") for j, o in out.items() if j.board == b):
            note = (note + " " + notes["avr"]).strip()
        if b == M4F:
            note += (" \"float-input step\" = `<name>_step_f32`: the step with the float input quantised inside it "
                     "(the other figures take int16 inputs).")
        no_fpu = "" if has_fpu(b) else " No FPU: no float32 rows."
        parts.append(core_title(b) + "\n\n" + core_table(b, shapes, out, cmsis)
                     + (f"\n\n{(note + no_fpu).strip()}" if note or no_fpu else ""))
    if any(j.layout == "wide" for j in out):
        parts.append("## int8 models with int16 weight storage (`weight_layout=\"wide\"`)\n\n"
                     "The same int8 model with its weights stored as int16 (twice the recurrent weights' flash), "
                     "on the DSP cores; beside the default packed layout. Instructions per step.\n\n"
                     + wide_table(boards, shapes, out))
    if any(j.kind in {u for _, u in CELL_PAIRS} for j in out):
        parts.append("## Hand-written cells (issue 9): the cell units beside the fused kernels\n\n"
                     "`python bench/run.py --cells` prints this table alone. A hand-written loop folds onto the "
                     "fused `nn.LSTM`/`nn.GRU` kernels when its step is one of them (LSTMCell/GRUCell/RNNCell "
                     "loops, LSTMs and GRUs written from parameters or Linears, coupled-gate LSTMs): those run at "
                     "the speeds above. The two cells PyTorch has no module for run as their own units: "
                     "`peephole_lstm` (the LSTM's fused gate matvec plus the three peephole terms in portable C) "
                     "and `gru_reset_before` (textbook GRU / MGU, `tanh(W x + U (r ⊙ h))`: the r, z rows through "
                     "the GRU's fused stream, then a second, portable pass for `U_n (r ⊙ h)`). Cortex-M4F "
                     f"(`{M4F}`), instructions per step.\n\n" + cells_table(out))
    failed = [(j, o) for j, o in out.items() if o.failed]
    if failed:
        parts.append("## Failures in this run\n\n" + "\n".join(f"- {j.label()}: {o.error}" for j, o in failed))
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------

def parse_shape(s: str) -> tuple[str, int, int]:
    m = re.fullmatch(r"(\w+):(\d+)x(\d+)", s)
    if not m:
        raise argparse.ArgumentTypeError(f"{s!r}: expected KIND:IxH, e.g. lstm:16x32")
    if m.group(1) not in cells():
        raise argparse.ArgumentTypeError(f"{s!r}: unknown cell kind {m.group(1)!r}; known: {', '.join(sorted(cells()))}")
    return m.group(1), int(m.group(2)), int(m.group(3))


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help=f"write the Markdown here (default for the full run: {DEFAULT_OUT})")
    ap.add_argument("--quick", action="store_true", help="Cortex-M4F only (DSP and portable); no cells, no wide")
    ap.add_argument("--cells", action="store_true", help="only the hand-written cells table (issue 9)")
    ap.add_argument("--cores", action="store_true", help="only the at-a-glance table, one column per emulated core")
    ap.add_argument("--board", action="append", metavar="NAME", help="only this board (repeatable)")
    ap.add_argument("--shape", action="append", type=parse_shape, metavar="KIND:IxH",
                    help="only this layer, e.g. lstm:16x32 (repeatable)")
    ap.add_argument("--jobs", type=int, default=2, help="measurements run at once (default 2)")
    ap.add_argument("--no-sim", action="store_true", help="skip the host simulator's speed (goals table)")
    a = ap.parse_args(argv)
    unknown = [b for b in a.board or [] if b not in BOARDS]
    if unknown:
        ap.error(f"unknown board(s) {', '.join(unknown)}; emulated boards: {', '.join(BOARDS)}")
    boards = board_order([M4F] if a.quick else a.board)
    shapes = a.shape or SHAPES
    # the whole file: only the plain command writes bench/RESULTS.md (and names itself in it)
    full = not (a.quick or a.cells or a.cores or a.board or a.shape or a.no_sim)
    if a.cells:
        jobs = cell_jobs(a.shape)
    elif a.cores:
        jobs = [j for j in core_jobs(boards, shapes) if not j.portable]
    else:
        jobs = core_jobs(boards, shapes)
        if not a.quick:
            jobs += wide_jobs(boards, shapes) + ([] if a.board and M4F not in a.board else cell_jobs(a.shape))
    jobs = list(dict.fromkeys(jobs))          # the cells table shares the fused rows
    out_path = a.out or (DEFAULT_OUT if full else None)
    t0 = time.time()
    env = environment()
    sim = None
    if not (a.no_sim or a.quick or a.cells or a.cores or a.board):
        print("host simulator speed (LSTM I=40 H=64 int8, batch 256) ...", flush=True)
        sim = sim_speed()
        print(f"  {sim['cpu']:,.0f} sequence-steps/s (CPU time), {sim['wall']:,.0f} (wall)", flush=True)
    print(f"{len(jobs)} measurements on {a.jobs} workers", flush=True)
    with tempfile.TemporaryDirectory(prefix="mcunn-benchset-") as tmp:
        out = measure(jobs, a.jobs, Path(tmp))
    seconds = time.time() - t0
    cmsis, commit = load_cmsis()
    if a.cells:
        text = cells_table(out)
    elif a.cores:
        text = glance_table(boards, shapes, out)
    else:
        args = sys.argv[1:] if argv is None else argv
        command = " ".join(["python bench/run.py", *args]) if args else "python bench/run.py"
        text = render(out, boards, shapes, cmsis, commit, sim, env, seconds, command, a.jobs)
    print("\n" + text)
    if out_path:
        out_path.write_text(text if text.endswith("\n") else text + "\n")
        print(f"wrote {out_path}")
    failed = [j for j, o in out.items() if o.failed]
    print(f"\n({seconds:.0f} s; {len(out)} measurements, {len(failed)} failed)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
