"""The soak on the emulated Cortex-M4: >= 100,000 inferences compared bit for bit with the
simulator, once over a clean link and once through a lossy proxy (tests/lossy_proxy.py) that
drops, duplicates and corrupts frames both ways; prints a table (docs/soak.md has the figures).

    python scripts/soak.py                     # export a small LSTM, then clean + lossy, 6,000 sequences each
    python scripts/soak.py --export build/har -n 10000 --mode clean
    python scripts/soak.py --baseline 200      # also the plain serial-test path (RUN + STEP, one request at a time)

Inferences are model steps (one call of the model's _step, or one step of _run): a sequence of
T steps is T inferences. Every 64th sequence is 20 times the export's length (several RUN_DATA
chunks, or one STEP per step for every other one): state must carry across calls.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))          # lossy_proxy.py, a test helper

from lossy_proxy import LossyProxy  # noqa: E402

from mcu_nn.build import build_firmware, is_up_to_date  # noqa: E402
from mcu_nn.onboard import running_board, soak  # noqa: E402


def make_export(out: Path) -> Path:
    """A small sensor classifier: LSTM(6 -> 32) on 16 steps, Linear(32 -> 4) on the last, int8."""
    import torch
    from torch import nn

    import mcu_nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(6, 32, batch_first=True)
            self.head = nn.Linear(32, 4)

        def forward(self, x):
            y, _ = self.rnn(x)
            return self.head(y[:, -1])

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = Net().eval()
    x = np.random.default_rng(0).standard_normal((64, 16, 6)).astype(np.float32)
    mcu_nn.export(model, torch.from_numpy(x[:1]), calib=x, name="sensor", out=out, log=lambda s: None)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--export", type=Path, help="an export directory (default: a small LSTM exported into --work)")
    ap.add_argument("--work", type=Path, default=Path("build/soak"), help="where the default export goes")
    ap.add_argument("-n", type=int, default=6000, help="sequences per run (default 6000: >= 100,000 inferences)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--board", default="qemu-mps2-an386")
    ap.add_argument("--mode", choices=("clean", "lossy", "both"), default="both")
    ap.add_argument("--drop", type=float, default=0.01, help="lossy: probability a frame is dropped (each way)")
    ap.add_argument("--duplicate", type=float, default=0.005, help="lossy: probability a frame is doubled")
    ap.add_argument("--corrupt", type=float, default=0.0005, help="lossy: probability a byte is corrupted")
    ap.add_argument("--timeout", type=float, default=0.3, help="lossy: seconds to wait for a reply")
    ap.add_argument("--baseline", type=int, default=0, metavar="K",
                    help="also time K sequences through plain serial-test (RUN, then STEP step by step)")
    a = ap.parse_args()

    export = a.export or a.work / "sensor"
    if a.export is None and not (export / "model.json").is_file():
        print(f"exporting a small LSTM into {export}", flush=True)
        make_export(export)
    if not is_up_to_date(export, a.board):
        build_firmware(export, a.board, log=lambda s: None)
    log = lambda s: print(s, file=sys.stderr, flush=True)          # noqa: E731 - progress on stderr
    rows = []
    with running_board(export, board=a.board, log=log) as url:
        port = int(url.rsplit(":", 1)[1])
        if a.baseline:
            rows.append(("serial-test", baseline(export, url, a.baseline, a.seed), None))
        if a.mode in ("clean", "both"):
            rows.append(("clean", soak(export, a.n, port=url, seed=a.seed, log=log), None))
        if a.mode in ("lossy", "both"):
            with LossyProxy(("127.0.0.1", port), drop=a.drop, duplicate=a.duplicate, corrupt=a.corrupt,
                            seed=a.seed) as proxy:
                r = soak(export, a.n, port=proxy.url, seed=a.seed + 1, timeout=a.timeout, retries=10, log=log)
            rows.append((f"lossy (drop {a.drop:g}, dup {a.duplicate:g}, corrupt {a.corrupt:g}/B)", r, proxy.stats))
    table(rows)
    return 0 if all(getattr(r, "ok", True) for _, r, _ in rows) else 1


def baseline(export: Path, url: str, k: int, seed: int) -> dict:
    """The plain serial-test path on k random sequences of the export's length."""
    from mcu_nn.device.serial_test import serial_test
    from mcu_nn.exportdir import open_export, read_qmodel
    q = read_qmodel(open_export(export))
    cal = q.calibration["input"]
    x = np.random.default_rng(seed).uniform(cal["min"], cal["max"], (k, q.seq_len, q.input_size)).astype(np.float32)
    t = time.monotonic()
    r = serial_test(export, port=url, inputs=x, check_step=True, log=lambda s: None, progress=False)
    dt = time.monotonic() - t
    return {"ok": r.ok, "sequences": k, "steps": k * q.seq_len, "elapsed_s": dt, "retransmissions": r.retransmissions}


def table(rows) -> None:
    head = ("run", "sequences", "inferences", "mismatches", "retransmissions", "seqs resent", "link faults",
            "proxy dropped/dup/corrupted", "elapsed s", "seq/s", "inferences/s", "RSS start MiB", "RSS end MiB",
            "growth KiB")
    out = []
    for name, r, stats in rows:
        if isinstance(r, dict):
            dt = r["elapsed_s"]
            out.append((name, f"{r['sequences']:,}", f"{r['steps']:,}", "0" if r["ok"] else "≥1",
                        f"{r['retransmissions']:,}", "-", "-", "-", f"{dt:.1f}", f"{r['sequences'] / dt:,.1f}",
                        f"{r['steps'] / dt:,.0f}", "-", "-", "-"))
            continue
        proxy = "-" if stats is None else f"{stats['dropped']:,}/{stats['duplicated']:,}/{stats['corrupted']:,}"
        out.append((name, f"{r.sequences:,}", f"{r.steps:,}", f"{r.mismatches}", f"{r.retransmissions:,}",
                    f"{r.sequences_resent:,}", f"{r.link_faults:,}", proxy, f"{r.elapsed_s:.1f}",
                    f"{r.sequences_per_s:,.1f}", f"{r.steps_per_s:,.0f}", f"{r.rss_start_kb / 1024:.1f}",
                    f"{r.rss_peak_kb / 1024:.1f}", f"{r.rss_growth_kb:,}"))
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for row in out:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    sys.exit(main())
