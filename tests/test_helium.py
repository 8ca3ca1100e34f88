"""Helium (MVE) int8 group kernels on the emulated Cortex-M55 (QEMU mps3-an547, issue 14).

1. mcunn_dot_s8_32_g{1,3,4}_mve against the portable twins (mcunn_dot_s8_32_g*_c, same firmware)
   and exact numpy, bit for bit: random and edge-case weights and activations (every product at
   -128 * -32768; sums up to the int32 bound the export proves), every column count 1..17 and odd
   ones beyond (every tail-predicated remainder), non-zero starting accumulators, and the returned
   weight pointer (past the zero-padded chunks).
2. Whole int8 models (LSTM, GRU, RNN) on qemu-mps3-an547: `mcu-nn bench` compares every output of
   every test vector with the simulator for the DSP+MVE build and for the portable build, and the
   portable C is checked on the host; odd sizes, saturating inputs, cell_frac 0 and 15, shift
   < 32 (the portable requantisation over the MVE kernels), bidirectional, token-id inputs.
3. The manifest's mve_kernel and the bench label "mve".
4. The 64-bit-accumulator kernels mcunn_dot_s{16,8}_64_g*_mve (VMLALDAVA) against the SMLALD and
   portable ones and exact numpy; int16 / int8-acc64 models, the hand-written cells on them.
5. The 4-lane LSTM / GRU cells (templates/ports/cortex_m_mve/_cell_mve.j2) against the portable
   cells over every int16 pre-activation, edge values, every cell_frac, shifts 32..63, tails; and
   every whole model asserts the 4-lane cell is in the step exactly where it applies.
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
from mcu_nn.codegen.emit import environment, mve_kernel_of
from mcu_nn.quant import quantize
from mcu_nn.sim import run
from mcu_nn.verify import verify

qemu = pytest.mark.qemu                  # skipped without the emulator (tests/conftest.py)
BOARD = "qemu-mps3-an547"

KERNEL_SOURCE = kh.kernel_program("""int main(void)
{
    int32_t acc[4];
    const int8_t *end;
    int r;
{% for c in cases %}
    for (r = 0; r < {{ c.R }}; ++r) acc[r] = A{{ loop.index0 }}[r];
    end = mcunn_dot_s8_32_g{{ c.R }}_mve(W{{ loop.index0 }}, X{{ loop.index0 }}, {{ c.n }}, acc);
    put('M', {{ loop.index0 }}, acc, {{ c.R }}, (long)(end - W{{ loop.index0 }}));
    for (r = 0; r < {{ c.R }}; ++r) acc[r] = A{{ loop.index0 }}[r];
    end = mcunn_dot_s8_32_g{{ c.R }}_c(W{{ loop.index0 }}, X{{ loop.index0 }}, {{ c.n }}, acc);
    put('P', {{ loop.index0 }}, acc, {{ c.R }}, (long)(end - W{{ loop.index0 }}));
{% endfor %}
    bench_puts("END\\n");
    return 0;
}
""", 32, guard='MCUNN_MVE')


@qemu
def test_mve_group_kernels_bit_exact_on_cortex_m55(tmp_path: Path) -> None:
    cases = kh.group_cases(np.random.default_rng(55))        # "min" at 1, 7, 8, 9, 511: 511 * 2^22 < 2^31
    src = environment().from_string(KERNEL_SOURCE).render(cases=cases)
    text = kh.build_and_run(tmp_path, src, "dotmve", BOARD)
    kh.check(cases, kh.printed(text, "MP", 32), "MP")           # M: the MVE kernel, P: its portable twin
    assert kh.largest_sum(cases, 32) > 1 << 30                  # near the int32 bound the export allows


KERNEL64_SOURCE = kh.kernel_program("""int main(void)
{
    int64_t acc[4];
    int r;
{% for c in cases %}
    {
        const {{ c.wt }} *end;
        for (r = 0; r < {{ c.R }}; ++r) acc[r] = A{{ loop.index0 }}[r];
        end = mcunn_dot_{{ c.kind }}_64_g{{ c.R }}_mve(W{{ loop.index0 }}, X{{ loop.index0 }}, {{ c.n }}, acc);
        put('M', {{ loop.index0 }}, acc, {{ c.R }}, (long)(end - W{{ loop.index0 }}));
        for (r = 0; r < {{ c.R }}; ++r) acc[r] = A{{ loop.index0 }}[r];
        end = mcunn_dot_{{ c.kind }}_64_g{{ c.R }}(W{{ loop.index0 }}, X{{ loop.index0 }}, {{ c.n }}, acc);
        put('D', {{ loop.index0 }}, acc, {{ c.R }}, (long)(end - W{{ loop.index0 }}));
        for (r = 0; r < {{ c.R }}; ++r) acc[r] = A{{ loop.index0 }}[r];
        end = mcunn_dot_{{ c.kind }}_64_g{{ c.R }}_c(W{{ loop.index0 }}, X{{ loop.index0 }}, {{ c.n }}, acc);
        put('P', {{ loop.index0 }}, acc, {{ c.R }}, (long)(end - W{{ loop.index0 }}));
    }
{% endfor %}
    bench_puts("END\\n");
    return 0;
}
""", 64, guard='MCUNN_MVE')


@qemu
def test_mve_64bit_group_kernels_bit_exact_on_cortex_m55(tmp_path: Path) -> None:
    """mcunn_dot_s16_64_g*_mve / mcunn_dot_s8_64_g*_mve (VMLALDAVA.S16 into 64-bit accumulators)
    against the kernel name the models call (which must now be the MVE one), the portable twins and
    exact numpy: every column count 1..17 and odd ones beyond, products at -32768 x -32768 summed
    far past 2^32, 64-bit starting accumulators, and the returned pointer."""
    cases = kh.group_cases(np.random.default_rng(64), (("s16", 64), ("s8", 64)),
                           sizes=list(range(1, 18)) + [23, 31, 63, 64, 65, 127, 601],
                           extreme_sizes=(1, 7, 9, 601), start_bits={64: 40})
    src = environment().from_string(KERNEL64_SOURCE).render(cases=cases)
    text = kh.build_and_run(tmp_path, src, "dot64mve", BOARD)
    kh.check(cases, kh.printed(text, "MDP", 64), "MDP")   # M: MVE, D: the name the models call, P: portable
    assert kh.largest_sum(cases, 64) > 1 << 38

# ------------------------------------------------------------------------------------ whole models
_model = kh.export_model


MODELS = {
    # name: (kind, I, H, options)
    "lstm_16x32": ("lstm", 16, 32, {}),
    "lstm_odd_loud": ("lstm", 7, 9, dict(gain=4.0, loud=40.0)),
    "lstm_13x21": ("lstm", 13, 21, {}),
    "lstm_shift32": ("lstm", 5, 11, dict(shift=32)),
    "lstm_cf0": ("lstm", 6, 8, dict(cell_frac=0, loud=20.0)),
    "lstm_cf15": ("lstm", 6, 8, dict(cell_frac=15, gain=3.0)),
    "lstm_shift_lt32": ("lstm", 5, 7, dict(real=False)),
    "gru_bidir": ("gru", 9, 13, dict(bidirectional=True)),
    "gru_shift32_loud": ("gru", 6, 10, dict(shift=32, gain=4.0, loud=40.0)),
    "gru_17x3": ("gru", 17, 3, {}),
    "rnn_tanh": ("rnn_tanh", 9, 11, dict(gain=3.0, loud=20.0)),
    # the 4-lane cells (ports/cortex_m_mve/_cell_mve.j2): H < 4, H % 4 != 0, every branch of the cell
    "lstm_h1": ("lstm", 3, 1, {}),
    "lstm_h5_loud": ("lstm", 4, 5, dict(gain=4.0, loud=40.0)),
    "lstm_h3_cf12": ("lstm", 5, 3, dict(cell_frac=12)),
    "lstm_cf11_h6": ("lstm", 5, 6, dict(cell_frac=11, gain=3.0, loud=10.0)),
    "lstm_bidir_h13": ("lstm", 6, 13, dict(bidirectional=True, loud=10.0)),
    "lstm_proj": ("lstm", 7, 12, dict(proj=5)),
    "gru_h1": ("gru", 4, 1, {}),
    "gru_h5_shift33_loud": ("gru", 5, 5, dict(shift=33, gain=4.0, loud=40.0)),
    "gru_16x32": ("gru", 16, 32, {}),
    "gru_shift_lt32": ("gru", 5, 6, dict(real=False)),
}
# the step runs the scalar cell: shift < 32 (the portable requantisation), or no LSTM / GRU
SCALAR_CELL = {"lstm_shift_lt32", "gru_shift_lt32", "rnn_tanh"}


@qemu
@pytest.mark.parametrize("key", MODELS)
def test_int8_models_bit_exact_mve_and_portable(tmp_path: Path, key: str) -> None:
    kind, I, H, opts = MODELS[key]
    d = _model(tmp_path, kind, I, H, **opts)
    src = "".join(p.read_text() for p in d.glob("*.c") if p.name != "mcunn_fixedpoint.c")
    assert re.search(r"mcunn_dot_s8_32_g\d", src), "this case must use the int8 int32 kernels"
    assert ("vqshl.s32" in src) == (key not in SCALAR_CELL), "the 4-lane cell where it applies, only there"
    r = verify(d, cross=False, log=lambda s: None)                 # portable C on the host
    assert r.ok and r.mismatches == 0, r.first_mismatch
    mve = bench_export(d, BOARD)                                   # raises on the first differing bit
    port = bench_export(d, BOARD, portable=True)
    assert mve.vectors_checked == port.vectors_checked == 4
    assert (mve.path, port.path) == ("mve", "portable")
    if H >= 4:       # below, one 4-lane cell for 1-3 units costs about what the portable one does
        assert mve.instructions_per_step < port.instructions_per_step
    layers = [la for la in json.loads((d / "model.json").read_text())["layers"] if "dsp_kernel" in la]
    assert layers and all(la["mve_kernel"] == "mve" for la in layers)


# 64-bit accumulators (int16 weights, or int8 forced to 64 bits): the VMLALDAVA kernels, the 4-lane cells
MODELS64 = {
    "lstm_int16": ("lstm", 11, 13, dict(precision="int16", force64=True)),
    "lstm_int16_loud_cf15": ("lstm", 6, 9, dict(precision="int16", force64=True, gain=4.0, loud=40.0, cell_frac=15)),
    "lstm_int16_shift32_proj": ("lstm", 7, 10, dict(precision="int16", force64=True, shift=32, proj=4)),
    "gru_int16_bidir": ("gru", 9, 6, dict(precision="int16", force64=True, bidirectional=True)),
    "gru_int16_shift_lt32": ("gru", 5, 7, dict(precision="int16", force64=True, real=False)),
    "rnn_int16": ("rnn_tanh", 17, 5, dict(precision="int16", force64=True, gain=3.0, loud=20.0)),
    "lstm_int8_acc64": ("lstm", 13, 21, dict(force64=True)),
    "gru_int8_acc64_loud": ("gru", 6, 10, dict(force64=True, gain=4.0, loud=40.0)),
    "lstm_int16_quantiser": ("lstm", 40, 8, dict(precision="int16")),
}


@qemu
@pytest.mark.parametrize("key", MODELS64)
def test_64bit_accumulator_models_bit_exact_mve_and_portable(tmp_path: Path, key: str) -> None:
    kind, I, H, opts = MODELS64[key]
    d = _model(tmp_path, kind, I, H, **opts)
    src = "".join(p.read_text() for p in d.glob("*.c") if p.name != "mcunn_fixedpoint.c")
    assert re.search(r"mcunn_dot_s(8|16)_64_g\d", src), "this case must use the 64-bit kernels"
    assert ("vqshl.s32" in src) == (key not in ("gru_int16_shift_lt32", "rnn_int16")), "the 4-lane cell where it applies"
    r = verify(d, cross=False, log=lambda s: None)
    assert r.ok and r.mismatches == 0, r.first_mismatch
    mve = bench_export(d, BOARD)                                   # raises on the first differing bit
    port = bench_export(d, BOARD, portable=True)
    assert mve.vectors_checked == port.vectors_checked == 4
    layers = [la for la in json.loads((d / "model.json").read_text())["layers"] if "dsp_kernel" in la]
    assert layers and all(la["mve_kernel"] in ("mve", "mve+smlad") for la in layers)
    want = "mve" if all(la["mve_kernel"] == "mve" for la in layers) else "simd"
    assert (mve.path, port.path) == (want, "portable")
    assert mve.instructions_per_step < port.instructions_per_step

@qemu
@pytest.mark.parametrize("precision", ["int8", "int16"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_one_hot_ids_layers_on_m55(tmp_path: Path, kind: str, precision: str) -> None:
    """Token-id input: the input columns are picked, only W_hh streams through the MVE kernel;
    ids outside the vocabulary too."""
    d, q = kh.export_ids_model(tmp_path, kind, precision=precision, force64=precision == "int16")  # int16: VMLALDAVA for W_hh
    src = "".join(p.read_text() for p in d.glob("*.c") if p.name != "mcunn_fixedpoint.c")
    # the 4-lane cell exactly where the requantisation shift is >= 32 (these small vocabularies: 27 for
    # int8, so the scalar step on the MVE kernels)
    assert ("vqshl.s32" in src) == (int(q.ops[0].directions[0].shift) >= 32)
    mve = bench_export(d, BOARD)
    port = bench_export(d, BOARD, portable=True)
    assert (mve.path, port.path) == ("mve", "portable") and mve.vectors_checked == 3


def test_mve_kernel_recorded_per_layer(tmp_path: Path) -> None:
    g = Q.make_graph("lstm", input_size=5, hidden=7, seq_len=5)
    for force64, want in ((False, "mve"), (True, "mve")):        # 64-bit accumulators: VMLALDAVA
        q = Q.quantize_graph(g, "int8", force64=force64)
        x = Q.make_input(g, n=2)
        e = tmp_path / f"f{force64}"
        write_export(q, e, x, run(q, x))
        m = json.loads((e / "model.json").read_text())
        assert m["layers"][0]["mve_kernel"] == want
        assert kernel_path(m, BOARD) == "mve"
        assert kernel_path(m, BOARD, portable=True) == "portable"
        assert kernel_path(m, "qemu-mps2-an386") == "simd"              # Cortex-M4: no MVE
    assert mve_kernel_of(["mcunn_dot_s8_32_g4", "mcunn_dot_s8_64_g4"]) == "mve"
    assert mve_kernel_of(["mcunn_dot_s16_64_g4"]) == "mve"
    assert mve_kernel_of(["mcunn_dot_s16_32_g3", "mcunn_dot_s16_64_g3"]) == "mve+smlad"     # int16, int32 sums: SMLAD
    assert mve_kernel_of(["mcunn_dot_s16_32_g3"]) == "smlad"
    old = {"precision": "int8", "layers": [{"dsp_kernel": "smlad"}]}      # manifests before mve_kernel
    assert kernel_path(old, BOARD) == "simd"


# ------------------------------------------------------------------------ the vector cells (4 lanes)
CELL_SOURCE = """{% from "ports/cortex_m_mve/_cell_mve.j2" import lstm_cell4, gru_cell4 %}
#include <stdint.h>
#include "mcunn_fixedpoint.h"
#include "bench.h"
#if !MCUNN_MVE
#error "the Helium kernels are not selected on this core"
#endif
static uint32_t rng_ = 2463534242u;
static uint32_t xs(void) { rng_ ^= rng_ << 13; rng_ ^= rng_ >> 17; rng_ ^= rng_ << 5; return rng_; }
static const int16_t E16[] = { -32768, -32767, -32766, -16384, -4097, -4096, -64, -63, -1, 0, 1, 63, 64,
                               4095, 4096, 16383, 32766, 32767 };
