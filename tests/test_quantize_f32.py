"""mcunn_quantize_f32_n (the float-input step's quantisation: BFI + VMLA + VCVT.S16 on cores with
a single-precision FPU) against fixedpoint.quantize_input, bit for bit, on edge floats (NaN of
either sign and payload, +-inf, +-0, subnormals, halfway cases, 0.5 - 2^-25 whose + 0.5 rounds up,
the int16 limits and their neighbours, huge values) and random bit patterns, at scales that
overflow, underflow, are 0, -0, +inf or negative (the portable fallback), for every length 1..13
(the 4-value loop and its tail, unaligned outputs): on the host under ASan/UBSan (portable C)
and on the emulated Cortex-M4F, M7, M33 and M55 (the FPU asm). A model's <name>_step_f32 on the
host under ASan/UBSan (non-finite and rounding-edge inputs among its float inputs); on the boards
mcu-nn bench checks it on every test vector (tests/test_bench.py)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import kernel_harness as kh
from runtime_program import build_runtime_program

from mcu_nn import fixedpoint as fp

LENGTHS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13]
SCALES = [1.0, 4096.0, float(np.float32(1 / 0.0123)), 0.5, 3.0e38, 1e-30, 0.0, -0.0, float("inf"), -2.0]


def edge_floats() -> np.ndarray:
    f = np.float32
    base = [0.0, 1.0, 0.5, 1.5, 2.5, 3.5, 0.25, 0.75, 16383.5, 32766.5, 32767.0, 32767.5, 32768.0, 32768.5,
            32769.0, 65535.5, 65536.0, 2.0 ** 23, 2.0 ** 23 + 1, 2.0 ** 24, 2.0 ** 30, 2.0 ** 31, 2.0 ** 32, 1e10,
            float(np.finfo(np.float32).max), float(np.finfo(np.float32).tiny), 1e-45, 1e-40, 0.49999997, 4095.5]
    vals = []
    for v in base:
        for s in (1.0, -1.0):
            x = f(s * v)
            vals += [x, np.nextafter(x, f(np.inf)), np.nextafter(x, f(-np.inf))]
    vals += [f(k) + f(0.5) for k in range(-8, 8)]
    bits = np.array([0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF,
                     0xFFFFFFFF, 0x3EFFFFFF, 0xBEFFFFFF, 0x00000001, 0x80000001, 0x007FFFFF, 0x807FFFFF,
                     0x80000000], np.uint32)
    rng = np.random.default_rng(5)
    rand_bits = rng.integers(0, 1 << 32, 1500, dtype=np.uint64).astype(np.uint32)
    normal = np.concatenate([rng.normal(0, 3, 300), rng.normal(0, 4e4, 200)]).astype(np.float32)
    return np.concatenate([np.array(vals, np.float32), bits.view(np.float32), rand_bits.view(np.float32), normal])


def expected(x: np.ndarray) -> dict[float, np.ndarray]:
    with np.errstate(all="ignore"):
        return {s: fp.quantize_input(x, s) for s in SCALES}


def _chunks(n: int):
    """(offset, length) pieces covering n values, cycling through LENGTHS."""
    out, at, k = [], 0, 0
    while at < n:
        ln = min(LENGTHS[k % len(LENGTHS)], n - at)
        out.append((at, ln))
        at, k = at + ln, k + 1
    return out


def _scale_literal(s: float) -> str:
    if np.isinf(s):
        return "(1.0f / 0.0f)" if s > 0 else "(-1.0f / 0.0f)"
    if s == 0:
        return "-0.0f" if np.signbit(s) else "0.0f"
    return "%.9ef" % float(np.float32(s))


def program(x: np.ndarray, puts: str, includes: str) -> str:
    bits = ", ".join(f"0x{int(b):08x}u" for b in x.view(np.uint32))
    chunks = ", ".join(f"{{{a}, {n}}}" for a, n in _chunks(x.size))
    scales = ", ".join(_scale_literal(s) for s in SCALES)
    end = puts.replace("line", '"END\\n"')
    return f"""#include <stdint.h>
