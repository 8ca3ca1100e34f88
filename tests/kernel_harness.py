"""What the kernel tests on emulated cores share (test_dsp_int16 on the M4, test_helium on the
M55, test_v7m_kernels on the M3, test_dsp_lstm_loop): for the group kernels, the cases (weights, activations and starting accumulators at the
edges, packed as the export packs them, with a guard chunk after the segment), a C ``put`` that
prints each accumulator and the returned pointer as one hex line, building a test program with
the runtime for a board and running it under QEMU, and checking every kernel's lines against exact
integer sums; for whole models, one seeded model exported with the shift, cell fraction,
accumulator width and input loudness a test asks for.

A test program prints, per case i and kernel tag T, R lines ``T<i:4 hex> <acc hex> <used:4 hex>``
(acc as 8 hex digits for int32 accumulators, 16 for int64; used = weights the kernel moved the
pointer by) and then ``END``.
"""
from __future__ import annotations

import dataclasses
import math
import re
import subprocess
from pathlib import Path
from typing import Optional

import numpy as np

import qmodels as Q
from mcu_nn import fixedpoint as fp
from mcu_nn.bench import BOARDS, CFLAGS, FIRMWARE, STARTUP, run_bench
from mcu_nn.build import linker_script
from mcu_nn.codegen import render_runtime, write_export
from mcu_nn.codegen.emit import pack_group_weights
from mcu_nn.quant import quantize
from mcu_nn.ir import QModel
from mcu_nn.sim import run

SIZES = list(range(1, 18)) + [23, 31, 40, 63, 64, 65, 127, 511, 601]


def put_c(acc_bits: int) -> str:
    """C: ``static void put(char tag, int i, const int<acc_bits>_t *acc, int R, long used)``."""
    digits = acc_bits // 4
    return f"""static char line[{digits + 16}];
static void put(char tag, int i, const int{acc_bits}_t *acc, int R, long used)
{{
    int r, k, d;
    for (r = 0; r < R; ++r) {{
        uint{acc_bits}_t v = (uint{acc_bits}_t)acc[r];
        k = 0;
        line[k++] = tag;
        for (d = 12; d >= 0; d -= 4) line[k++] = "0123456789abcdef"[(i >> d) & 15];
        line[k++] = ' ';
        for (d = {acc_bits - 4}; d >= 0; d -= 4) line[k++] = "0123456789abcdef"[(unsigned)(v >> d) & 15u];
        line[k++] = ' ';
        for (d = 12; d >= 0; d -= 4) line[k++] = "0123456789abcdef"[(used >> d) & 15];
        line[k++] = '\\n';
        line[k] = 0;
        bench_puts(line);
    }}
}}
"""


def kernel_program(main: str, acc_bits: int, guard: str = "", imports: str = "") -> str:
    """A Jinja template of a kernel test program over ``cases`` (group_cases): ``imports`` (Jinja
    macro imports), the includes, ``#error`` unless ``guard`` (a preprocessor condition: the port
    is selected), per case the weight stream W<i>, the activations X<i> and the starting
    accumulators A<i> (int<acc_bits>_t), put() (put_c), then ``main``."""
    check = f'#if !({guard})\n#error "the kernels under test are not selected on this core"\n#endif\n' if guard else ""
    return (imports + '#include <stdint.h>\n#include "mcunn_fixedpoint.h"\n#include "bench.h"\n' + check
            + "{% for c in cases %}\n"
            + "static const {{ c.wt }} W{{ loop.index0 }}[{{ c.wlen }}] MCUNN_ALIGN4 = { {{ c.w }} };\n"
            + "static const int16_t X{{ loop.index0 }}[{{ c.n + 1 }}] = { {{ c.x }} };\n"
            + f"static const int{acc_bits}_t A{{{{ loop.index0 }}}}[{{{{ c.R }}}}] = {{ {{{{ c.a }}}} }};\n"
            + "{% endfor %}\n" + put_c(acc_bits) + main)