static const int32_t E32[] = { INT32_MIN, INT32_MIN + 1, -(1 << 30), -(1 << 30) + 1, -32769, -32768, -1, 0, 1,
                               32767, 32768, (1 << 30) - 1, 1 << 30, INT32_MAX - 1, INT32_MAX };
static int16_t pick16(void)
{
    uint32_t r = xs();
    if ((r & 3) == 0) return E16[(r >> 8) % (sizeof E16 / sizeof E16[0])];
    if ((r & 3) == 1) return (int16_t)((int32_t)(r >> 16) % 6000 - 3000);   /* the interpolated part */
    return (int16_t)(r >> 16);
}
static int32_t pick32(void)
{
    uint32_t r = xs();
    if ((r & 3) == 0) return E32[(r >> 8) % (sizeof E32 / sizeof E32[0])];
    if ((r & 3) == 1) return (int32_t)pick16() << (xs() % 18);
    return (int32_t)xs();
}
{% for K in Ks %}{% for tail in (False, True) %}
static void lstm{{ K }}_{{ tail | int }}(int32_t p_[4][4], int16_t *c, int16_t *hnew, int n_)
{
    int16_t *sb_ = c, *hb_ = hnew;
{{ lstm_cell4(tail, K) }}
    (void)n_;
}
{% endfor %}{% endfor %}
{% for S in shifts %}{% for tail in (False, True) %}
static void gru{{ S }}_{{ tail | int }}(int32_t p_[4][4], const int16_t *h, int16_t *hnew, int n_)
{
    const int16_t *sb_ = h;
    int16_t *hb_ = hnew;
{{ gru_cell4(tail, S) }}
    (void)n_;
}
{% endfor %}{% endfor %}
static char line[48];
static void put(char tag, int k, long bad, long runs)
{
    int i = 0, d;
    line[i++] = tag;
    for (d = 4; d >= 0; d -= 4) line[i++] = "0123456789abcdef"[(k >> d) & 15];
    line[i++] = ' ';
    for (d = 28; d >= 0; d -= 4) line[i++] = "0123456789abcdef"[(bad >> d) & 15];
    line[i++] = ' ';
    for (d = 28; d >= 0; d -= 4) line[i++] = "0123456789abcdef"[(runs >> d) & 15];
    line[i++] = '\\n';
    line[i] = 0;
    bench_puts(line);
}
int main(void)
{
    int32_t p[4][4], q[4][4];          /* the cells use p as scratch: q keeps the inputs */
    int16_t c[8], cr[8], h[8], hn[8];
    long it, bad, runs;
    int l, n, tail;
{% for K in Ks %}
    bad = 0; runs = 0;
    for (it = 0; it < {{ iters }}; ++it) {
        /* the first 16384 runs: every int16 pre-activation in some lane of every gate, all 4 lanes checked */
        tail = it >= 16384 && (it & 1); n = tail ? 1 + (int)(xs() % 4) : 4;   /* all lanes, then 1..4 */
        for (l = 0; l < 4; ++l) {
            int g;
            for (g = 0; g < 4; ++g)
                p[g][l] = it < 16384 ? (int32_t)(int16_t)(4 * (((it * 4 + g * 4097) >> 2) & 16383) + l - 32768) : pick16();
        }
        for (l = 0; l < 8; ++l) { c[l] = cr[l] = pick16(); hn[l] = (int16_t)(0x5a5a + l); }
        for (l = 0; l < 16; ++l) q[l >> 2][l & 3] = p[l >> 2][l & 3];
        if (tail) lstm{{ K }}_1(p, c, hn, n); else lstm{{ K }}_0(p, c, hn, n);
        for (l = 0; l < 8; ++l) {
            if (l < n) {
                int16_t want = mcunn_lstm_cell((int16_t)q[0][l], (int16_t)q[1][l], (int16_t)q[2][l], (int16_t)q[3][l],
                                               &cr[l], {{ K }});
                bad += (hn[l] != want) + (c[l] != cr[l]);
            } else {
                bad += (hn[l] != (int16_t)(0x5a5a + l)) + (c[l] != cr[l]);     /* lanes past n untouched */
            }
        }
        ++runs;
    }
    put('L', {{ K }}, bad, runs);
{% endfor %}
{% for S in shifts %}
    bad = 0; runs = 0;
    for (it = 0; it < {{ iters }}; ++it) {
        tail = it >= 16384 && (it & 1); n = tail ? 1 + (int)(xs() % 4) : 4;   /* all lanes, then 1..4 */
        for (l = 0; l < 4; ++l) {
            p[0][l] = it < 16384 ? (int32_t)(int16_t)(4 * (it & 16383) + l - 32768) : pick16();
            p[1][l] = it < 16384 ? (int32_t)(int16_t)(4 * ((it * 7 + 5) & 16383) + l - 32768) : pick16();
            p[2][l] = pick32();
            p[3][l] = pick32();
        }
        for (l = 0; l < 8; ++l) { h[l] = pick16(); hn[l] = (int16_t)(0x5a5a + l); }
        for (l = 0; l < 16; ++l) q[l >> 2][l & 3] = p[l >> 2][l & 3];
        if (tail) gru{{ S }}_1(p, h, hn, n); else gru{{ S }}_0(p, h, hn, n);
        for (l = 0; l < 8; ++l) {
            if (l < n) {
                int16_t want = mcunn_gru_cell((int16_t)q[0][l], (int16_t)q[1][l], q[2][l] >> {{ S - 32 }},
                                              q[3][l] >> {{ S - 32 }}, h[l]);
                bad += hn[l] != want;
            } else {
                bad += hn[l] != (int16_t)(0x5a5a + l);
            }
        }
        ++runs;
    }
    put('G', {{ S }}, bad, runs);
{% endfor %}
    bench_puts("END\\n");
    return 0;
}
"""


@qemu
def test_mve_cells_bit_exact_on_cortex_m55(tmp_path: Path) -> None:
    """The 4-lane LSTM / GRU cells (templates/ports/cortex_m_mve/_cell_mve.j2) against the portable
    mcunn_lstm_cell / mcunn_gru_cell on the same firmware: every int16 pre-activation in every gate,
    then random and edge values (c, h, the GRU's n_x / n_h high words over all of int32), every
    cell_frac, shift 32 / 33 / 41 / 63, all four lanes and the tail-predicated 1..3 (lanes past n
    neither loaded nor stored)."""
    Ks, shifts, iters = list(range(16)), [32, 33, 41, 63], 20000
    src = environment().from_string(CELL_SOURCE).render(Ks=Ks, shifts=shifts, iters=iters)
    text = kh.build_and_run(tmp_path, src, "cellmve", BOARD)
    got = {(m.group(1), int(m.group(2), 16)): (int(m.group(3), 16), int(m.group(4), 16))
           for m in re.finditer(r"^([LG])([0-9a-f]{2}) ([0-9a-f]{8}) ([0-9a-f]{8})$", text, re.M)}
    assert set(got) == {("L", k) for k in Ks} | {("G", s) for s in shifts}
    for key, (bad, runs) in got.items():
        assert runs == iters and bad == 0, f"{key}: {bad} mismatches"


@qemu
@pytest.mark.parametrize("kind", ["peephole_lstm", "gru_reset_before"])
@pytest.mark.parametrize("precision", ["int16", "int8"])
def test_hand_written_cells_on_the_mve_kernels(tmp_path: Path, kind: str, precision: str) -> None:
    """The hand-written cells (scalar cell) call the group kernels by name, so on the M55 they run the
    MVE ones too (64-bit accumulators declared): MVE build, portable build and simulator bit for bit."""
    import math
    from mcu_nn.cells import cell_of
    from mcu_nn.ir import DirectionWeights, Graph, Recurrent
    I, H = 7, 6
    rng = np.random.default_rng(3)
    k = 2.0 / math.sqrt(H)

    def u(*shape):
        return rng.uniform(-k, k, shape).astype(np.float32)

    G = cell_of(kind).n_gates * H
    d = DirectionWeights(u(G, I), u(G, H), u(G), u(G))
    if "peephole" in cell_of(kind).extra_params:
        d.extra["peephole"] = u(3, H)
    g = Graph(kind, "float", I, 5, [Recurrent(kind, I, H, 0, False, [d], "cell")])
    q = kh.force_acc64(quantize(g, rng.normal(0, 1, (16, 5, I)).astype(np.float32), precision))
    x = rng.normal(0, 3, (4, 5, I)).astype(np.float32)
    e = tmp_path / "cell"
    write_export(q, e, x, run(q, x))
    src = "".join(p.read_text() for p in e.glob("*.c") if p.name != "mcunn_fixedpoint.c")
    assert re.search(r"mcunn_dot_s(8|16)_64_g\d", src)
    r = verify(e, cross=False, log=lambda s: None)
    assert r.ok and r.mismatches == 0, r.first_mismatch
    mve = bench_export(e, BOARD)
    port = bench_export(e, BOARD, portable=True)
    assert (mve.path, port.path) == ("mve", "portable") and mve.vectors_checked == 4
