"""Generated C: compiles clean with gcc, clang and three Cortex-M targets; two prefixes link
into one program; manifest content; codegen never needs torch."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import qmodels as Q
from mcu_nn.codegen import write_export
from mcu_nn.errors import McuNnError
from mcu_nn.sim import run
from mcu_nn.verify import verify

STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
ARM = [["-mthumb", "-mcpu=cortex-m0plus"], ["-mthumb", "-mcpu=cortex-m4", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"],
       ["-mthumb", "-mcpu=cortex-m7"]]
MODELS = {
    "lstm_int8_head": ("lstm", "int8", dict(readout="last", head=("linear:3", "sigmoid"))),
    "gru_int16_bidir": ("gru", "int16", dict(bidirectional=True, layers=2, readout="final:0,1")),
    "rnn_tokens": ("rnn_tanh", "int16", dict(vocab=11, head=("linear:4", "tanh"))),
    "lstm_proj_f32": ("lstm", "float32", dict(proj=3, readout="last", head=("linear:2",))),
    "relu_bidir_seq": ("rnn_relu", "int8", dict(bidirectional=True)),
}


def export(tmp: Path, key: str, name: str = "model", **over) -> tuple[Path, dict]:
    kind, prec, kw = MODELS[key]
    g = Q.make_graph(kind, name=name, **{**kw, **over})
    q = Q.quantize_graph(g, prec)
    x = Q.make_input(g)
    exp = Q.float_forward(g, x) if prec == "float32" else run(q, x)
    d = tmp / f"{key}_{name}"
    return d, write_export(q, d, x, exp)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("cg")
    return {k: export(tmp, k)[0] for k in MODELS}


@pytest.mark.parametrize("key", MODELS)
def test_compiles_with_clang(exports, key, tmp_path):
    if not shutil.which("clang"):
        pytest.skip("clang not installed")
    subprocess.run(["clang", *STRICT, "-O2", "-c", str(exports[key] / "model.c"), "-o", str(tmp_path / "m.o")],
                   check=True)


@pytest.mark.parametrize("flags", ARM, ids=["m0plus", "m4f", "m7"])
@pytest.mark.parametrize("key", MODELS)
def test_compiles_for_cortex_m(exports, key, flags, tmp_path):
    if not shutil.which("arm-none-eabi-gcc"):
        pytest.skip("arm-none-eabi-gcc not installed")
    r = subprocess.run(["arm-none-eabi-gcc", *STRICT, "-O2", *flags, "-c", str(exports[key] / "model.c"),
                        "-o", str(tmp_path / "m.o")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_two_prefixes_link_into_one_program(tmp_path):
    da, _ = export(tmp_path, "lstm_int8_head", name="alpha")
    db, _ = export(tmp_path, "gru_int16_bidir", name="beta")
    main = tmp_path / "main.c"
    main.write_text(r"""
#include <stdio.h>
#include "alpha.h"
#include "beta.h"
int main(void)
{
    alpha_state_t sa; beta_state_t sb;
    alpha_in_t xa[5 * ALPHA_INPUT_SIZE] = {0}; beta_in_t xb[5 * BETA_INPUT_SIZE] = {0};
    alpha_out_t ya[ALPHA_OUTPUT_SIZE]; beta_out_t yb[BETA_OUTPUT_SIZE];
    int j;
    xa[0] = alpha_quantize_input(1.0f); xb[0] = beta_quantize_input(1.0f);
    alpha_reset(&sa); beta_reset(&sb);
    alpha_run(&sa, xa, 5, ya); beta_run(&sb, xb, 5, yb);
    for (j = 0; j < ALPHA_OUTPUT_SIZE; ++j) printf("%d ", ya[j]);
    for (j = 0; j < BETA_OUTPUT_SIZE; ++j) printf("%d ", yb[j]);
    printf("\n");
    return 0;
}
""")
    exe = tmp_path / "both"       # names from the prefixes: both on one include path, one runtime
    subprocess.run(["gcc", *STRICT, "-I", str(da), "-I", str(db), str(main), str(da / "alpha.c"), str(db / "beta.c"),
                    str(da / "mcunn_fixedpoint.c"), "-o", str(exe), "-lm"], check=True)
    got = [int(v) for v in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()]
    want = []
    for key, name in (("lstm_int8_head", "alpha"), ("gru_int16_bidir", "beta")):
        kind, prec, kw = MODELS[key]
        g = Q.make_graph(kind, name=name, **kw)
        x = np.zeros((1, 5, g.input_size), np.float32)
        x[0, 0, 0] = 1.0
        want += list(run(Q.quantize_graph(g, prec), x)[0])
    assert got == want


def test_run_continues_from_the_current_state(tmp_path):
    """_run picks up where the state is: two halves give the same outputs as the whole."""
    g = Q.make_graph("lstm", name="model")
    q = Q.quantize_graph(g, "int16")
    x = Q.make_input(g, n=1, steps=8)
    d = tmp_path / "exp"
    write_export(q, d, x, run(q, x))
    (tmp_path / "halves.c").write_text(r"""
