"""The worked examples as a user runs them: ``pip install -e '.[examples]'`` into a fresh
environment, then ``python examples/<name>/run.py`` from any directory with no PYTHONPATH.
Smoke runs on tiny subsets (the full runs are scripts, see docs/examples.md): train ->
export int16/int8 -> verify -> QAT -> report, simulator answers. The UEA data come from
tests/fixtures/uea (MCUNN_UEA_DIR), so the test extra needs no aeon; a stub that refuses to
import stands in for aeon, so a test that still needed it would fail here, not skip."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UEA = ROOT / "tests" / "fixtures" / "uea"          # tests/fixtures/make_uea_npz.py wrote them from aeon
VARIANTS = ["float32 (PyTorch)", "int16 (post-training)", "int8 (post-training)", "int8 (QAT)"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(python of a venv with an editable install of a copy of the checkout, that copy)."""
    pytest.importorskip("matplotlib")
    tmp = tmp_path_factory.mktemp("examples")
    src = tmp / "src"          # a copy, so the editable install writes nothing into the checkout
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__",
                                                             ".pytest_cache", "mcu-nn-demo"))
    # --system-site-packages: reuse the machine's torch and matplotlib; --no-deps: nothing to fetch
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(tmp / "venv")], check=True)
    py = tmp / "venv" / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "-e", f"{src}[examples]"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return py, src


def _run(py: Path, script: Path, out: Path) -> list[dict]:
    noaeon = out.parent / "noaeon"
    noaeon.mkdir(exist_ok=True)
    (noaeon / "aeon.py").write_text("raise ImportError('aeon is hidden: the examples must run on the fixtures')\n")
    # only the install provides mcu_nn (PYTHONPATH holds nothing but the stub that hides aeon)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(noaeon),
           "MCUNN_UEA_DIR": str(UEA)}
    proc = subprocess.run([str(py), str(script), "--quick", "--no-board", "--out", str(out)], cwd=out.parent,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "results.json").read_text())["rows"]


@pytest.mark.slow
def test_basicmotions_example_runs_after_editable_install(installed, tmp_path) -> None:
    py, src = installed
    rows = _run(py, src / "examples" / "basicmotions_gru" / "run.py", tmp_path / "bm")
    assert [r["variant"] for r in rows] == VARIANTS
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    assert rows[1]["snr_db"] > 50                     # int16 follows float closely even untrained
    assert (tmp_path / "bm" / "report.html").stat().st_size > 20000
    for d in ("int16", "int8", "int8_qat"):
        assert (tmp_path / "bm" / d / "model.json").is_file()


@pytest.mark.slow
def test_adc_example_runs_and_takes_raw_adc_codes(installed, tmp_path) -> None:
    py, src = installed
    rows = _run(py, src / "examples" / "vowels_adc_lstm" / "run.py", tmp_path / "adc")
    assert [r["variant"] for r in rows] == VARIANTS
    manifest = json.loads((tmp_path / "adc" / "int8" / "model.json").read_text())
    # the chip's int16 input range covers the ADC codes themselves (around 2048), not standardised values
    assert 2048 < manifest["input_scale"] * 32767 <= 4096


def test_without_aeon_the_data_come_from_the_fixtures_or_one_install_line(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "aeon", None)                 # import aeon -> ImportError
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    monkeypatch.delitem(sys.modules, "datasets", raising=False)
    from datasets import load_uea
    monkeypatch.setenv("MCUNN_UEA_DIR", str(UEA))
    x_tr, y_tr, x_te, y_te, classes = load_uea("BasicMotions")
    assert x_tr.shape == x_te.shape == (40, 100, 6) and x_tr.dtype.name == "float32" and len(classes) == 4
    x_tr, y_tr, x_te, y_te, classes = load_uea("JapaneseVowels")
    assert (len(x_tr), len(x_te), x_tr.shape[2], len(classes)) == (270, 370, 12, 9) and y_tr.dtype.name == "int64"
    with pytest.raises(SystemExit, match="has no NoSuchSet.npz"):
        load_uea("NoSuchSet")
    monkeypatch.delenv("MCUNN_UEA_DIR")
    with pytest.raises(SystemExit, match=r"pip install 'mcu-nn\[examples\]'"):
        load_uea("BasicMotions")
