"""What every cell unit's test checks on a Graph built straight in the IR (tests/test_cell_*.py):
integer exports bit-exact with the simulator in host C (sanitizers) and accurate vs float, float32
exports within tolerance, bit-exact on the emulated Cortex-M4, QAT forward == run_quant."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mcu_nn.bench import bench_export
from mcu_nn.codegen import write_export
from mcu_nn.ir import Graph
from mcu_nn.qat import QATModel
from mcu_nn.quant import metrics, quantize
from mcu_nn.sim import run, run_float
from mcu_nn.sim.int_sim import quantize_model_input, run_quant
from mcu_nn.verify import verify


def inputs(n: int, seed: int, t: int, i: int) -> np.ndarray:
    """(n, t, i) noisy sines: smooth enough to calibrate on, varied enough to exercise the gates."""
    rng = np.random.default_rng(seed)
    steps = np.arange(t)[None, :, None]
    return (np.sin(steps * rng.uniform(0.1, 0.6, (n, 1, i)) + rng.uniform(0, 6, (n, 1, i)))
            + 0.2 * rng.standard_normal((n, t, i))).astype(np.float32)


def integer_export(tmp: Path, g: Graph, calib: np.ndarray, x: np.ndarray, vectors: np.ndarray,
                   precision: str, floor_db: float, **export) -> None:
    """SNR of run vs run_float on x >= floor_db; the export runs ``vectors`` bit-exact in host C
    under sanitizers and compiles for the Cortex-M4."""
    q = quantize(g, calib, precision)
    snr = metrics.snr_db(run_float(g, x), run(q, x) * q.output_scale)
    assert snr >= floor_db, f"{precision}: {snr:.1f} dB"
    write_export(q, tmp / "e", vectors, run(q, vectors), **export)
    r = verify(tmp / "e", cross=True, log=lambda s: None)
    assert r.ok and r.mismatches == 0 and r.vectors == len(vectors), r.first_mismatch


def float32_export(tmp: Path, g: Graph, calib: np.ndarray, x: np.ndarray) -> None:
    q = quantize(g, calib, "float32")
    write_export(q, tmp / "e", x, run(q, x))
    assert verify(tmp / "e", cross=False, log=lambda s: None).ok


def board(tmp: Path, g: Graph, calib: np.ndarray, x: np.ndarray, precision: str) -> None:
    """Bit-exact on the emulated Cortex-M4 (qemu-mps2-an386): bench_export raises on a differing bit."""
    q = quantize(g, calib, precision)
    write_export(q, tmp / "e", x, run(q, x))
    assert bench_export(tmp / "e", "qemu-mps2-an386").vectors_checked == len(x)


def qat_forward(g: Graph, calib: np.ndarray, x: np.ndarray, precision: str) -> None:
    """QAT's forward is the integer model's, and its surrogate gives gradients."""
    qat = QATModel(g, calib, precision)
    q = qat.qmodel()
    assert np.array_equal(qat.forward_int(x), run_quant(q, quantize_model_input(q, x)))
    qat(x).pow(2).sum().backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in qat.parameters())

