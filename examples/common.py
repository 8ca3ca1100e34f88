"""The worked examples' shared flow: trained model -> export (int16, int8, int8 after QAT)
-> verify on the host -> firmware -> emulated Cortex-M4 -> accuracy from the chip's answers.

Each example script trains its own model and calls :func:`deploy_and_measure`.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

try:
    import mcu_nn  # noqa: F401
except ImportError:
    raise SystemExit("the examples need mcu-nn importable: from the repository root run "
                     "pip install -e '.[examples]'") from None

from mcu_nn.build import build_firmware
from mcu_nn.codegen import write_export
from mcu_nn.device import DeviceClient, Emulator
from mcu_nn.pipeline import export_model, measure_accuracy
from mcu_nn.ir import QModel
from mcu_nn.qat import QATModel, fine_tune
from mcu_nn.sim import run
from mcu_nn.sim.int_sim import quantize_model_input
from mcu_nn.verify import verify

BOARD = "qemu-mps2-an386"
SEED, THREADS = 0, 2


def reproducible(seed: int = SEED, threads: int = THREADS) -> None:
    """Seed every generator the examples draw from (model initialisation included) and pin
    torch to a fixed number of threads, so a run's table reproduces on the same torch and
    machine. Call it first, before the model is built."""
    import random
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


@dataclass
class Row:
    """One line of an example's accuracy table."""
    variant: str
    accuracy: float
    source: str                       # "board" (emulated Cortex-M4) or "simulator"
    bit_exact: Optional[bool] = None  # board outputs == simulator outputs for every test sequence
    flash: int = 0                    # firmware .text+.rodata+.data (B), whole image
    ram: int = 0                      # firmware .data+.bss (B)
    model_flash: int = 0              # the model's constant arrays (manifest)
    model_ram: int = 0                # the model's state struct (manifest)
    snr_db: Optional[float] = None    # vs float on the test split
    agreement: Optional[float] = None
    extra: dict = field(default_factory=dict)


def float_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(-1).numpy() == y).mean())


