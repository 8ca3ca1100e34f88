"""JapaneseVowels (UEA) fed as raw ADC codes: the case where post-training int8 loses
accuracy and quantisation-aware training wins it back.

The chip takes each channel as an unsigned 12-bit ADC code of a weak signal: zero at
mid-scale (2048) and a spread of 16 codes (one standard deviation, CODES_PER_STD), so the
offset is 128 times the signal. The standardisation (x - 2048) / 16 is folded into the LSTM's input
weights as in the other examples, which moves -W*2048/16 into the bias: with int8 weights
the rounding error of W multiplies the 2048 offset every step. QAT sees that error in its
forward pass and retrains weights and bias around it.
Run:  python examples/vowels_adc_lstm/run.py  (about 2 minutes on 2 cores shared with other jobs)."""
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
ADC_MID, ADC_MAX = 2048, 4095
CODES_PER_STD = 16


class LSTMClassifier(nn.Module):
    def __init__(self, features: int, classes: int, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.rnn = nn.LSTM(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def to_adc_codes(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """What a 12-bit ADC would deliver: integer codes around mid-scale (padding = 2048)."""
    codes = np.round(ADC_MID + CODES_PER_STD * (np.nan_to_num(x - mean) / std))
    return np.clip(codes, 0, ADC_MAX).astype(np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "build")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--qat-epochs", type=int, default=3)
    ap.add_argument("--qat-lr", type=float, default=1e-3)
    ap.add_argument("--no-board", action="store_true", help="accuracy from the simulator (bit-exact with the chip)")
    ap.add_argument("--quick", action="store_true", help="smoke run: a few sequences per split, 2 epochs")
    a = ap.parse_args(argv)
    start = time.monotonic()
    reproducible()                  # seeds (model initialisation too) and 2 threads
    x_tr, y_tr, x_te, y_te, classes = load_uea("JapaneseVowels")
    if a.quick:
        x_tr, y_tr, x_te, y_te = x_tr[::30], y_tr[::30], x_te[::40], y_te[::40]
        a.epochs, a.qat_epochs = 2, 1
    # the ADC's mapping comes from the training set only (a fixed front end, not a test-set fit)
    mean0, std0 = np.nanmean(x_tr, axis=(0, 1)), np.nanstd(x_tr, axis=(0, 1))
    a_tr, a_te = to_adc_codes(x_tr, mean0, std0), to_adc_codes(x_te, mean0, std0)
    print(f"JapaneseVowels as 12-bit ADC codes: {len(x_tr)} train / {len(x_te)} test sequences of "
          f"{x_tr.shape[1]} steps x {x_tr.shape[2]} channels; codes {a_tr.min():.0f}..{a_tr.max():.0f}, "
          f"offset {ADC_MID} = {ADC_MID / CODES_PER_STD:.0f} x the signal's standard deviation")
    mean, std, (s_tr, s_te) = standardise(a_tr, a_te)
    model = LSTMClassifier(x_tr.shape[2], len(classes))
    print(f"== train LSTM({x_tr.shape[2]}->{HIDDEN}) + Linear({HIDDEN}->{len(classes)}), {a.epochs} epochs")
    train_classifier(model, s_tr, y_tr, epochs=a.epochs, lr=1e-2, batch=32)
    fold_standardisation(model.rnn, mean, std)          # the chip takes the ADC codes as they come
    rows = deploy_and_measure("vowels_adc", model, a_tr, y_tr, a_te, y_te, a.out,
                              qat_epochs=a.qat_epochs, qat_lr=a.qat_lr,
                              qat_input_lr=a.qat_lr / ADC_MID, use_board=not a.no_board)
    save_results(a.out, rows, {"dataset": "JapaneseVowels (12-bit ADC codes)", "model": f"LSTM {HIDDEN}",
                               "epochs": a.epochs, "qat_epochs": a.qat_epochs, "qat_lr": a.qat_lr,
                               "seconds": round(time.monotonic() - start)})
    print(table(rows))
    print(f"done in {time.monotonic() - start:.0f} s; results in {a.out}/results.md, report {a.out}/report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