#include <stdio.h>
#include "model.h"
int main(void)
{
    model_state_t s;
    model_in_t x[8 * MODEL_INPUT_SIZE];
    model_out_t y[8 * MODEL_OUTPUT_SIZE];
    int i;
    for (i = 0; i < 8 * MODEL_INPUT_SIZE; ++i) x[i] = (model_in_t)(i * 977 % 20000 - 10000);
    model_reset(&s);
    model_run(&s, x, 3, y);
    model_run(&s, x + 3 * MODEL_INPUT_SIZE, 5, y + 3 * MODEL_OUTPUT_SIZE);
    for (i = 0; i < 8 * MODEL_OUTPUT_SIZE; ++i) printf("%d ", y[i]);
    return 0;
}
""")
    exe = tmp_path / "halves"
    subprocess.run(["gcc", *STRICT, "-fsanitize=address,undefined", "-I", str(d), str(tmp_path / "halves.c"),
                    str(d / "model.c"), str(d / "mcunn_fixedpoint.c"), "-o", str(exe), "-lm"], check=True)
    got = np.array(subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split(), int)
    xq = (np.arange(8 * g.input_size) * 977 % 20000 - 10000).reshape(1, 8, g.input_size)
    from mcu_nn.sim.int_sim import run_quant
    assert got.tolist() == run_quant(q, xq).ravel().tolist()


def test_manifest_describes_the_export(exports):
    m = json.loads((exports["gru_int16_bidir"] / "model.json").read_text())
    assert m["name"] == "model" and m["precision"] == "int16" and m["has_step"] is False
    assert m["max_steps"] == 10 and m["output_per_step"] is False and m["output_size"] == 12
    assert m["in_ctype"] == "int16_t" and m["out_ctype"] == "int16_t"
    assert m["macs_per_step"] == sum(layer["macs_per_step"] for layer in m["layers"]) > 0
    assert m["flash_bytes"] == sum(layer["flash_bytes"] for layer in m["layers"]) > 0
    assert m["ram_bytes"] > 0 and len(m["sha256"]) == 64
    z = np.load(exports["gru_int16_bidir"] / "test_vectors.npz")
    assert z["input"].dtype == np.float32 and z["input_q"].dtype == np.int16 and z["expected"].dtype == np.int16
    t = np.load(exports["rnn_tokens"] / "test_vectors.npz")
    assert t["input"].dtype == np.int64 and t["input_q"].dtype == np.int32


def test_ram_bytes_is_sizeof_state(exports, tmp_path):
    for key in ("lstm_int8_head", "gru_int16_bidir", "lstm_proj_f32"):
        d = exports[key]
        (tmp_path / "s.c").write_text('#include <stdio.h>\n#include "model.h"\n'
                                      'int main(void) { printf("%u", (unsigned)sizeof(model_state_t)); return 0; }\n')
        subprocess.run(["gcc", "-I", str(d), str(tmp_path / "s.c"), "-o", str(tmp_path / "s")], check=True)
        size = int(subprocess.run([str(tmp_path / "s")], capture_output=True, text=True).stdout)
        assert size == json.loads((d / "model.json").read_text())["ram_bytes"], key


def test_export_is_reproducible(tmp_path):
    _, m1 = export(tmp_path / "one", "lstm_int8_head")
    _, m2 = export(tmp_path / "two", "lstm_int8_head")
    _, m3 = export(tmp_path / "three", "lstm_int8_head", seed=5)
    assert m1["sha256"] == m2["sha256"] != m3["sha256"]


def test_bidirectional_header_has_no_step(exports):
    h = (exports["gru_int16_bidir"] / "model.h").read_text()
    assert "model_step(" not in h and "bidirectional" in h
    assert "void model_step(" in (exports["lstm_int8_head"] / "model.h").read_text()


def test_bad_prefix_is_one_line_error(tmp_path):
    with pytest.raises(McuNnError, match="not a C identifier"):
        export(tmp_path, "lstm_int8_head", name="my-model")


def test_codegen_does_not_import_torch():
    code = "import sys, mcu_nn.codegen, mcu_nn.verify; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent).returncode == 0


def test_prefix_containing_op_exports(tmp_path):
    """Array sizes per layer come from each array's op index, not from splitting its C name on
    "_op" (a model named my_op used to crash export)."""
    g = Q.make_graph("gru", seq_len=4, name="my_op", head=("linear:3",), readout="last")
    q = Q.quantize_graph(g, "int8")
    x = Q.make_input(g, n=2)
    m = write_export(q, tmp_path / "e", x, run(q, x))
    assert m["name"] == "my_op" and all(layer["flash_bytes"] > 0 for layer in m["layers"] if layer["kind"] != "SelectLast")
    assert verify(tmp_path / "e", cross=False, log=lambda s: None).ok
