"""Smoke run of a worked example on a tiny subset (the full runs are scripts, see
docs/examples.md): train -> export int16/int8 -> verify -> QAT -> report, simulator answers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_basicmotions_example_quick(tmp_path) -> None:
    pytest.importorskip("aeon")
    pytest.importorskip("matplotlib")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "basicmotions_gru" / "run.py"), "--quick",
                           "--no-board", "--out", str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["float32 (PyTorch)", "int16 (post-training)",
                                            "int8 (post-training)", "int8 (QAT)"]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    assert rows[1]["snr_db"] > 50                     # int16 follows float closely even untrained
    assert (tmp_path / "report.html").stat().st_size > 20000
    for d in ("int16", "int8", "int8_qat"):
        assert (tmp_path / d / "model.json").is_file()