def ints(rng: np.random.Generator, shape, mode: str, bits: int) -> np.ndarray:
    """Signed ``bits``-bit integers: "min" all at the minimum (int8 x int16: every product at its
    largest, 2^22), "max" the minimum for int8 and the maximum for int16 (sums towards -2^31),
    "edge" drawn from the edges, "any" uniform."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if mode == "min":
        return np.full(shape, lo, np.int64)
    if mode == "max":
        return np.full(shape, lo if bits == 8 else hi, np.int64)
    if mode == "edge":
        return rng.choice([lo, lo + 1, lo // 2, -1, 0, 1, hi // 2, hi - 1, hi], shape).astype(np.int64)
    return rng.integers(lo, hi + 1, shape)


def group_cases(rng: np.random.Generator, kinds: tuple[tuple[str, int], ...] = (("s8", 32),), *,
                sizes: list[int] = SIZES, modes: tuple[str, ...] = ("min", "edge", "any"),
                extreme_sizes: tuple[int, ...] = (1, 7, 8, 9, 511), start_bits: dict | None = None) -> list[dict]:
    """Cases for the group kernels ``mcunn_dot_<kind>_<acc>_g<R>`` (kinds: (weight kind "s8"/"s16",
    accumulator bits 32/64)), R = 1, 3, 4 rows, every size, every mode ("min"/"max" only at
    ``extreme_sizes``, whose sums must stay inside the accumulator the export proves). int16
    weights with int32 accumulators are scaled to the export's bound (sum |w| * 32768 < 2^31).
    The stream is one segment of one group, packed as the export packs it, then one chunk of 99s:
    a kernel must stop its pointer at the segment's end. ``start_bits``: {acc bits: magnitude
    bits of the random starting accumulators} ("any" mode; else they start at 0)."""
    start_bits = start_bits or {32: 24, 64: 50}
    cases = []
    for kind, ab in kinds:
        bits, chunk = (16, 2) if kind == "s16" else (8, 4)
        for R in (1, 3, 4):
            for n in sizes:
                for mode in modes:
                    if mode in ("min", "max") and n not in extreme_sizes:
                        continue
                    w = ints(rng, (R, n), mode, bits)
                    # one more x than n, so that a kernel reading x[n] stays inside the array (the zero
                    # padding weights hide what it read; the guard chunk catches weight over-reads)
                    x = ints(rng, n + 1, mode, 16)
                    if kind == "s16" and ab == 32:
                        w = w // max(1, -(-int(np.abs(w).sum(axis=1).max()) // 65535))
                    lim = 1 << start_bits[ab]
                    a = rng.integers(-lim, lim, R) if mode == "any" else np.zeros(R, np.int64)
                    stream = pack_group_weights(w, np.zeros((R, 0), np.int64), R, chunk)
                    stream = np.concatenate([stream, np.full(chunk * R, 99, np.int64)])
                    cases.append(dict(kind=kind, ab=ab, wt=f"int{bits}_t", chunk=chunk, R=R, n=n, wm=w, xv=x, av=a,
                                      fn=f"mcunn_dot_{kind}_{ab}_g{R}", wlen=len(stream),
                                      w=", ".join(str(int(v)) for v in stream),
                                      x=", ".join(str(int(v)) for v in x),
                                      a=", ".join(f"INT{ab}_C({int(v)})" for v in a)))
    return cases


def build_and_run(tmp_path: Path, source: str, name: str, board: str, opt: str = "-O2") -> str:
    """Compile ``source`` with the runtime, start-up and semihosting for ``board`` (``opt`` after
    the bench's flags overrides their -O2); its output."""
    (tmp_path / f"{name}.c").write_text(source)
    for fname, text in render_runtime().items():
        (tmp_path / fname).write_text(text)
    b = BOARDS[board]
    elf, ld = tmp_path / f"{name}.elf", tmp_path / f"{name}.ld"
    ld.write_text(linker_script(b))
    subprocess.run(["arm-none-eabi-gcc", *CFLAGS, opt, "-I", str(tmp_path), "-I", str(FIRMWARE),
                    *b.cflags(), "-nostartfiles", "--specs=nosys.specs", "-T", str(ld), str(STARTUP),
                    str(FIRMWARE / "semihost.c"), str(tmp_path / f"{name}.c"),
                    str(tmp_path / "mcunn_fixedpoint.c"), "-o", str(elf)], check=True)
    text = run_bench(elf, board, timeout=120)
    assert "END" in text and "FAULT" not in text
    return text


def printed(text: str, tags: str, acc_bits: int) -> dict[tuple[str, int], list[tuple[int, int]]]:
    """{(tag, case): [(accumulator, used), ...]} from the program's lines."""
    got: dict[tuple[str, int], list[tuple[int, int]]] = {}
    pattern = rf"^([{tags}])([0-9a-f]{{4}}) ([0-9a-f]{{{acc_bits // 4}}}) ([0-9a-f]{{4}})$"
    for m in re.finditer(pattern, text, re.M):
        v = int(m.group(3), 16)
        got.setdefault((m.group(1), int(m.group(2), 16)), []).append(
            (v - (1 << acc_bits) if v >> (acc_bits - 1) else v, int(m.group(4), 16)))
    return got


def check(cases: list[dict], got: dict, tags: str, fresh: str = "") -> None:
    """Every kernel (tag) gave the starting accumulator + the exact sum (tags in ``fresh``: the
    exact sum alone, a call-site form that starts from nothing) and moved the pointer past the
    whole segment; every case printed by every tag."""
    printed_here = sum(1 for tag, _ in got if tag in tags)
    assert printed_here == len(tags) * len(cases), f"{printed_here} results for {len(cases)} cases x {tags}"
    for i, c in enumerate(cases):
        dots = [int(np.dot(c["wm"][r].astype(object), c["xv"][:c["n"]].astype(object))) for r in range(c["R"])]
        want = [int(c["av"][r]) + dots[r] for r in range(c["R"])]
        if c["ab"] == 32:
            assert all(abs(v) < 1 << 31 for v in want + dots), "a case beyond the int32 bound"
        used = -(-c["n"] // c["chunk"]) * c["chunk"] * c["R"]
        for tag in tags:
            what = f"{tag}: {c['fn']} n={c['n']} case {i}"
            assert [v for v, _ in got[(tag, i)]] == (dots if tag in fresh else want), what
            assert {u for _, u in got[(tag, i)]} == {used}, what + " (pointer)"


def largest_sum(cases: list[dict], acc_bits: int) -> int:
    """max |exact sum| over the cases with ``acc_bits`` accumulators: the tests show they reach
    the range they claim to test."""
    return max(abs(int(np.dot(c["wm"][r].astype(object), c["xv"][:c["n"]].astype(object))))
               for c in cases if c["ab"] == acc_bits for r in range(c["R"]))


# ------------------------------------------------------------------------------------ whole models
def set_shift(q: QModel, new: int) -> QModel:
    """The same model requantised with another common shift (mult and bias rescaled)."""
    ops = []
    for op in q.ops:
        if hasattr(op, "directions") and hasattr(op, "cell_frac"):
            dirs = []
            for d in op.directions:
                k = int(d.shift) - new
                assert k >= 0
                m = lambda mat: dataclasses.replace(mat, mult=np.round(np.asarray(mat.mult, np.float64) / 2 ** k)  # noqa: E731
                                                    .astype(np.int64))
                dirs.append(dataclasses.replace(d, wx=m(d.wx), wh=m(d.wh), shift=new,
                                                bias=np.asarray(d.bias, np.int64) >> k,
                                                bias_h=None if d.bias_h is None else np.asarray(d.bias_h, np.int64) >> k))
            op = dataclasses.replace(op, directions=dirs)
        ops.append(op)
    return dataclasses.replace(q, ops=ops)


def with_cell_frac(q: QModel, cf: int) -> QModel:
    """The same model with another LSTM cell-state fraction."""
    return dataclasses.replace(q, ops=[dataclasses.replace(op, cell_frac=cf) if hasattr(op, "cell_frac") else op
                                       for op in q.ops])


def force_acc64(q: QModel) -> QModel:
    """The same model with 64-bit accumulators declared for every recurrent matrix."""
    ops = []
    for op in q.ops:
        if hasattr(op, "directions") and hasattr(op, "cell_frac"):
            op = dataclasses.replace(op, directions=[dataclasses.replace(
                d, wx=dataclasses.replace(d.wx, acc_bits=64), wh=dataclasses.replace(d.wh, acc_bits=64))
                for d in op.directions])
        ops.append(op)
    return dataclasses.replace(q, ops=ops)


def export_model(tmp_path: Path, kind: str, I: int, H: int, *, precision: str = "int8", real: bool = True,
                 force64: bool = False, shift: Optional[int] = None, cell_frac: Optional[int] = None,
                 gain: float = 1.0, loud: float = 1.0, bidirectional: bool = False, proj: int = 0, layers: int = 1,
                 layout: str = "packed", name: str = "m") -> Path:
    """One seeded recurrent model exported with its test vectors: quantised by mcu-nn's quantiser
    from calibration data (``real``) or by the test quantiser (shift < 32), with 64-bit
    accumulators declared (``force64``), another shift or cell fraction; ``loud`` scales the test
    inputs far outside the calibration range (saturation)."""
    g = Q.make_graph(kind, input_size=I, hidden=H, seq_len=5, gain=gain, bidirectional=bidirectional, proj=proj,
                     layers=layers, readout="final:0,1" if bidirectional else None)
    if real:
        q = quantize(g, Q.make_input(g, n=16, seed=4), precision)
        q = force_acc64(q) if force64 else q
    else:
        q = Q.quantize_graph(g, precision, force64=force64)
    if shift is not None:
        q = set_shift(q, shift)
    if cell_frac is not None:
        q = with_cell_frac(q, cell_frac)
    x = Q.make_input(g, n=4) * loud
    d = tmp_path / name
    write_export(q, d, x, run(q, x), weight_layout=layout)
    return d


def export_ids_model(tmp_path: Path, kind: str, *, precision: str = "int8", force64: bool = False,
                     name: str = "ids") -> tuple[Path, QModel]:
    """A recurrent layer over token ids (vocabulary 11, H = 13; the input columns are picked, only
    W_hh streams through the dot kernels), exported with ids outside the vocabulary among its test
    inputs; the directory and the quantised model."""
    from mcu_nn.cells import cell_of
    from mcu_nn.ir import DirectionWeights, Graph, Recurrent
    V, H = 11, 13
    rows = cell_of(kind).n_gates * H
    rng = np.random.default_rng(1)
    k = 1 / math.sqrt(H)
    u = lambda *shape: rng.uniform(-k, k, shape).astype(np.float32)  # noqa: E731
    dirs = [DirectionWeights(u(rows, V), u(rows, H), u(rows), u(rows))]
    g = Graph(name="ids", input_kind="tokens", input_size=V, seq_len=6,
              ops=[Recurrent(kind, V, H, 0, False, dirs, source="ids", input_ids=True)])
    q = quantize(g, rng.integers(0, V, (16, 6)), precision)
    q = force_acc64(q) if force64 else q
    x = rng.integers(-1, V + 2, (3, 6))
    d = tmp_path / name
    write_export(q, d, x, run(q, x))
    return d, q


# ------------------------------------------------------------------------------------ cells
EDGE16 = [-32768, -32767, -16384, -4097, -4096, -64, -63, -1, 0, 1, 63, 64, 4095, 4096, 16384, 32766, 32767]
N_CELLS = 160
_CELL_PROGRAM = """#include <stdint.h>
#include "mcunn_fixedpoint.h"
#include "bench.h"
__GUARD__static const int32_t P[{{ n }}][4] = { {{ pre }} };
static const int16_t C0[{{ n }}] = { {{ c0 }} };
static const int32_t G[{{ n }}][5] = { {{ gru }} };
static int16_t out[{{ n }}];
static char line[16 * 5 + 8];
static void dump(const char *tag)
{
    int i, j, k;
    for (i = 0; i < {{ n }}; i += 16) {
        k = 0;
        for (j = 0; tag[j]; ++j) line[k++] = tag[j];
        for (j = i; j < i + 16 && j < {{ n }}; ++j) {
            uint32_t v = (uint16_t)out[j];
            int d;
            line[k++] = ' ';
            for (d = 12; d >= 0; d -= 4) line[k++] = "0123456789abcdef"[(v >> d) & 15u];
        }
        line[k++] = '\\n';
        line[k] = 0;
        bench_puts(line);
    }
}
{% for K in range(16) %}
static void lstm_k{{ K }}(void)
{
    int u;
    static int16_t c[{{ n }}];
    for (u = 0; u < {{ n }}; ++u) c[u] = C0[u];
    for (u = 0; u < {{ n }}; ++u) {
{{ lstm_cell('out[u]', 'P[u][0]', 'P[u][1]', 'P[u][2]', 'P[u][3]', '&c[u]', K) }}    }
    dump("H{{ K }}");
    for (u = 0; u < {{ n }}; ++u) out[u] = c[u];
    dump("C{{ K }}");
}
{% endfor %}
int main(void)
{
    int u;
{% for K in range(16) %}
    lstm_k{{ K }}();
{% endfor %}
__GRU__    bench_puts("END\\n");
    return 0;
}
"""


def cell_program(macros: str, gru: str, guard: str = "") -> str:
    """A Jinja template (render with n, pre, c0, gru: see cell_inputs and c_rows) of a program that
    runs a port's LSTM cell macro on every case for cell_frac 0..15 (lines H<K>, C<K>), then
    ``gru`` (C using its gru_cell macro and dump("G..")); ``macros``: the template the lstm_cell and
    gru_cell macros come from; ``guard``: a preprocessor condition the port needs."""
    check = f'#if !({guard})\n#error "the cells under test are not selected on this core"\n#endif\n' if guard else ""
    return (f'{{% from "{macros}" import lstm_cell, gru_cell %}}\n'
            + _CELL_PROGRAM.replace("__GUARD__", check).replace("__GRU__", gru))


def cell_results(text: str):
    """The program's dumped lines as a function: tag -> int16 values."""
    got: dict[str, list[int]] = {}
    for m in re.finditer(r"^([HCG]\d+)((?: [0-9a-f]{4})+)$", text, re.M):
        got.setdefault(m.group(1), []).extend(int(v, 16) for v in m.group(2).split())
    return lambda k: np.array(got[k], np.uint16).view(np.int16).astype(np.int64)


def check_lstm_cells(as16, pre: np.ndarray, c0: np.ndarray) -> None:
    """Every cell_frac's h and c against fixedpoint.lstm_cell."""
    for K in range(16):
        c_new, h = fp.lstm_cell(pre[:, 0], pre[:, 1], pre[:, 2], pre[:, 3], c0, K)
        np.testing.assert_array_equal(as16(f"H{K}"), h, err_msg=f"LSTM h, cell_frac {K}")
        np.testing.assert_array_equal(as16(f"C{K}"), c_new, err_msg=f"LSTM c, cell_frac {K}")


def cell_inputs(rng: np.random.Generator, n: int = N_CELLS):
    """(pre (n, 4), c0 (n,), gru (n, 5): r, z, n_x, n_h, h) for the cell programs: int16 edges,
    the interpolated region and any int16; the GRU's n_x / n_h over the whole int32 range."""
    def i16(k):   # a mix of edges, small (interpolated region) and any int16
        v = np.concatenate([rng.choice(EDGE16, k // 4), rng.integers(-40000, 40000, k // 4),
                            rng.integers(-5000, 5000, k - 2 * (k // 4))])
        return fp.sat16(rng.permutation(v))

    def i32():
        edge32 = np.array([fp.INT32_MIN, fp.INT32_MAX, -(1 << 30), (1 << 30) - 1, 0, -1, 1 << 20, -(1 << 20)])
        return np.concatenate([rng.choice(edge32, n // 4), rng.integers(fp.INT32_MIN, fp.INT32_MAX, n // 4, endpoint=True),
                               rng.integers(-(1 << 17), 1 << 17, n - 2 * (n // 4))])
    pre = np.stack([i16(n) for _ in range(4)], axis=1)
    c0 = i16(n)
    nx, nh = i32(), i32()
    gru = np.stack([i16(n), i16(n), rng.permutation(nx), rng.permutation(nh), i16(n)], axis=1)
    return pre, c0, gru


def c_rows(rows) -> str:
    """Rows as C initialisers ({a, b, ...}, ...; INT32_MIN by name)."""
    return ", ".join("{" + ", ".join(f"{int(v)}" if v > fp.INT32_MIN else "INT32_MIN" for v in r) + "}" for r in rows)