#include <string.h>
#include "mcunn_fixedpoint.h"
{includes}
static const uint32_t XB[{x.size}] = {{ {bits} }};
static const int CH[][2] = {{ {chunks} }};
static float X[{x.size}];
static int16_t Q[{x.size} + 1];
static char line[16 * 5 + 16];
int main(void)
{{
    const float S[] = {{ {scales} }};
    unsigned s, c, i, j;
    memcpy(X, XB, sizeof X);
    for (s = 0; s < sizeof S / sizeof S[0]; ++s) {{
        int16_t *q = Q + (s & 1u);         /* odd scales: outputs at an odd halfword address */
        for (c = 0; c < sizeof CH / sizeof CH[0]; ++c)
            mcunn_quantize_f32_n(q + CH[c][0], X + CH[c][0], (size_t)CH[c][1], S[s]);
        for (i = 0; i < {x.size}; i += 16) {{
            int k = 0;
            line[k++] = 'Q';
            line[k++] = (char)('0' + s);
            for (j = i; j < i + 16 && j < {x.size}; ++j) {{
                uint32_t v = (uint16_t)q[j];
                int d;
                line[k++] = ' ';
                for (d = 12; d >= 0; d -= 4) line[k++] = "0123456789abcdef"[(v >> d) & 15u];
            }}
            line[k++] = '\\n';
            line[k] = 0;
            {puts};
        }}
    }}
    {end};
    return 0;
}}
"""


def parse(text: str) -> dict[int, np.ndarray]:
    got: dict[int, list[int]] = {}
    for m in re.finditer(r"^Q(\d)((?: [0-9a-f]{4})+)$", text, re.M):
        got.setdefault(int(m.group(1)), []).extend(int(v, 16) for v in m.group(2).split())
    return {k: np.array(v, np.uint16).view(np.int16).astype(np.int64) for k, v in got.items()}


def check(got: dict[int, np.ndarray], x: np.ndarray, where: str) -> None:
    want = expected(x)
    for i, s in enumerate(SCALES):
        assert i in got and got[i].size == x.size, f"{where}: no output for scale {s}"
        bad = np.flatnonzero(got[i] != want[s])
        assert bad.size == 0, (f"{where}, inv_scale {s}: x bits 0x{int(x.view(np.uint32)[bad[0]]):08x} -> "
                               f"{got[i][bad[0]]}, simulator {want[s][bad[0]]} ({bad.size} differ)")


def test_quantize_f32_n_host_sanitizers(tmp_path: Path) -> None:
    x = edge_floats()
    exe = build_runtime_program(tmp_path, "quant", program(x, "fputs(line, stdout)", "#include <stdio.h>"))
    text = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    assert text.endswith("END\n")
    check(parse(text), x, "host")


@pytest.mark.qemu
@pytest.mark.parametrize("board", ["qemu-mps2-an386", "qemu-mps2-an500", "qemu-mps2-an505", "qemu-mps3-an547"])
def test_quantize_f32_n_fpu_asm_bit_exact(tmp_path: Path, board: str) -> None:
    x = edge_floats()
    text = kh.build_and_run(tmp_path, program(x, "bench_puts(line)", '#include "bench.h"'), "quant", board)
    dis = subprocess.run(["arm-none-eabi-objdump", "-d", str(tmp_path / "quant.elf")], check=True,
                         capture_output=True, text=True).stdout
    assert "vcvt.s16.f32" in dis and "vmla.f32" in dis, "the FPU path was not compiled"
    check(parse(text), x, board)


def test_step_f32_on_host_sanitizers(tmp_path: Path) -> None:
    # the model entry point on the host (portable C under ASan/UBSan): <name>_step_f32 on the
    # float test inputs gives the simulator's outputs, which came from fixedpoint.quantize_input
    import shutil

    import qmodels as Q
    from mcu_nn.codegen import write_export
    from mcu_nn.quant import quantize
    from mcu_nn.sim import run

    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        pytest.skip("no host C compiler")
    g = Q.make_graph("lstm", input_size=7, hidden=9, seq_len=5, gain=2.0)
    q = quantize(g, Q.make_input(g, n=16, seed=4), "int8")
    x = Q.make_input(g, n=3) * 20.0
    x[0, 0, :3] = [np.nan, np.inf, -np.inf]
    x[1, 1, :2] = [np.float32(0.5 - 2 ** -25) / np.float32(1 / q.input_scale), -0.0]
    want = run(q, x)
    d = tmp_path / "m"
    write_export(q, d, x, want)
    name = next(p.stem for p in d.glob("*.h") if p.name != "mcunn_fixedpoint.h")
    assert f"{name}_step_f32(" in (d / f"{name}.h").read_text()
    assert np.asarray(want).shape[:2] == x.shape[:2]          # one output per step
    n, t, i = x.shape
    xs = ", ".join("%.9ef" % v if np.isfinite(v) else ("(0.0f / 0.0f)" if np.isnan(v) else
                                                         ("(1.0f / 0.0f)" if v > 0 else "(-1.0f / 0.0f)"))
                   for v in x.reshape(-1).astype(np.float32))
    main = f"""#include <stdio.h>
#include "{name}.h"
static const float X[] = {{ {xs} }};
int main(void)
{{
    {name}_state_t s;
    {name}_out_t y[{name.upper()}_OUTPUT_SIZE];
    int v, k, j;
    for (v = 0; v < {n}; ++v) {{
        {name}_reset(&s);
        for (k = 0; k < {t}; ++k) {{
            {name}_step_f32(&s, X + (v * {t} + k) * {i}, y);
            for (j = 0; j < {name.upper()}_OUTPUT_SIZE; ++j) printf("%d ", y[j]);
        }}
        printf("\\n");
    }}
    return 0;
}}
"""
    (d / "main.c").write_text(main)
    exe = d / "main"
    subprocess.run([cc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1", "-g",
                    "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-I", str(d),
                    str(d / "main.c"), str(d / f"{name}.c"), str(d / "mcunn_fixedpoint.c"), "-o", str(exe), "-lm"],
                   check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split("\n")
    for v in range(n):
        got = np.array([int(s) for s in out[v].split()]).reshape(t, -1)
        assert np.array_equal(got, np.asarray(want[v]).reshape(t, -1)), f"vector {v}"
