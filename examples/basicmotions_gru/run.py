"""BasicMotions (UEA): a GRU classifies 6-channel IMU recordings (accelerometer + gyroscope,
100 steps at 10 Hz) into standing / walking / running / badminton, on the emulated
Cortex-M4. Run:  python examples/basicmotions_gru/run.py  (41 s on 2 cores, 3 min while other jobs shared them)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from common import deploy_and_measure, reproducible, save_results, table, train_classifier  # noqa: E402
from datasets import fold_standardisation, load_uea, standardise  # noqa: E402

HIDDEN = 32


class GRUClassifier(nn.Module):
    def __init__(self, features: int, classes: int, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.rnn = nn.GRU(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=HERE / "build")
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--qat-epochs", type=int, default=3)
    ap.add_argument("--qat-lr", type=float, default=1e-4)
    ap.add_argument("--no-board", action="store_true", help="accuracy from the simulator (bit-exact with the chip)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 8 sequences per split, 2 epochs")
    a = ap.parse_args(argv)
    start = time.monotonic()
    reproducible()                  # seeds (model initialisation too) and 2 threads
    x_tr, y_tr, x_te, y_te, classes = load_uea("BasicMotions")
    if a.quick:
        x_tr, y_tr, x_te, y_te = x_tr[::5], y_tr[::5], x_te[::5], y_te[::5]
        a.epochs, a.qat_epochs = 2, 1
    print(f"BasicMotions: {len(x_tr)} train / {len(x_te)} test sequences of {x_tr.shape[1]} steps x "
          f"{x_tr.shape[2]} channels, classes {classes}")
    mean, std, (s_tr, s_te) = standardise(x_tr, x_te)
    model = GRUClassifier(x_tr.shape[2], len(classes))
    print(f"== train GRU({x_tr.shape[2]}->{HIDDEN}) + Linear({HIDDEN}->{len(classes)}), {a.epochs} epochs")
    train_classifier(model, s_tr, y_tr, epochs=a.epochs, lr=1e-2, batch=8)
    fold_standardisation(model.rnn, mean, std)          # the chip takes raw sensor values
    raw_tr, raw_te = (np.where(np.isnan(v), mean, v).astype(np.float32) for v in (x_tr, x_te))
    rows = deploy_and_measure("basicmotions", model, raw_tr, y_tr, raw_te, y_te, a.out,
                              qat_epochs=a.qat_epochs, qat_lr=a.qat_lr, use_board=not a.no_board)
    save_results(a.out, rows, {"dataset": "BasicMotions", "model": f"GRU {HIDDEN}", "epochs": a.epochs,
                               "qat_epochs": a.qat_epochs, "seconds": round(time.monotonic() - start)})
    print(table(rows))
    print(f"done in {time.monotonic() - start:.0f} s; results in {a.out}/results.md, report {a.out}/report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
