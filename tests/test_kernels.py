"""Fused-gate kernels: the export-time weight layout, the portable C on the host and the SIMD
C on the emulated Cortex-M4 (QEMU mps2-an386), each bit-exact against the simulator on every
test vector, across cell kinds, weight widths, accumulator widths, shifts and odd sizes."""
from __future__ import annotations


import numpy as np
import pytest

import qmodels as Q
from mcu_nn.bench import bench_export
from mcu_nn.codegen import write_export
from mcu_nn.codegen.emit import pack_group_weights
from mcu_nn.errors import McuNnError
from mcu_nn import fixedpoint as fp
from mcu_nn.quant import quantize
from mcu_nn.sim import run
from mcu_nn.verify import verify

qemu = pytest.mark.qemu                  # skipped without the emulator (tests/conftest.py)


def _unpack_dot(stream: np.ndarray, R: int, chunk: int, cols: list[int], xs: list[np.ndarray]) -> np.ndarray:
    """Re-derive every row's segment dot products from the packed stream the way the C reads it."""
    pos = [0, 2, 1, 3] if chunk == 4 else list(range(chunk))
    out, k = [], 0
    groups = len(stream) // (R * chunk * sum(-(-c // chunk) for c in cols))
    for _ in range(groups):
        accs = []
        for c, x in zip(cols, xs):
            acc = np.zeros(R, np.int64)
            for base in range(0, c, chunk):
                for r in range(R):
                    for j in range(min(chunk, c - base)):
                        acc[r] += stream[k + r * chunk + pos[j]] * x[base + j]
                k += R * chunk
            accs.append(acc)
        out.append(accs)
    return out


@pytest.mark.parametrize("R,chunk,I,S", [(4, 4, 5, 7), (3, 4, 16, 9), (1, 2, 3, 5), (4, 2, 40, 64)])
def test_packed_layout_gives_the_matvec_of_every_row(R, chunk, I, S):
    rng = np.random.default_rng(R * 100 + I)
    H = S
    wx = rng.integers(-128, 128, (R * H, I))
    wh = rng.integers(-128, 128, (R * H, S))
    x, h = rng.integers(-32768, 32768, I), rng.integers(-32768, 32768, S)
    stream = pack_group_weights(wx, wh, R, chunk)
    per_group = R * chunk * (-(-I // chunk) + -(-S // chunk))
    assert stream.size == H * per_group            # padding only to whole chunks
    got = _unpack_dot(stream, R, chunk, [I, S], [x, h])
    ax, ah = fp.matvec(wx, x), fp.matvec(wh, h)
    for u, (gx, gh) in enumerate(got):
        rows = [g * H + u for g in range(R)]        # group u = unit u's gates
        assert np.array_equal(gx, ax[rows]) and np.array_equal(gh, ah[rows])


# (kind, precision, layout, graph options, real quantiser?) — odd I/H exercise every tail path;
# the test quantiser gives shifts < 32 (64-bit requant), the real one >= 32 (SSAT of the high word)
CASES = {
    "lstm_s8_odd": ("lstm", "int8", "packed", dict(input_size=5, hidden=7), False),
    "lstm_s8_real": ("lstm", "int8", "packed", dict(input_size=16, hidden=32), True),
    "lstm_wide_real": ("lstm", "int8", "wide", dict(input_size=6, hidden=9), True),
    "lstm_int16_proj": ("lstm", "int16", "packed", dict(input_size=3, hidden=6, proj=3, readout="last",
                                                        head=("linear:2",)), False),
    "gru_s8_real": ("gru", "int8", "packed", dict(input_size=10, hidden=13), True),
    "gru_s16_bidir": ("gru", "int16", "packed", dict(input_size=4, hidden=5, bidirectional=True,
                                                     readout="final:0,1"), False),
    "rnn_tanh_s8": ("rnn_tanh", "int8", "packed", dict(input_size=9, hidden=11, head=("linear:3", "tanh")), True),
    "rnn_relu_s8": ("rnn_relu", "int8", "wide", dict(input_size=4, hidden=6), False),
}


def _export(tmp_path, key: str, **qkw):
    kind, prec, layout, kw, real = CASES[key]
    g = Q.make_graph(kind, seq_len=5, gain=1.0 if real else 2.0, **kw)
    q = quantize(g, Q.make_input(g, n=16, seed=4), prec) if real else Q.quantize_graph(g, prec, **qkw)
    x = Q.make_input(g, n=4)
    d = tmp_path / key
    write_export(q, d, x, run(q, x), weight_layout=layout)
    return d


@pytest.mark.parametrize("key", CASES)
def test_portable_kernels_bit_exact_on_host(tmp_path, key):
    r = verify(_export(tmp_path, key), cross=False, log=lambda s: None)
    assert r.ok and r.mismatches == 0, r.first_mismatch


@qemu
@pytest.mark.parametrize("key", CASES)
def test_simd_kernels_bit_exact_on_cortex_m4(tmp_path, key):
    # bench_export compares every output of every test vector (run and step) with the simulator
    # and raises on the first differing bit
    r = bench_export(_export(tmp_path, key), "qemu-mps2-an386")
    assert r.vectors_checked == 4 and r.instructions_per_step > 0


@qemu
def test_acc64_fallback_bit_exact_on_cortex_m4(tmp_path):
    d = _export(tmp_path, "lstm_s8_odd", force64=True)
    assert "mcunn_dot_s8_64_g4" in (d / "model.c").read_text()
    bench_export(d, "qemu-mps2-an386")


@qemu
@pytest.mark.parametrize("board", ["qemu-mps2-an385", "qemu-mps2-an500"])
def test_cortex_m3_and_m7_bit_exact(tmp_path, board):
    bench_export(_export(tmp_path, "gru_s8_real"), board)


@qemu
def test_simd_faster_than_portable_same_bits(tmp_path):
    d = _export(tmp_path, "lstm_s8_real")
    simd = bench_export(d, "qemu-mps2-an386")
    port = bench_export(d, "qemu-mps2-an386", portable=True)
    assert simd.instructions_per_step * 2 < port.instructions_per_step


@qemu
def test_a_wrong_expected_output_is_caught(tmp_path):
    d = _export(tmp_path, "gru_s8_real")
    with np.load(d / "test_vectors.npz") as z:
        v = {k: z[k] for k in z.files}
    v["expected"][2, 3, 1] ^= 1                      # one bit of one output of vector 2
    np.savez(d / "test_vectors.npz", **v)
    with pytest.raises(McuNnError, match="differ.*model.json"):
        bench_export(d, "qemu-mps2-an386")          # an edited export is refused by its hashes ...
    with pytest.raises(McuNnError, match="vector 2"):
        bench_export(d, "qemu-mps2-an386", allow_modified=True)   # ... and, if accepted, caught