def train_classifier(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float = 1e-2,
                     batch: int = 32, seed: int = 0, log: Callable[[str], None] = print) -> nn.Module:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(x))
        for s in range(0, len(x), batch):
            idx = torch.from_numpy(order[s:s + batch])
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        sched.step()
        if (epoch + 1) % max(1, epochs // 5) == 0:
            log(f"  epoch {epoch + 1}/{epochs}: train accuracy {float_accuracy(model.eval(), x, y):.1%}")
    return model.eval()


def board_outputs(export_dir: Path, q: QModel, x: np.ndarray, log: Callable[[str], None]) -> tuple[np.ndarray, object]:
    """Build the firmware, boot the emulated board and send every sequence; returns the
    board's int16 outputs (N, O) and the build result (flash/RAM)."""
    built = build_firmware(export_dir, BOARD, log=log)
    xq = quantize_model_input(q, x)
    outs = []
    with Emulator(built.elf, BOARD, log=log) as emu, DeviceClient(emu.url, timeout=20.0) as client:
        client.hello()
        for i in range(len(xq)):
            y, _ = client.run(xq[i])
            outs.append(np.asarray(y, np.int64).reshape(-1))
    return np.stack(outs), built


def measure(variant: str, export_dir: Path, q: QModel, graph, x_test: np.ndarray, y_test: np.ndarray,
            use_board: bool, log: Callable[[str], None]) -> Row:
    manifest = json.loads((export_dir / "model.json").read_text())
    sim = run(q, x_test)
    row = Row(variant, 0.0, "simulator", model_flash=int(manifest.get("flash_bytes", 0)),
              model_ram=int(manifest.get("ram_bytes", 0)))
    answers = sim
    if use_board:
        t0 = time.monotonic()
        answers, built = board_outputs(export_dir, q, x_test, log)
        row.source, row.flash, row.ram = "board", int(built.flash_bytes), int(built.ram_bytes)
        row.bit_exact = bool(np.array_equal(answers, sim))
        log(f"  {variant}: {len(x_test)} test sequences through the emulated board in "
            f"{time.monotonic() - t0:.0f} s; board == simulator on all: {row.bit_exact}")
    row.accuracy = float((np.argmax(answers, -1) == y_test).mean())
    acc = measure_accuracy(graph, q, x_test)
    row.snr_db, row.agreement = acc.snr_db, acc.top1_agreement
    return row


def deploy_and_measure(name: str, model: nn.Module, x_train: np.ndarray, y_train: np.ndarray,
                       x_test: np.ndarray, y_test: np.ndarray, out: Path, *, qat_epochs: int = 3,
                       qat_lr: float = 1e-3, qat_input_lr: Optional[float] = None, use_board: bool = True, report: bool = True,
                       log: Callable[[str], None] = print) -> list[Row]:
    """The whole flow for one trained classifier; returns the accuracy table's rows."""
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    pt2, calib = out / f"{name}.pt2", out / "calib.npz"
    torch.export.save(torch.export.export(model, (torch.from_numpy(x_train[:1]),)), str(pt2))
    np.savez(calib, x=x_train)
    rows = [Row("float32 (PyTorch)", float_accuracy(model, x_test, y_test), "PyTorch")]
    log(f"float accuracy on {len(x_test)} test sequences: {rows[0].accuracy:.1%}")

    results = {}
    for precision in ("int16", "int8"):
        log(f"== export {precision}: mcu-nn export {pt2.name} --precision {precision} --calib {calib.name}")
        res = export_model(pt2, out / precision, precision=precision, calib=str(calib), name=name, log=log)
        if not verify(out / precision, log=log).ok:
            raise SystemExit(f"verify failed for {precision}")
        rows.append(measure(f"{precision} (post-training)", out / precision, res.qmodel, res.graph,
                            x_test, y_test, use_board, log))
        results[precision] = res

    if qat_epochs > 0:
        log(f"== QAT: {qat_epochs} epochs of fine-tuning through the int8 arithmetic")
        qat = QATModel.from_module(model, torch.from_numpy(x_train[:1]), x_train, "int8", name=name)
        fine_tune(qat, x_train, y_train, epochs=qat_epochs, lr=qat_lr, input_lr=qat_input_lr, log=log)
        q, graph = qat.qmodel(), qat.graph()
        vectors = x_train[:8]
        acc = measure_accuracy(graph, q, x_train)
        write_export(q, out / "int8_qat", vectors, run(q, vectors),
                     extra={"source_model": pt2.name, "qat_epochs": qat_epochs, "accuracy": acc.as_dict(),
                            "calibration_sequences": int(len(x_train))})
        if not verify(out / "int8_qat", log=log).ok:
            raise SystemExit("verify failed for the QAT export")
        # accuracy of the QAT model is judged against the *original* float model's answers too
        rows.append(measure("int8 (QAT)", out / "int8_qat", q, results["int8"].graph, x_test, y_test,
                            use_board, log))
    if report:
        from mcu_nn.report_html import write_report
        res = results["int8"]
        path = write_report(out / "report.html", res.graph, res.qmodel, calib=x_train,
                            test=(x_test, y_test), manifest=res.manifest,
                            export_dir=out / "int8")
        log(f"wrote {path}")
    return rows


def table(rows: list[Row]) -> str:
    """The README's Markdown table."""
    lines = ["| model | test accuracy | measured on | board == simulator | SNR vs float | top-1 agrees "
             "| whole firmware flash / RAM | model constants / model state |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        snr = f"{r.snr_db:.1f} dB" if r.snr_db is not None else "-"
        agree = f"{r.agreement:.1%}" if r.agreement is not None else "-"
        exact = "-" if r.bit_exact is None else ("yes, every bit" if r.bit_exact else "NO")
        fw = f"{r.flash:,} / {r.ram:,} B" if r.flash else "-"
        mdl = f"{r.model_flash:,} / {r.model_ram:,} B" if r.model_flash else "-"
        lines.append(f"| {r.variant} | {r.accuracy:.1%} | {r.source} | {exact} | {snr} | {agree} | {fw} | {mdl} |")
    return "\n".join(lines)


def save_results(out: Path, rows: list[Row], meta: dict) -> None:
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": [r.__dict__ for r in rows]}, indent=1))
    (out / "results.md").write_text(table(rows) + "\n")
