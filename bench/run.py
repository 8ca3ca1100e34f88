"""Benchmark a fixed set of recurrent layers on the emulated Cortex-M boards and print one table.

    python bench/run.py [--quick] [--out bench/RESULTS.md]
    python bench/run.py --cores          # one column per emulated core (issue 10)
    python bench/run.py --cores --board qemu-riscv32   # only that board's column

Every model is a single layer, batch 1, with seeded random weights quantised by mcu-nn's own
quantiser (mcu_nn.quant.quantize) and exported by mcu_nn.codegen.write_export. Each row is one
`mcu-nn bench` measurement (mcu_nn.bench.bench_export): QEMU -icount, exact instruction counts,
steady-state step, outputs checked bit for bit against the simulator on the board.
Columns: the SIMD kernels (Cortex-M4F, default) beside the portable C (-DMCUNN_PORTABLE) on the
same core, then Cortex-M3 (no DSP: portable) and Cortex-M7.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mcu_nn.bench import bench_export  # noqa: E402
from mcu_nn.codegen import write_export  # noqa: E402
from mcu_nn.cells import cell_of  # noqa: E402
from mcu_nn.ir import DirectionWeights, Graph, Recurrent  # noqa: E402
from mcu_nn.quant import quantize  # noqa: E402
from mcu_nn.sim import run  # noqa: E402
from mcu_nn.sim.float_sim import run_float  # noqa: E402

SHAPES = [("lstm", 16, 32), ("lstm", 40, 64), ("gru", 16, 32), ("gru", 40, 64)]
VARIANTS = [("int8", "packed"), ("int8", "wide"), ("int16", "packed"), ("float32", "packed")]
TARGETS = {("lstm", 16, 32): 12000, ("lstm", 40, 64): 42000, ("gru", 16, 32): 9000, ("gru", 40, 64): 31500}
STEPS, VECTORS = 8, 4


# hand-written cells (issue 9): each cell unit beside the fused kernel of the nn module it extends
CELL_PAIRS = [("lstm", "peephole_lstm"), ("gru", "gru_reset_before")]
CELL_SHAPES = [(16, 32), (40, 64)]


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
    q = quantize(graph, calib, precision)
    expected = run_float(graph, x) if precision == "float32" else run(q, x)
    d = out / f"{kind}{i}x{h}_{precision}_{layout}"
    write_export(q, d, x, expected, weight_layout=layout)
    return d


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="Cortex-M4F only")
    ap.add_argument("--out", type=Path, help="also write the table (Markdown) to this file")
    ap.add_argument("--cells", action="store_true",
                    help="instead: the hand-written cell units beside the fused nn.LSTM/nn.GRU kernels")
    ap.add_argument("--cores", action="store_true",
                    help="instead: instructions per step on every emulated core (int8/int16, float32 with an FPU)")
    ap.add_argument("--board", action="append", metavar="NAME",
                    help="with --cores: only this board's column (repeatable)")
    a = ap.parse_args()
    if a.cells:
        return cells_table(a.out)
    if a.cores:
        return cores_table(a.out, a.board)
    boards = [("qemu-mps2-an386", False, "M4F simd"), ("qemu-mps2-an386", True, "M4F portable")]
    if not a.quick:
        boards += [("qemu-mps2-an385", False, "M3 (portable)"), ("qemu-mps2-an500", False, "M7 simd")]
    head = (["layer", "precision", "weights"] + [f"{b[2]} instr/step" for b in boards]
            + ["M4F simd float-input step (step + input quantisation)", "instr/MAC (M4F)", "MACs/step",
               "model+runtime flash B (M4F)", "RAM B (M4F)", "target"])
    rows = []
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="mcunn-benchset-") as tmp:
        for kind, i, h in SHAPES:
            for precision, layout in VARIANTS:
                d = export(kind, i, h, precision, layout, Path(tmp))
                res = [bench_export(d, board, portable=portable) for board, portable, _ in boards]
                r0 = res[0]
                target = TARGETS[(kind, i, h)] if precision == "int8" else None
                ok = "" if target is None else (f"≤ {target:,} {'met' if r0.instructions_per_step <= target else 'MISSED'}")
                rows.append([f"{kind.upper()} I={i} H={h}", precision, "int16" if layout == "wide" or precision == "int16"
                             else ("float" if precision == "float32" else "int8")]
                            + [f"{r.instructions_per_step:,}" for r in res]
                            + [f"{r0.instructions_per_step_f32:,}" if r0.instructions_per_step_f32 else "–"]
                            + [f"{r0.instructions_per_mac:.2f}", f"{r0.macs_per_step:,}", f"{r0.flash_bytes:,}",
                               f"{r0.ram_bytes:,} ({r0.state_bytes}+{r0.stack_bytes})", ok])
                print(" | ".join(rows[-1]), flush=True)
    print_table(head, rows, a.out)
    print(f"\n({time.time() - t0:.0f} s)")
    return 0


def print_table(head: list[str], rows: list[list[str]], out: Path | None) -> int:
    """Print a Markdown table (and write it to ``out``)."""
    text = "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(r) + " |" for r in rows])
    print("\n" + text)
    if out:
        out.write_text(text + "\n")
    return 0


def cells_table(out: Path | None) -> int:
    """Each cell unit (portable C) beside the fused kernel it extends, on the emulated Cortex-M4F."""
    boards = [("qemu-mps2-an386", False, "M4F"), ("qemu-mps2-an386", True, "M4F portable")]
    head = ["layer", "precision"] + [f"{b[2]} instr/step" for b in boards] + ["instr/MAC (M4F)", "model+runtime flash B (M4F)"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="mcunn-benchcells-") as tmp:
        for fused, unit in CELL_PAIRS:
            for i, h in CELL_SHAPES:
                for precision in ("int8", "int16"):
                    for kind in (fused, unit):
                        d = export(kind, i, h, precision, "packed", Path(tmp))
                        res = [bench_export(d, board, portable=portable) for board, portable, _ in boards]
                        rows.append([f"{kind} I={i} H={h}", precision] + [f"{r.instructions_per_step:,}" for r in res]
                                    + [f"{res[0].instructions_per_mac:.2f}", f"{res[0].flash_bytes:,}"])
                        print(" | ".join(rows[-1]), flush=True)
    return print_table(head, rows, out)


CORE_SHAPES = [("lstm", 16, 32), ("gru", 16, 32)]


def cores_table(out: Path | None, only: list[str] | None = None) -> int:
    """Instructions per step of each layer and precision on every emulated board, one column a
    core (its kernels: DSP where the core has the extension, else portable; float32 only where
    the core has an FPU)."""
    from mcu_nn.arch import ARCHES
    from mcu_nn.boards import BOARDS
    order = list(ARCHES)                                # smallest core first
    boards = sorted((b for b in BOARDS.values() if b.emulated and (not only or b.name in only)),
                    key=lambda b: order.index(b.arch.name))
    head = ["layer", "precision"] + [f"{b.arch.core.split(' (')[0]} ({b.name}, {'DSP' if b.arch.dsp else 'portable'})"
                                     for b in boards]
    rows = []
    with tempfile.TemporaryDirectory(prefix="mcunn-benchcores-") as tmp:
        for kind, i, h in CORE_SHAPES:
            for precision in ("int8", "int16", "float32"):
                d = export(kind, i, h, precision, "packed", Path(tmp))
                cells = [f"{bench_export(d, b.name).instructions_per_step:,}"
                         if precision != "float32" or "fpu" in b.arch.features else "(no FPU)" for b in boards]
                rows.append([f"{kind.upper()} I={i} H={h}", precision] + cells)
                print(" | ".join(rows[-1]), flush=True)
    return print_table(head, rows, out)


if __name__ == "__main__":
    sys.exit(main())
