"""Survey: every realzoo case, in every format it saves in, through export -> verify.

    python scripts/zoo_pipeline.py [--precision int8] [--only NAME,...] [--out FILE.md]

Prints a markdown table: case, format, result (OK with the int SNR vs the float model, or
the one error line). In-process (torch loaded once); a few minutes for the whole zoo."""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from mcu_nn.errors import McuNnError  # noqa: E402
from mcu_nn.pipeline import export_model  # noqa: E402
from mcu_nn.verify import verify  # noqa: E402
from realzoo import CASES, save  # noqa: E402


def one(case, fmt: str, precision: str, tmp: Path) -> str:
    suffix = {"pt2": ".pt2", "torchscript": ".ts.pt", "pickle": ".pkl.pt"}[fmt]
    model = save(case, fmt, tmp / f"{case.name}{suffix}")
    data = case.calib(64, 0)
    arrays = {"x": data["x"]}
    if "lengths" in data:
        arrays["lengths"] = data["lengths"]
    np.savez(tmp / "calib.npz", **arrays)
    shape = None if fmt == "pt2" else case.input_shape()
    r = export_model(model, tmp / "out", precision=precision, calib=str(tmp / "calib.npz"),
                     input_shape=shape, allow_pickle=fmt == "pickle", name=case.name, log=lambda s: None)
    v = verify(tmp / "out", cross=False, log=lambda s: None)
    if not v.ok:
        return f"VERIFY FAILED: {v.first_mismatch}"
    snr = "" if precision == "float32" else f" ({r.accuracy.snr_db:.1f} dB vs float)"
    return "OK" + snr


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--only", default="")
    ap.add_argument("--out")
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    only = set(filter(None, a.only.split(",")))
    rows = [f"# The real-world zoo through export and verify ({a.precision})", "",
            "`python scripts/zoo_pipeline.py` (tests/realzoo; every case in every format PyTorch saves it in). "
            "OK: exported, and the host C equals the simulator bit for bit; the dB figure is the quantised "
            "model against the float one on the calibration data. The PyTorch comparison is in "
            "tests/test_realzoo_export.py and tests/test_signatures*.py.", "",
            "| case | issue | format | result |", "|---|---|---|---|"]
    ok = total = 0
    t0 = time.time()
    for case in CASES:
        if only and case.name not in only:
            continue
        for fmt in case.formats:
            total += 1
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    res = one(case, fmt, a.precision, Path(tmp))
                except McuNnError as e:
                    res = f"error: {str(e).replace(tmp + '/', '')}"
                except Exception as e:   # a bug of ours: name it
                    res = f"CRASH: {type(e).__name__}: {str(e)[:200]}"
            ok += res.startswith("OK")
            rows.append(f"| {case.name} | {case.issue} | {fmt} | {res.replace('|', '/')[:400]} |")
            print(rows[-1], flush=True)
    rows.append(f"\n{ok} of {total} case/format pairs export and verify at {a.precision} "
                f"({time.time() - t0:.0f} s)")
    print(rows[-1])
    if a.out:
        Path(a.out).write_text("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
