"""``mcu-nn demo``: train a tiny activity classifier, export it as int8, verify it on the
host, build firmware for the emulated Cortex-M4, and compare the board's answers with
the simulator's over a real (emulated) serial link."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from .datasets import synthetic_imu

STEPS, FEATURES, CLASSES, HIDDEN = 32, 3, 4, 24


def train_demo_model(out_dir: Path, *, epochs: int = 25, log: Callable[[str], None] = print) -> Path:
    """Train an LSTM classifier on synthetic IMU data; save it as a torch.export archive and
    the calibration set beside it. Returns the .pt2 path."""
    import torch
    from torch import nn

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(FEATURES, HIDDEN, batch_first=True)
            self.head = nn.Linear(HIDDEN, CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

    torch.manual_seed(0)
    x, y = synthetic_imu(512, steps=STEPS, features=FEATURES, classes=CLASSES, seed=1)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model = Classifier()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for epoch in range(epochs):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xt[i:i + 64]), yt[i:i + 64])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        xv, yv = synthetic_imu(256, steps=STEPS, features=FEATURES, classes=CLASSES, seed=2)
        acc = (model(torch.from_numpy(xv)).argmax(-1).numpy() == yv).mean()
    log(f"trained LSTM(3->{HIDDEN}) + Linear({HIDDEN}->{CLASSES}) for {epochs} epochs: "
        f"held-out accuracy {acc:.1%}")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "har.pt2"
    torch.export.save(torch.export.export(model, (xt[:1],)), str(path))
    np.savez(out_dir / "calib.npz", x=xv[:128])
    return path


def run_demo(out_dir: Path, *, board: str = "qemu-mps2-an386", log: Callable[[str], None] = print) -> int:
    from .build import build_firmware
    from .onboard import serial_test
    from .pipeline import export_model
    from .report import export_summary
    from .verify import verify

    start = time.monotonic()
    log(f"== 1/5 train a tiny model (work directory {out_dir})")
    model = train_demo_model(out_dir, log=log)
    log("== 2/5 mcu-nn export har.pt2 --precision int8 --calib calib.npz")
    export_dir = out_dir / "har"
    result = export_model(model, export_dir, precision="int8", calib=str(out_dir / "calib.npz"),
                          name="har", log=log)
    log(export_summary(result))
    log("== 3/5 mcu-nn verify (host C under sanitizers == simulator)")
    if not verify(export_dir, log=log).ok:
        return 1
    log(f"== 4/5 mcu-nn build --board {board}")
    build_firmware(export_dir, board, log=log)
    log(f"== 5/5 mcu-nn serial-test --board {board} (QEMU, over a TCP serial link)")
    outcome = serial_test(export_dir, board=board, log=log)
    _print_answers(export_dir, outcome, log)
    log(f"demo finished in {time.monotonic() - start:.0f} s: "
        f"{'all outputs bit-exact' if outcome.ok else 'MISMATCH'}")
    return 0 if outcome.ok else 1


def _print_answers(export_dir: Path, outcome, log: Callable[[str], None]) -> None:
    """The board's answers next to the simulator's, one line per test sequence."""
    vectors = np.load(export_dir / "test_vectors.npz")
    expected = vectors["expected"]
    board = outcome.outputs
    log("sequence  simulator (int16 logits)          board (int16 logits)             class")
    for i, exp in enumerate(expected):
        got = board[i] if board is not None and i < len(board) else None
        got_text = " ".join(f"{v:6d}" for v in np.ravel(got)) if got is not None else "(not returned)"
        log(f"{i:8d}  {' '.join(f'{v:6d}' for v in np.ravel(exp)):32s}  {got_text:32s} "
            f"{int(np.argmax(exp))}")
    if outcome.mean_cycles_per_step is not None:
        log(f"{outcome.cycle_unit} per step on the board: mean {outcome.mean_cycles_per_step:,.0f}")
