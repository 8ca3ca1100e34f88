"""The DSP asm cells (templates/_cell_dsp.j2) against fixedpoint.py on the emulated Cortex-M4
(QEMU mps2-an386), on random and edge-case inputs rather than model vectors: saturated
pre-activations, extreme c, every cell_frac 0..15, GRU n_x/n_h over the full int32 range
(shift == 32 path) and over +-2^30 (the SMMLAR path used when shift >= 33). Bit for bit."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mcu_nn.bench import BOARDS, CFLAGS, FIRMWARE, STARTUP, run_bench
from mcu_nn.build import linker_script
from mcu_nn.codegen import render_runtime
from mcu_nn.codegen.emit import environment
from mcu_nn import fixedpoint as fx

pytestmark = pytest.mark.qemu            # skipped without the emulator (tests/conftest.py)

N = 160
EDGE16 = [-32768, -32767, -16384, -4097, -4096, -64, -63, -1, 0, 1, 63, 64, 4095, 4096, 16384, 32766, 32767]

SOURCE = """{% from "ports/cortex_m_dsp/_cell_dsp.j2" import lstm_cell, gru_cell %}
#include <stdint.h>
#include "mcunn_fixedpoint.h"
#include "bench.h"
static const int32_t P[{{ n }}][4] = { {{ pre }} };
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
    for (u = 0; u < {{ n }}; ++u) {
{{ gru_cell('out[u]', 'G[u][0]', 'G[u][1]', 'G[u][2]', 'G[u][3]', 'G[u][4]', False) }}    }
    dump("G32");
    for (u = 0; u < {{ n }}; ++u) {
{{ gru_cell('out[u]', 'G[u][0]', 'G[u][1]', 'G[u][2] >> 1', 'G[u][3] >> 1', 'G[u][4]', True) }}    }
    dump("G33");
    bench_puts("END\\n");
    return 0;
}
"""


def _inputs(rng: np.random.Generator):
    def i16(n):   # a mix of edges, small (interpolated region) and any int16
        v = np.concatenate([rng.choice(EDGE16, n // 4), rng.integers(-40000, 40000, n // 4),
                            rng.integers(-5000, 5000, n - 2 * (n // 4))])
        return fx.sat16(rng.permutation(v))
    pre = np.stack([i16(N) for _ in range(4)], axis=1)
    c0 = i16(N)
    edge32 = np.array([fx.INT32_MIN, fx.INT32_MAX, -(1 << 30), (1 << 30) - 1, 0, -1, 1 << 20, -(1 << 20)])
    nx = np.concatenate([rng.choice(edge32, N // 4), rng.integers(fx.INT32_MIN, fx.INT32_MAX, N // 4, endpoint=True),
                         rng.integers(-(1 << 17), 1 << 17, N - 2 * (N // 4))])
    nh = np.concatenate([rng.choice(edge32, N // 4), rng.integers(fx.INT32_MIN, fx.INT32_MAX, N // 4, endpoint=True),
                         rng.integers(-(1 << 17), 1 << 17, N - 2 * (N // 4))])
    gru = np.stack([i16(N), i16(N), rng.permutation(nx), rng.permutation(nh), i16(N)], axis=1)
    return pre, c0, gru


def _c(rows) -> str:
    return ", ".join("{" + ", ".join(f"{int(v)}" if v > fx.INT32_MIN else "INT32_MIN" for v in r) + "}" for r in rows)


def test_dsp_cells_bit_exact_on_cortex_m4(tmp_path: Path) -> None:
    pre, c0, gru = _inputs(np.random.default_rng(7))
    src = environment().from_string(SOURCE).render(n=N, pre=_c(pre), c0=", ".join(str(int(v)) for v in c0),
                                                   gru=_c(gru))
    (tmp_path / "cells.c").write_text(src)
    for fname, text in render_runtime().items():
        (tmp_path / fname).write_text(text)
    b = BOARDS["qemu-mps2-an386"]
    elf = tmp_path / "cells.elf"
    ld = tmp_path / "cells.ld"
    ld.write_text(linker_script(b))
    subprocess.run(["arm-none-eabi-gcc", *CFLAGS, *b.arch_flags, "-I", str(tmp_path), "-I", str(FIRMWARE),
                    "-nostartfiles", "--specs=nosys.specs", "-T", str(ld),
                    str(STARTUP), str(FIRMWARE / "semihost.c"), str(tmp_path / "cells.c"), str(tmp_path / "mcunn_fixedpoint.c"), "-o", str(elf)],
                   check=True)
    text = run_bench(elf, "qemu-mps2-an386", timeout=120)
    assert "END" in text and "FAULT" not in text
    got: dict[str, list[int]] = {}
    for m in re.finditer(r"^([HCG]\d+)((?: [0-9a-f]{4})+)$", text, re.M):
        got.setdefault(m.group(1), []).extend(int(v, 16) for v in m.group(2).split())
    as16 = lambda k: np.array(got[k], np.uint16).view(np.int16).astype(np.int64)  # noqa: E731
    for K in range(16):
        c_new, h = fx.lstm_cell(pre[:, 0], pre[:, 1], pre[:, 2], pre[:, 3], c0, K)
        np.testing.assert_array_equal(as16(f"H{K}"), h, err_msg=f"LSTM h, cell_frac {K}")
        np.testing.assert_array_equal(as16(f"C{K}"), c_new, err_msg=f"LSTM c, cell_frac {K}")
    np.testing.assert_array_equal(as16("G32"), fx.gru_cell(gru[:, 0], gru[:, 1], gru[:, 2], gru[:, 3], gru[:, 4]),
                                  err_msg="GRU cell, shift == 32 path")
    np.testing.assert_array_equal(as16("G33"), fx.gru_cell(gru[:, 0], gru[:, 1], gru[:, 2] >> 1, gru[:, 3] >> 1,
                                                           gru[:, 4]), err_msg="GRU cell, SMMLAR path")
