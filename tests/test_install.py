"""`pip install .` (not -e) into a fresh virtual environment ships the templates, runtime
and firmware: export and verify work from another directory."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import zoo

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_pip_install_then_export_and_verify(tmp_path):
    venv = tmp_path / "venv"
    # --system-site-packages: reuse the machine's torch 2.13.0 instead of downloading a build
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    src = tmp_path / "src"                      # a copy, so no build artefacts land in the repo
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__",
                                                             ".pytest_cache", "mcu-nn-demo"))
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    shutil.rmtree(src)                          # the installed package must not need the source tree

    work = tmp_path / "elsewhere"
    work.mkdir()
    model = zoo.make_model("gru", input_size=4, hidden=16, readout="seq", head=None)
    zoo.save_model(model, work / "m.pt2", "pt2", zoo.example_input(model, T=8))
    np.save(work / "calib.npy", np.random.default_rng(0).standard_normal((16, 8, 4)).astype(np.float32))
    exe = venv / "bin" / "mcu-nn"
    r = subprocess.run([str(exe), "export", "m.pt2", "-o", "out", "--calib", "calib.npy"], cwd=work,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(exe), "verify", "out"], cwd=work, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    installed = subprocess.run([str(py), "-c", "import mcu_nn, pathlib; print(pathlib.Path(mcu_nn.__file__).parent)"],
                               cwd=work, capture_output=True, text=True, check=True).stdout.strip()
    assert str(venv) in installed
