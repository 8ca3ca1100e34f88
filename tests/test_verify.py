"""verify: every model kind/option through write_export -> host C under sanitizers ->
zero differing bits (int) / stated tolerance (float32); and its failure modes."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import qmodels as Q
from mcu_nn.codegen import write_export
from mcu_nn.errors import McuNnError
from mcu_nn.sim import run
from mcu_nn.verify import verify

CASES = [
    ("lstm", {}), ("lstm", {"proj": 3, "layers": 2}), ("lstm", {"bias": False, "readout": "last"}),
    ("lstm", {"bidirectional": True, "layers": 2, "readout": "final:1"}),
    ("lstm", {"bidirectional": True, "proj": 2, "readout": "final:0,1", "head": ("linear:3",)}),
    ("gru", {}), ("gru", {"bias": False, "layers": 2}), ("gru", {"bidirectional": True}),
    ("gru", {"vocab": 13, "readout": "last", "head": ("linear:5", "relu", "linear:3", "sigmoid")}),
    ("rnn_tanh", {"layers": 2, "head": ("linear:3", "tanh")}),
    ("rnn_tanh", {"bidirectional": True, "vocab": 6, "readout": "last"}),
    ("rnn_relu", {"readout": "final:0", "head": ("linear:2",)}), ("rnn_relu", {"bidirectional": True, "layers": 2}),
]


def _export(tmp: Path, kind: str, kw: dict, precision: str, *, force64: bool = False, cell_frac: int = 11,
            seq_len: int = 6, gain: float = 3.0) -> Path:
    g = Q.make_graph(kind, seq_len=seq_len, gain=gain, **kw)
    q = Q.quantize_graph(g, precision, force64=force64, cell_frac=cell_frac)
    x = Q.make_input(g, n=4) * (1 if g.input_kind == "tokens" else 2)   # *2: reach saturation too
    expected = Q.float_forward(g, x) if precision == "float32" else run(q, x)
    d = tmp / "export"
    write_export(q, d, x, expected)
    return d


@pytest.mark.parametrize("precision", ["int8", "int16"])
@pytest.mark.parametrize("kind,kw", CASES)
def test_integer_exports_are_bit_exact(tmp_path, kind, kw, precision):
    r = verify(_export(tmp_path, kind, kw, precision), cross=False, log=lambda s: None)
    assert r.ok and r.mismatches == 0 and r.vectors == 4, r.first_mismatch


@pytest.mark.parametrize("kind,kw", CASES[::3])
def test_acc64_and_cell_frac_variants(tmp_path, kind, kw):
    d = _export(tmp_path, kind, kw, "int8", force64=True, cell_frac=13)
    assert "mcunn_dot_s8_64" in (d / "model.c").read_text()
    assert verify(d, cross=False, log=lambda s: None).ok


@pytest.mark.parametrize("kind,kw", CASES[::2])
def test_float32_exports_within_tolerance(tmp_path, kind, kw):
    # gain 1: an exploding relu RNN would amplify float32 rounding-order differences past 1e-5
    r = verify(_export(tmp_path, kind, kw, "float32", gain=1.0), cross=False, log=lambda s: None)
    assert r.ok, r.first_mismatch
    assert r.max_abs_error < 1e-5


def test_corrupted_expected_value_is_reported(tmp_path):
    d = _export(tmp_path, "lstm", {}, "int16")
    z = dict(np.load(d / "test_vectors.npz"))
    z["expected"][3 % len(z["expected"]), 4, 2] += 1
    np.savez(d / "test_vectors.npz", **z)
    lines: list[str] = []
    r = verify(d, cross=False, allow_modified=True, log=lines.append)
    assert not r.ok and r.mismatches == 2   # once through model_run, once through model_step
    assert r.first_mismatch.startswith("vector 3, step 4, output 2: expected ")
    assert any(ln.startswith("verify model: FAILED") for ln in lines)


def test_cross_build_reports_sizes_and_keeps_export_pristine(tmp_path):
    if not shutil.which("arm-none-eabi-gcc"):
        pytest.skip("arm-none-eabi-gcc not installed")
    d = _export(tmp_path, "gru", {"readout": "last"}, "int8")
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    r = verify(d, log=lambda s: None)
    assert r.ok and r.sizes["text"] > 0 and r.sizes["rodata"] > 2 * 514 * 2 - 1 and r.sizes["bss"] == 0
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


def test_missing_directory_and_manifest(tmp_path):
    with pytest.raises(McuNnError, match="does not exist"):
        verify(tmp_path / "nope", log=lambda s: None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(McuNnError, match="model.json is missing"):
        verify(tmp_path / "empty", log=lambda s: None)


def test_compile_error_is_first_compiler_line(tmp_path):
    d = _export(tmp_path, "rnn_tanh", {}, "int16")
    (d / "model.c").write_text((d / "model.c").read_text() + "\nint broken(void) { return nope; }\n")
    with pytest.raises(McuNnError, match=r"failed: .*model\.c:\d+:\d+: error: .*nope") as e:
        verify(d, cross=False, allow_modified=True, log=lambda s: None)   # edited on purpose
    assert "\n" not in str(e.value)


def test_sanitizer_report_fails_verify(tmp_path):
    d = _export(tmp_path, "rnn_tanh", {}, "int16")
    src = (d / "model.c").read_text().replace("void model_reset(model_state_t *s)\n{",
                                              "void model_reset(model_state_t *s)\n{\n    ((volatile int16_t *)s)[-4] = 1;", 1)
    (d / "model.c").write_text(src)
    with pytest.raises(McuNnError, match="harness of model failed.*AddressSanitizer"):
        verify(d, cross=False, allow_modified=True, log=lambda s: None)


@pytest.mark.parametrize("precision", ["int8", "int16", "float32"])
@pytest.mark.parametrize("kind,kw", [("lstm", {"proj": 2, "readout": "last", "head": ("linear:3",)}),
                                     ("gru", {"bidirectional": True, "layers": 2}),
                                     ("rnn_tanh", {"vocab": 8, "readout": "final:0", "head": ("linear:2", "sigmoid")})])
def test_exports_of_the_real_quantiser(tmp_path, kind, kw, precision):
    from mcu_nn.quant import quantize
    g = Q.make_graph(kind, seq_len=6, **kw)
    calib = Q.make_input(g, n=16, seed=7)
    if g.input_kind == "tokens":
        calib = np.clip(calib, 0, g.input_size - 1)   # the quantiser refuses out-of-range calibration ids
    q = quantize(g, calib, precision)
    x = calib[:3]
    d = tmp_path / "export"
    write_export(q, d, x, run(q, x))
    r = verify(d, cross=False, log=lambda s: None)
    assert r.ok, r.first_mismatch
