"""ARMv6-M (MCUNN_V6M, templates/ports/cortex_m0) on the emulated Cortex-M0 (QEMU microbit).

1. The LDRSB + MULS group dot products mcunn_dot_s8_32_g{1,3,4}_v6m (the asm mcunn_v6m_dot_g* for
   the whole chunks, the portable twin for the last n % 4 columns) and the fused per-unit kernels
   mcunn_v6m_unit_g{3,4}, against the portable twins in the same firmware and exact numpy, bit
   for bit: every column count 1..17 and odd ones beyond (odd and even chunk counts), every
   product at -128 * -32768, sums near the int32 bound the export proves, non-zero starting
   accumulators, the returned weight pointer.
2. The requantisation's high word without a 64-bit multiply (mcunn_requant2_hi_v6m,
   mcunn_requant1_hi_v6m, and mcunn_requant2_shr_v6m: the approximate high word from 3 MULS a
   product with the exact fallback near a rounding boundary, shifts 34, 36, 41, 53) against Python
   integers: ax, ah, mx, mh at +-2^31 and every 16-bit
   half boundary, biases to +-2^61; and mcunn_gru_cell_v6m (r * n_h from 16-bit halves) against
   fixedpoint.py with n_x, n_h over the whole int32 range (the shift-32 path); mcunn_lstm_cell_v6m
   (branch-free activations) against fixedpoint.lstm_cell for every cell_frac 0..15, saturated
   pre-activations and extreme c.
3. Whole int8 models (the cases of test_v7m_kernels: odd sizes, saturating inputs, cell_frac 0 / 15,
   shift 32 / < 32, bidirectional, RNN, token ids): `mcu-nn bench` compares every output of every
   test vector with the simulator for the v6m build and for the portable build on the M0.
4. The manifest's v6m_kernel and the bench label "v6m".
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import kernel_harness as kh
import qmodels as Q
from mcu_nn import fixedpoint as fx
from mcu_nn.bench import bench_export, kernel_path
from mcu_nn.codegen import write_export
from mcu_nn.codegen.emit import environment, pack_group_weights, v6m_kernel_of
from mcu_nn.sim import run
from test_v7m_kernels import MODELS

qemu = pytest.mark.qemu                  # skipped without the emulator (tests/conftest.py)
BOARD = "qemu-microbit"

SIZES = list(range(1, 18)) + [23, 31, 40, 63, 64, 65, 127, 511]

KERNEL_SOURCE = kh.kernel_program("""int main(void)
{
    int32_t acc[8];
    const int8_t *end;
    int r;
{% for c in cases %}
    for (r = 0; r < {{ c.R }}; ++r) acc[r] = A{{ loop.index0 }}[r];
    end = mcunn_dot_s8_32_g{{ c.R }}(W{{ loop.index0 }}, X{{ loop.index0 }}, {{ c.n }}, acc);
    put('F', {{ loop.index0 }}, acc, {{ c.R }}, (long)(end - W{{ loop.index0 }}));
    for (r = 0; r < {{ c.R }}; ++r) acc[r] = A{{ loop.index0 }}[r];
    end = mcunn_dot_s8_32_g{{ c.R }}_c(W{{ loop.index0 }}, X{{ loop.index0 }}, {{ c.n }}, acc);
    put('P', {{ loop.index0 }}, acc, {{ c.R }}, (long)(end - W{{ loop.index0 }}));
{% if c.R > 1 and c.n % 4 == 0 %}
    /* the fused unit kernel: the same segment twice (x, then h = the same vector) */
    end = mcunn_v6m_unit_g{{ c.R }}(W{{ loop.index0 }}, X{{ loop.index0 }}, {{ c.n // 4 }}, X{{ loop.index0 }}, 0 + {{ c.n // 4 }}, acc);
    put('U', {{ loop.index0 }}, acc, {{ 2 * c.R }}, (long)(end - W{{ loop.index0 }}));
{% endif %}
{% endfor %}
    bench_puts("END\\n");
    return 0;
}
""", 32, guard='MCUNN_V6M && !MCUNN_DSP')


def _cases(rng: np.random.Generator) -> list[dict]:
    """kernel_harness's cases; where the fused unit kernel applies (R > 1, whole chunks) the segment
    is stored twice, as the unit kernel reads x's segment then h's (here the same vector)."""
    cases = kh.group_cases(rng, sizes=SIZES, modes=("min", "max", "edge", "any"),
                           extreme_sizes=(1, 3, 4, 5, 8, 9, 12, 16, 511))          # 511 * 2^22 < 2^31
    for c in cases:
        if c["R"] > 1 and c["n"] % 4 == 0:
            seg = pack_group_weights(c["wm"], np.zeros((c["R"], 0), np.int64), c["R"], 4)
            stream = np.concatenate([seg, seg, np.full(4 * c["R"], 99, np.int64)])
            c.update(wlen=len(stream), w=", ".join(str(int(v)) for v in stream))
    return cases


@qemu
@pytest.mark.parametrize("opt", ["-O2", "-O0", "-Os"])
def test_v6m_group_kernels_bit_exact_on_cortex_m0(tmp_path: Path, opt: str) -> None:
    cases = _cases(np.random.default_rng(3))
    if opt != "-O2":                         # the asm at other optimisation levels: a subset
        cases = [c for c in cases if c["n"] <= 17 or c["n"] == 64]
    src = environment().from_string(KERNEL_SOURCE).render(cases=cases)
    text = kh.build_and_run(tmp_path, src, "dotv6m", BOARD, opt)
    got = kh.printed(text, "FPU", 32)
    kh.check(cases, got, "FP")                       # F: the v6m function, P: its portable twin
    for i, c in enumerate(cases):                    # U: the fused unit kernel over the segment twice
        if c["R"] > 1 and c["n"] % 4 == 0:
            dots = [int(np.dot(c["wm"][r], c["xv"][:c["n"]])) for r in range(c["R"])]
            assert [v for v, _ in got[("U", i)]] == dots + dots, f"v6m unit R={c['R']} n={c['n']} case {i}"
            assert {u for _, u in got[("U", i)]} == {2 * c["n"] * c["R"]}, f"unit pointer, case {i}"
    assert len(got) == 2 * len(cases) + sum(1 for c in cases if c["R"] > 1 and c["n"] % 4 == 0)
    if opt == "-O2":
        assert kh.largest_sum(cases, 32) > 1 << 30


RQ_SOURCE = """#include <stdint.h>
#include "mcunn_fixedpoint.h"
#include "bench.h"
#if !MCUNN_V6M
#error "the ARMv6-M kernels are not selected on this core"
#endif
static const mcunn_rq_t Q[{{ n }}] = { {{ q }} };
static const int32_t A[{{ n }}][2] = { {{ a }} };
static const int32_t G[{{ ng }}][5] = { {{ gru }} };
static const int32_t P[{{ ng }}][4] = { {{ pre }} };
static const int16_t C0[{{ ng }}] = { {{ c0 }} };
static char line[40];
static void put(char tag, int i, int32_t v)
{
    int k = 0, d;
    line[k++] = tag;
    for (d = 12; d >= 0; d -= 4) line[k++] = "0123456789abcdef"[(i >> d) & 15];
    line[k++] = ' ';
    for (d = 28; d >= 0; d -= 4) line[k++] = "0123456789abcdef"[((uint32_t)v >> d) & 15u];
    line[k++] = ' ';
    for (d = 0; d < 4; ++d) line[k++] = '0';
    line[k++] = '\\n';
    line[k] = 0;
    bench_puts(line);
}
int main(void)
{
    int i;
    for (i = 0; i < {{ n }}; ++i) {
        put('R', i, mcunn_requant2_hi_v6m(&Q[i], A[i][0], A[i][1]));
        put('S', i, mcunn_requant1_hi_v6m(&Q[i].bias, A[i][0], Q[i].mx));
{% for sh in shifts %}
        put('{{ "TUVW"[loop.index0] }}', i, mcunn_requant2_shr_v6m(&Q[i], A[i][0], A[i][1], {{ sh }}));
{% endfor %}
    }
    for (i = 0; i < {{ ng }}; ++i)
        put('G', i, mcunn_gru_cell_v6m((int16_t)G[i][0], (int16_t)G[i][1], G[i][2], G[i][3], (int16_t)G[i][4]));
{% for K in range(16) %}
    for (i = 0; i < {{ ng }}; ++i) {
        int16_t c = C0[i];
        int32_t h = mcunn_lstm_cell_v6m(P[i][0], P[i][1], P[i][2], P[i][3], &c, {{ K }});
        put('H', {{ K }} * 256 + i, h);
        put('C', {{ K }} * 256 + i, c);
    }
{% endfor %}
    bench_puts("END\\n");
    return 0;
}
"""


SHIFTS = (2, 4, 9, 21)


def _i32(v: int) -> str:
    return "INT32_MIN" if v == fx.INT32_MIN else str(v)


@qemu
@pytest.mark.parametrize("opt", ["-O2", "-O0", "-Os"])
def test_v6m_requant_and_cells_bit_exact_on_cortex_m0(tmp_path: Path, opt: str) -> None:
    """(-O0 keeps r7 for the frame pointer: the exact high word is then C, the rest asm)"""
    rng = np.random.default_rng(11)
    e32 = [fx.INT32_MIN, fx.INT32_MIN + 1, fx.INT32_MAX, 0, 1, -1, 0xFFFF, 0x10000, -0x10000, -0xFFFF,
           0x7FFF, 0x8000, -0x8000, 0x18000, -0x18000, (1 << 30), -(1 << 30)]
    rows = []
    while len(rows) < 600:
        k = len(rows)
        pick = (lambda: int(rng.choice(e32))) if k % 3 == 0 else \
            (lambda: int(rng.integers(fx.INT32_MIN, fx.INT32_MAX, endpoint=True)))
        ax, ah, mx, mh = pick(), pick(), pick(), pick()
        if k % 3 == 2:                              # typical sizes: 24-bit sums, 31-bit multipliers
            ax, ah = int(rng.integers(-(1 << 24), 1 << 24)), int(rng.integers(-(1 << 24), 1 << 24))
        if mx == fx.INT32_MIN:
            mx += 1                                 # |mult| < 2^31 (quantize.choose_shift)
        if mh == fx.INT32_MIN:
            mh += 1
        b = int(rng.integers(-(1 << 61), 1 << 61)) if k % 2 else int(rng.integers(-(1 << 20), 1 << 20))
        if abs(b + ax * mx + ah * mh) >= (1 << 62) + (1 << 61) or abs(b + ax * mx) >= (1 << 62) + (1 << 61):
            continue
        rows.append((b, mx, mh, ax, ah))
    q = ", ".join(f"{{{b}LL, {_i32(mx)}, {_i32(mh)}}}" for b, mx, mh, _, _ in rows)
    a = ", ".join(f"{{{_i32(ax)}, {_i32(ah)}}}" for *_, ax, ah in rows)
    pre, c0, gru = kh.cell_inputs(np.random.default_rng(8))
    e = np.array(kh.EDGE16, np.int64)               # every edge pre-activation against every edge c
    pre[:len(e), 0], pre[:len(e), 1], pre[:len(e), 2], pre[:len(e), 3] = e, e[::-1], e, e[::-1]
    c0[len(e):2 * len(e)] = e
    assert len(gru) <= 256
    src = environment().from_string(RQ_SOURCE).render(n=len(rows), q=q, a=a, shifts=SHIFTS, ng=len(gru), gru=kh.c_rows(gru), pre=kh.c_rows(pre),
                                                      c0=", ".join(str(int(v)) for v in c0))
    got = kh.printed(kh.build_and_run(tmp_path, src, "rqv6m", BOARD, opt), "A-Z", 32)
    for i, (b, mx, mh, ax, ah) in enumerate(rows):
        assert got[("R", i)][0][0] == (b + ax * mx + ah * mh) >> 32, f"requant2 row {i}: {rows[i]}"
        assert got[("S", i)][0][0] == (b + ax * mx) >> 32, f"requant1 row {i}: {rows[i]}"
        for tag, sh in zip("TUVW", SHIFTS):   # the approximate high word and its exact fallback
            assert got[(tag, i)][0][0] == (b + ax * mx + ah * mh) >> (32 + sh), f"shift {32 + sh} row {i}: {rows[i]}"
    want = fx.gru_cell(gru[:, 0], gru[:, 1], gru[:, 2], gru[:, 3], gru[:, 4])
    assert [got[("G", i)][0][0] for i in range(len(gru))] == [int(v) for v in want]
    for K in range(16):
        c_new, h = fx.lstm_cell(pre[:, 0], pre[:, 1], pre[:, 2], pre[:, 3], c0, K)
        assert [got[("H", K * 256 + i)][0][0] for i in range(len(pre))] == [int(v) for v in h], f"h, cell_frac {K}"
        assert [got[("C", K * 256 + i)][0][0] for i in range(len(pre))] == [int(v) for v in c_new], f"c, cell_frac {K}"


# ------------------------------------------------------------------------------------ whole models
EXTRA = {
    "lstm_40x64": ("lstm", 40, 64, {}),                 # fused unit kernel, even chunk counts
    "lstm_12x20": ("lstm", 12, 20, dict(gain=3.0, loud=20.0)),   # odd chunk counts (3, 5)
    "gru_20x12": ("gru", 20, 12, dict(shift=32, gain=4.0, loud=40.0)),
    "lstm_bidir_odd": ("lstm", 7, 5, dict(bidirectional=True, cell_frac=15)),
}


@qemu
@pytest.mark.parametrize("key", list(MODELS) + list(EXTRA))
def test_int8_models_bit_exact_v6m_and_portable(tmp_path: Path, key: str) -> None:
    kind, I, H, opts = {**MODELS, **EXTRA}[key]
    d = kh.export_model(tmp_path, kind, I, H, **opts)
    src = "".join(p.read_text() for p in d.glob("*.c") if p.name != "mcunn_fixedpoint.c")
    assert re.search(r"mcunn_dot_s8_32_g\d", src), "this case must use the int8 int32 kernels"
    v6m = bench_export(d, BOARD)                                   # raises on the first differing bit
    port = bench_export(d, BOARD, portable=True)
    assert v6m.vectors_checked == port.vectors_checked == 4
    assert (v6m.path, port.path) == ("v6m", "portable")
    assert v6m.instructions_per_step < port.instructions_per_step
    layers = [la for la in json.loads((d / "model.json").read_text())["layers"] if "dsp_kernel" in la]
    assert layers and all(la["v6m_kernel"] == "v6m" for la in layers)


@qemu
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_one_hot_ids_layers_on_m0(tmp_path: Path, kind: str) -> None:
    d, _ = kh.export_ids_model(tmp_path, kind)
    v6m = bench_export(d, BOARD)
    port = bench_export(d, BOARD, portable=True)
    assert (v6m.path, port.path) == ("v6m", "portable") and v6m.vectors_checked == 3
    assert v6m.instructions_per_step < port.instructions_per_step      # the v6m code ran


@qemu
def test_int16_model_on_m0_stays_portable_and_exact(tmp_path: Path) -> None:
    """int16 weights (64-bit accumulators): the portable C on the M0 (label "portable"), still exact."""
    g = Q.make_graph("lstm", input_size=6, hidden=8, seq_len=5)
    q = Q.quantize_graph(g, "int16")
    x = Q.make_input(g, n=2)
    write_export(q, tmp_path / "i16", x, run(q, x))
    r = bench_export(tmp_path / "i16", BOARD)
    assert r.path == "portable" and r.vectors_checked == 2


def test_v6m_kernel_recorded_per_layer(tmp_path: Path) -> None:
    g = Q.make_graph("lstm", input_size=5, hidden=7, seq_len=5)
    for prec, force64, want in (("int8", False, "v6m"), ("int8", True, "portable"), ("int16", False, "portable")):
        q = Q.quantize_graph(g, prec, force64=force64)
        x = Q.make_input(g, n=2)
        e = tmp_path / f"{prec}{force64}"
        write_export(q, e, x, run(q, x))
        m = json.loads((e / "model.json").read_text())
        assert m["layers"][0]["v6m_kernel"] == want
        assert kernel_path(m, BOARD) == want
        assert kernel_path(m, BOARD, portable=True) == "portable"
        assert kernel_path(m, "qemu-mps2-an386") == "simd"
    assert v6m_kernel_of(["mcunn_dot_s8_32_g4", "mcunn_dot_s8_32_g4"]) == "v6m"
    assert v6m_kernel_of(["mcunn_dot_s8_32_g4", "mcunn_dot_s8_64_g4"]) == "mixed"
    assert v6m_kernel_of(["mcunn_dot_s16_32_g3"]) == "portable"
    assert v6m_kernel_of([]) == "portable"
    two = {"precision": "int8", "layers": [{"dsp_kernel": "smlad", "v6m_kernel": "v6m"},
                                           {"dsp_kernel": "portable", "v6m_kernel": "portable"}]}
    assert kernel_path(two, BOARD) == "mixed"
    old = {"precision": "int8", "layers": [{"dsp_kernel": "smlad"}]}      # manifests before v6m_kernel
    assert kernel_path(old, BOARD) == "portable"


@qemu
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_int8_wide_layout_on_m0(tmp_path: Path, kind: str) -> None:
    """int8 weights stored as int16 (int32 accumulators): the portable int16 dot kernels inside the
    v6m branch (its requantisation and cells), bit-exact; labelled "mixed" (v6m code around
    portable dot kernels), and faster than the portable build."""
    from mcu_nn.quant import quantize
    g = Q.make_graph(kind, input_size=13, hidden=9, seq_len=5, gain=2.0)
    q = quantize(g, Q.make_input(g, n=16, seed=4), "int8")
    x = Q.make_input(g, n=4) * 20.0
    write_export(q, tmp_path / "w", x, run(q, x), weight_layout="wide")
    assert re.search(r"mcunn_dot_s16_32_g\d", (tmp_path / "w" / "model.c").read_text())
    r = bench_export(tmp_path / "w", BOARD)
    port = bench_export(tmp_path / "w", BOARD, portable=True)
    assert r.vectors_checked == port.vectors_checked == 4 and (r.path, port.path) == ("mixed", "portable")
    assert r.instructions_per_step < port.instructions_per_step
