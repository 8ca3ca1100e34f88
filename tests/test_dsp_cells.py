"""The DSP asm cells (templates/_cell_dsp.j2) against fixedpoint.py on the emulated Cortex-M4
(QEMU mps2-an386), on random and edge-case inputs rather than model vectors: saturated
pre-activations, extreme c, every cell_frac 0..15, GRU n_x/n_h over the full int32 range
(shift == 32 path) and over +-2^30 (the SMMLAR path used when shift >= 33). Bit for bit."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kernel_harness as kh
from mcu_nn.codegen.emit import environment
from mcu_nn import fixedpoint as fx

pytestmark = pytest.mark.qemu            # skipped without the emulator (tests/conftest.py)

SOURCE = kh.cell_program("ports/cortex_m_dsp/_cell_dsp.j2", """    for (u = 0; u < {{ n }}; ++u) {
{{ gru_cell('out[u]', 'G[u][0]', 'G[u][1]', 'G[u][2]', 'G[u][3]', 'G[u][4]', False) }}    }
    dump("G32");
    for (u = 0; u < {{ n }}; ++u) {
{{ gru_cell('out[u]', 'G[u][0]', 'G[u][1]', 'G[u][2] >> 1', 'G[u][3] >> 1', 'G[u][4]', True) }}    }
    dump("G33");
""")


def test_dsp_cells_bit_exact_on_cortex_m4(tmp_path: Path) -> None:
    pre, c0, gru = kh.cell_inputs(np.random.default_rng(7))
    src = environment().from_string(SOURCE).render(n=kh.N_CELLS, pre=kh.c_rows(pre), c0=", ".join(str(int(v)) for v in c0),
                                                   gru=kh.c_rows(gru))
    as16 = kh.cell_results(kh.build_and_run(tmp_path, src, "cells", "qemu-mps2-an386"))
    kh.check_lstm_cells(as16, pre, c0)
    np.testing.assert_array_equal(as16("G32"), fx.gru_cell(gru[:, 0], gru[:, 1], gru[:, 2], gru[:, 3], gru[:, 4]),
                                  err_msg="GRU cell, shift == 32 path")
    np.testing.assert_array_equal(as16("G33"), fx.gru_cell(gru[:, 0], gru[:, 1], gru[:, 2] >> 1, gru[:, 3] >> 1,
                                                           gru[:, 4]), err_msg="GRU cell, SMMLAR path")
