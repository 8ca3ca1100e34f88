"""Throughput of the bit-exact integer simulator (mcu_nn.sim.run) on the host: one table.

    python bench/sim_speed.py [--batch 256] [--steps 50] [--repeat 5] [--quick]

Each model has seeded random weights (tests/qmodels.make_graph) quantised by mcu-nn's own
quantiser, run on seeded random inputs. "before" is the reference path (int64 ``fp.matvec`` and
``Cell.int_step`` every step, what the simulator did up to issue 14), "after" the default path
(``fp.matmul_exact``'s float64 products and the cells' fused steps, see docs/performance.md).
Figures are sequence-steps per second (batch x steps / time of one ``run``, input quantisation
included), the best of ``--repeat`` runs (``--repeat`` // 2 for the slow "before"), by wall time
and by this process's CPU time: both paths run on one thread (numpy's int64 products have none,
the fast path holds BLAS to one), so on an idle core the two agree, and on a shared machine the
CPU time is the steadier figure. Each row also checks that both paths give the same outputs and
saturation counts.
This is a benchmark, not a timed test: the figures depend on the machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from mcu_nn import fixedpoint as fp  # noqa: E402
from mcu_nn.quant import quantize  # noqa: E402
from mcu_nn.sim import run  # noqa: E402
from mcu_nn.sim.int_sim import reference_path  # noqa: E402
from qmodels import make_graph, make_input  # noqa: E402

# (label, make_graph keywords); I=40, H=64 unless said
MODELS = [
    ("LSTM I=40 H=64", dict(kind="lstm")),
    ("GRU I=40 H=64", dict(kind="gru")),
    ("RNN tanh I=40 H=64", dict(kind="rnn_tanh")),
    ("LSTM 2 layers bidir. H=64", dict(kind="lstm", layers=2, bidirectional=True)),
    ("LSTM I=40 H=64 proj 32", dict(kind="lstm", proj=32)),
]


def timed(q, x, repeat: int) -> tuple[float, float, np.ndarray, dict]:
    """(best wall seconds, best CPU seconds of this process, outputs, saturation tally) of
    ``repeat`` runs."""
    wall = cpu = float("inf")
    for _ in range(repeat):
        with fp.count_saturation() as tally:
            w0, c0 = time.perf_counter(), time.process_time()
            y = run(q, x)
            wall, cpu = min(wall, time.perf_counter() - w0), min(cpu, time.process_time() - c0)
    return wall, cpu, y, tally


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="LSTM I=40 H=64 int8 only")
    a = ap.parse_args()
    models = MODELS[:1] if a.quick else MODELS
    precisions = ("int8",) if a.quick else ("int8", "int16")
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}; "
          f"batch {a.batch}, T {a.steps}, best of {a.repeat}")
    print()
    print("| model | precision | batch | T | before, wall | after, wall | speed-up | before, CPU | after, CPU "
          "| speed-up | same bits |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, kw in models:
        g = make_graph(**kw, input_size=40, hidden=64, seq_len=a.steps, seed=0)
        x = make_input(g, n=a.batch, steps=a.steps, seed=1)
        for precision in precisions:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                q = quantize(g, x[:64], precision)
            with reference_path():
                w_ref, c_ref, y_ref, sat_ref = timed(q, x, max(1, a.repeat // 2))
            w_fast, c_fast, y_fast, sat_fast = timed(q, x, a.repeat)
            same = np.array_equal(y_ref, y_fast) and sat_ref == sat_fast
            n = a.batch * a.steps
            print(f"| {label} | {precision} | {a.batch} | {a.steps} | {n / w_ref:,.0f} | {n / w_fast:,.0f} | "
                  f"{w_ref / w_fast:.1f}x | {n / c_ref:,.0f} | {n / c_fast:,.0f} | {c_ref / c_fast:.1f}x | "
                  f"{'yes' if same else 'NO'} |", flush=True)
            if not same:
                sys.exit("the fast path differs from the reference path")

if __name__ == "__main__":
    main()
