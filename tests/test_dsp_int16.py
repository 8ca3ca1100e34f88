"""64-bit accumulators on DSP cores (SMLALD, issue 14): int16 weights, and int8 weights
(SXTB16 + SMLALD), on the emulated Cortex-M4.

1. The group kernels mcunn_dot_s{16,8}_64_g{1,3,4} against their portable twins
   (mcunn_dot_s*_64_g*_c, in the same firmware) and exact int64 numpy, bit for bit, on random
   and edge-case weights and inputs (every pair at -32768 * -32768, whose two-product sum 2^31
   overflows int32; sums far beyond 2^31), odd column counts (every tail path) and non-zero
   starting accumulators.
2. Whole models (LSTM, GRU, RNN; int16, and int8 declared 64-bit): `mcu-nn bench` on the board compares
   every output of every test vector with the simulator, and the portable C is checked on the
   host; covers shift == 32 and > 32 (the DSP requantisation / GRU SMMLAR split), shift < 32 (the
   portable requantisation over the SMLALD kernels), cell_frac 0, 11, 15 and saturating inputs.
3. The manifest's dsp_kernel and the bench label follow the kernels that ran.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import kernel_harness as kh
import qmodels as Q
from mcu_nn.bench import bench_export, kernel_path
from mcu_nn.codegen import write_export
from mcu_nn.codegen.emit import dsp_kernel_of, environment
from mcu_nn.sim import run
from mcu_nn.verify import verify

qemu = pytest.mark.qemu                  # skipped without the emulator (tests/conftest.py)

KERNEL_SOURCE = kh.kernel_program("""int main(void)
{
    int64_t acc[4];
    const void *end;
    int r;
{% for c in cases %}
    for (r = 0; r < {{ c.R }}; ++r) acc[r] = A{{ loop.index0 }}[r];
    end = mcunn_dot_{{ c.kind }}_64_g{{ c.R }}(W{{ loop.index0 }}, X{{ loop.index0 }}, {{ c.n }}, acc);
    put('D', {{ loop.index0 }}, acc, {{ c.R }}, (long)((const {{ c.wt }} *)end - W{{ loop.index0 }}));
    for (r = 0; r < {{ c.R }}; ++r) acc[r] = A{{ loop.index0 }}[r];
    end = mcunn_dot_{{ c.kind }}_64_g{{ c.R }}_c(W{{ loop.index0 }}, X{{ loop.index0 }}, {{ c.n }}, acc);
    put('P', {{ loop.index0 }}, acc, {{ c.R }}, (long)((const {{ c.wt }} *)end - W{{ loop.index0 }}));
{% endfor %}
    bench_puts("END\\n");
    return 0;
}
""", 64)


@qemu
def test_smlald_group_kernels_bit_exact_on_cortex_m4(tmp_path: Path) -> None:
    # "min" at 1, 8, 601: every int16 pair at -32768 * -32768, whose two-product sum 2^31 overflows int32
    cases = kh.group_cases(np.random.default_rng(14), (("s16", 64), ("s8", 64)),
                           sizes=[1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 40, 64, 601], extreme_sizes=(1, 8, 601))
    src = environment().from_string(KERNEL_SOURCE).render(cases=cases)
    text = kh.build_and_run(tmp_path, src, "dot64", "qemu-mps2-an386")
    kh.check(cases, kh.printed(text, "DP", 64), "DP")             # D: SMLALD, P: the portable twin
    # the sums really need 64 bits somewhere (else the test would not test the high words)
    assert any(abs(v) >= 1 << 31 for c in cases for v in c["av"] + c["wm"] @ c["xv"][:c["n"]])


# ------------------------------------------------------------------------------------ whole models
def _model(tmp_path: Path, kind: str, I: int, H: int, *, precision: str = "int16", **kw) -> Path:
    """A model of this file: int16 (or int8) with 64-bit accumulators declared."""
    return kh.export_model(tmp_path, kind, I, H, precision=precision, force64=True, **kw)


MODELS = {
    # name: (kind, I, H, options)
    "lstm_real": ("lstm", 16, 32, {}),
    "lstm_odd_loud": ("lstm", 7, 9, dict(gain=4.0, loud=40.0)),
    "lstm_shift32": ("lstm", 5, 11, dict(shift=32)),
    "lstm_cf0": ("lstm", 6, 8, dict(cell_frac=0, loud=20.0)),
    "lstm_cf15": ("lstm", 6, 8, dict(cell_frac=15, gain=3.0)),
    "lstm_shift_lt32": ("lstm", 5, 7, dict(real=False)),
    "gru_real_bidir": ("gru", 9, 13, dict(bidirectional=True)),
    "gru_shift32_loud": ("gru", 6, 10, dict(shift=32, gain=4.0, loud=40.0)),
    "gru_shift_lt32": ("gru", 4, 5, dict(real=False)),
    "rnn_tanh": ("rnn_tanh", 9, 11, dict(gain=3.0, loud=20.0)),
    # int8 weights with 64-bit accumulators (SXTB16 + SMLALD)
    "lstm_s8_loud": ("lstm", 13, 9, dict(precision="int8", gain=4.0, loud=40.0)),
    "lstm_s8_cf15": ("lstm", 8, 12, dict(precision="int8", cell_frac=15)),
    "lstm_s8_shift_lt32": ("lstm", 5, 7, dict(precision="int8", real=False)),
    "gru_s8_shift32": ("gru", 10, 6, dict(precision="int8", shift=32, gain=4.0, loud=40.0)),
    "gru_s8_bidir": ("gru", 7, 5, dict(precision="int8", bidirectional=True)),
}


def _acc64(d: Path) -> bool:
    return re.search(r"mcunn_dot_s(8|16)_64_g", (d / "model.c").read_text()) is not None


@qemu
@pytest.mark.parametrize("key", MODELS)
def test_int16_acc64_models_bit_exact_dsp_and_portable(tmp_path: Path, key: str) -> None:
    kind, I, H, opts = MODELS[key]
    d = _model(tmp_path, kind, I, H, **opts)
    assert _acc64(d), "this case must use 64-bit accumulators"
    r = verify(d, cross=False, log=lambda s: None)                 # portable C on the host
    assert r.ok and r.mismatches == 0, r.first_mismatch
    dsp = bench_export(d, "qemu-mps2-an386")                       # raises on the first differing bit
    port = bench_export(d, "qemu-mps2-an386", portable=True)
    assert dsp.vectors_checked == port.vectors_checked == 4
    assert (dsp.path, port.path) == ("simd", "portable")
    if key == "lstm_real":                    # the tiny layers gain little (set-up per pass)
        assert dsp.instructions_per_step * 3 < port.instructions_per_step
    assert all(layer["dsp_kernel"] == "smlald" for layer in json.loads((d / "model.json").read_text())["layers"]
               if "dsp_kernel" in layer)


@qemu
def test_acc64_on_cortex_m7_m33_and_m3(tmp_path: Path) -> None:
    for prec in ("int16", "int8"):
        d = _model(tmp_path, "gru", 6, 10, gain=4.0, loud=40.0, precision=prec, name=prec)
        assert bench_export(d, "qemu-mps2-an500").path == "simd"       # Cortex-M7: the DSP build
        assert bench_export(d, "qemu-mps2-an505").path == "simd"       # Cortex-M33: the DSP build
        assert bench_export(d, "qemu-mps2-an385").path == "v7m"        # Cortex-M3: the SMLAL kernels


def test_dsp_kernel_recorded_per_layer(tmp_path: Path) -> None:
    d = _model(tmp_path, "lstm", 5, 7, real=False)
    layer = json.loads((d / "model.json").read_text())["layers"][0]
    assert layer["dsp_kernel"] == "smlald"
    g = Q.make_graph("lstm", input_size=5, hidden=7, seq_len=5)
    for prec, force64, want in (("int8", False, "smlad"), ("int8", True, "smlald"), ("int16", False, None)):
        q = Q.quantize_graph(g, prec, force64=force64)
        x = Q.make_input(g, n=2)
        e = tmp_path / f"{prec}{force64}"
        write_export(q, e, x, run(q, x))
        m = json.loads((e / "model.json").read_text())
        got = m["layers"][0]["dsp_kernel"]
        assert got == want or (want is None and got in ("smlad", "smlald", "smlad+smlald")), (prec, force64, got)
        assert kernel_path(m, "qemu-mps2-an386") == ("portable" if got == "portable" else "simd")
        assert kernel_path(m, "qemu-mps2-an385") == ("portable" if got == "portable" else "v7m")
    assert dsp_kernel_of(["mcunn_dot_s16_32_g4", "mcunn_dot_s16_64_g4"]) == "smlad+smlald"
    assert dsp_kernel_of(["mcunn_dot_s8_32_g3", "mcunn_dot_s8_64_g3"]) == "smlad+smlald"
    two = {"precision": "int8", "layers": [{"dsp_kernel": "smlad"}, {"dsp_kernel": "portable"}]}
    assert kernel_path(two, "qemu-mps2-an386") == "mixed"
    old = {"precision": "int16", "layers": [{"kind": "QRecurrent"}]}        # manifests before dsp_kernel
    assert kernel_path(old, "qemu-mps2-an386") == "simd"
