"""Two exports in one firmware (issue 11): models with different prefixes share one include
path and link with one copy of the runtime (mcunn_fixedpoint.h + mcunn_fixedpoint.c), on the
host under ASan/UBSan and on the emulated Cortex-M4; both run their test vectors bit-exact and
`nm` finds each activation table once. Two exports of incompatible runtimes fail to compile or
to link with a message that says so.

The recipe this checks (README, "Several models in one firmware"): put every export's files on
one include path, compile each model's c_sources and the runtime's sources once."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import qmodels as Q
from mcu_nn.bench import BOARDS, CFLAGS, FIRMWARE, STARTUP, run_bench
from mcu_nn.build import linker_script
from mcu_nn.codegen import write_export
from mcu_nn.exportdir import compile_sources, open_export
from mcu_nn.sim import run

STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
TABLES = ("mcunn_sigmoid_table", "mcunn_tanh_table")     # what an LSTM and a GRU read
# (prefix, cell, precision, graph options): a per-step LSTM and a whole-sequence GRU
MODELS = (("alpha", "lstm", "int8", dict(readout="last", head=("linear:3", "sigmoid"))),
          ("beta", "gru", "int16", dict(readout="last")))


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("two")
    dirs = []
    for name, kind, prec, kw in MODELS:
        g = Q.make_graph(kind, name=name, **kw)
        q = Q.quantize_graph(g, prec)
        x = Q.make_input(g, n=3, steps=6)
        write_export(q, tmp / name, x, run(q, x))
        dirs.append(tmp / name)
    return dirs


def _program(exports: list[Path]) -> str:
    """main(): every test vector of every model through <name>_run; prints 'name vector values'
    in hex (one line each), then END."""
    inc, body, data = [], [], []
    for d in exports:
        ex = open_export(d)
        p, P = ex.name, ex.name.upper()
        inc.append(f'#include "{ex.manifest["header"]}"')
        xq, n = ex.vectors["input_q"], ex.vectors["input_q"].shape[0]
        steps = xq.shape[1]
        data.append(f"static const {p}_in_t {p}_x[{n}][{steps} * {P}_INPUT_SIZE] = {{"
                    + ", ".join("{" + ", ".join(str(int(v)) for v in xq[i].ravel()) + "}" for i in range(n)) + "};")
        out = f"{steps} * {P}_OUTPUT_SIZE" if ex.manifest["output_per_step"] else f"{P}_OUTPUT_SIZE"
        body.append(f"""    {{
        static {p}_state_t s;
        static {p}_out_t y[{out}];
        int i;
        for (i = 0; i < {n}; ++i) {{
            {p}_reset(&s);
            {p}_run(&s, {p}_x[i], {steps}, y);
            dump("{p}", i, y, (int)(sizeof(y) / sizeof(y[0])));
        }}
    }}""")
    return "\n".join(["#include <stdint.h>", '#include "bench.h"', *inc, *data, r"""
static char line[1024];
static void dump(const char *name, int vec, const int16_t *y, int n)
{
    int k = 0, j, d;
    for (j = 0; name[j]; ++j) line[k++] = name[j];
    line[k++] = ' ';
    line[k++] = (char)('0' + vec);
    for (j = 0; j < n && k < (int)sizeof(line) - 8; ++j) {
        uint32_t v = (uint16_t)y[j];
        line[k++] = ' ';
        for (d = 12; d >= 0; d -= 4) line[k++] = "0123456789abcdef"[(v >> d) & 15u];
    }
    line[k++] = '\n';
    line[k] = 0;
    bench_puts(line);
}
int main(void)
{""", *body, '    bench_puts("END\\n");\n    return 0;\n}\n'])


HOST_BENCH = r"""#include <stdio.h>
#include <stdlib.h>
#include "bench.h"
void bench_puts(const char *s) { fputs(s, stdout); }
void bench_exit(int code) { exit(code); }
"""


def _one_dir(exports: list[Path], dest: Path) -> list[Path]:
    """Every export's files in one directory, the runtime once: returns the .c files to compile."""
    dest.mkdir()
    srcs = []
    for d in exports:
        m = json.loads((d / "model.json").read_text())
        for f in m["files"]:
            if f.endswith((".c", ".h")):
                target = dest / f
                if target.exists():      # the runtime: byte-identical in every export of this mcu-nn
                    assert target.read_bytes() == (d / f).read_bytes(), f
                else:
                    shutil.copy(d / f, target)
        srcs += [dest / c for c in compile_sources(m) if dest / c not in srcs]
    return srcs


def _check(text: str, exports: list[Path]) -> None:
    assert "END" in text and "FAULT" not in text, text[-400:]
    got = {(m.group(1), int(m.group(2))): [int(v, 16) for v in m.group(3).split()]
           for m in re.finditer(r"^(\w+) (\d)((?: [0-9a-f]{4})+)$", text, re.M)}
    for d in exports:
        ex = open_export(d)
        for i, want in enumerate(ex.vectors["expected"]):
            y = np.array(got[(ex.name, i)], np.uint16).view(np.int16)
            np.testing.assert_array_equal(y, want.ravel(), err_msg=f"{ex.name} vector {i}")


def _table_counts(nm: str, binary: Path) -> dict[str, int]:
    out = subprocess.run([nm, str(binary)], capture_output=True, text=True, check=True).stdout
    names = [ln.split()[-1] for ln in out.splitlines() if ln.strip()]
    return {t: names.count(t) for t in TABLES}


def test_two_exports_one_runtime_on_the_host(exports, tmp_path):
    cc = shutil.which("gcc")
    if not cc:
        pytest.skip("no host C compiler")
    src = tmp_path / "src"
    c_files = _one_dir(exports, src)
    assert [c.name for c in c_files] == ["alpha.c", "mcunn_fixedpoint.c", "beta.c"]
    (tmp_path / "main.c").write_text(_program(exports))
    (tmp_path / "host_bench.c").write_text(HOST_BENCH)
    exe = tmp_path / "both"
    subprocess.run([cc, *STRICT, "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                    "-I", str(src), "-I", str(FIRMWARE), str(tmp_path / "main.c"), str(tmp_path / "host_bench.c"),
                    *map(str, c_files), "-o", str(exe), "-lm"], check=True)
    _check(subprocess.run([str(exe)], capture_output=True, text=True, check=True, timeout=120).stdout, exports)
    assert _table_counts("nm", exe) == {t: 1 for t in TABLES}


@pytest.mark.qemu
def test_two_exports_one_runtime_on_cortex_m4(exports, tmp_path):
    b = BOARDS["qemu-mps2-an386"]
    src = tmp_path / "src"
    c_files = _one_dir(exports, src)
    (tmp_path / "main.c").write_text(_program(exports))
    ld = tmp_path / "two.ld"
    ld.write_text(linker_script(b))
    elf = tmp_path / "two.elf"
    subprocess.run(["arm-none-eabi-gcc", *CFLAGS, *b.arch_flags, "-I", str(src), "-I", str(FIRMWARE),
                    "-nostartfiles", "--specs=nosys.specs", "-T", str(ld), "-Wl,--gc-sections",
                    str(STARTUP), str(FIRMWARE / "semihost.c"), str(tmp_path / "main.c"), *map(str, c_files),
                    "-lm", "-o", str(elf)], check=True)
    _check(run_bench(elf, "qemu-mps2-an386", timeout=120), exports)
    assert _table_counts("arm-none-eabi-nm", elf) == {t: 1 for t in TABLES}


def _fake_runtime(d: Path, version: int) -> None:
    """Rewrite the runtime in ``d`` as if another mcu-nn had written runtime ``version``."""
    for f in ("mcunn_fixedpoint.h", "mcunn_fixedpoint.c"):
        text = (d / f).read_text()
        text = re.sub(r"MCUNN_RUNTIME_VERSION (!= )?\d+", rf"MCUNN_RUNTIME_VERSION \g<1>{version}", text)
        text = re.sub(r"mcunn_runtime_v\d+", f"mcunn_runtime_v{version}", text)
        text = re.sub(r"runtime \d+", f"runtime {version}", text)
        (d / f).write_text(text)


def test_a_model_against_another_runtime_header_fails_to_compile(exports, tmp_path):
    alpha, beta = exports
    other = tmp_path / "other"                      # beta's runtime, as another mcu-nn wrote it
    shutil.copytree(beta, other)
    _fake_runtime(other, 99)
    shutil.copy(alpha / "alpha.c", other)
    shutil.copy(alpha / "alpha.h", other)
    r = subprocess.run(["gcc", *STRICT, "-I", str(other), "-c", str(other / "alpha.c"), "-o", str(tmp_path / "a.o")],
                       capture_output=True, text=True)
    assert r.returncode != 0
    assert "alpha.c was exported for mcu-nn runtime 1, but the mcunn_fixedpoint.h on the include path is " \
           "another version" in r.stderr, r.stderr


def test_a_model_linked_with_another_runtime_fails_to_link(exports, tmp_path):
    """alpha compiled against its own header (a prebuilt library, say), linked with a runtime of
    another version: the link names the runtime symbol it lacks."""
    alpha, beta = exports
    other = tmp_path / "other"
    shutil.copytree(beta, other)
    _fake_runtime(other, 99)
    objs = []
    for c, inc in ((alpha / "alpha.c", alpha), (other / "mcunn_fixedpoint.c", other)):
        objs.append(tmp_path / f"{c.stem}.o")
        subprocess.run(["gcc", *STRICT, "-I", str(inc), "-c", str(c), "-o", str(objs[-1])], check=True)
    (tmp_path / "main.c").write_text("int main(void) { return 0; }\n")
    r = subprocess.run(["gcc", str(tmp_path / "main.c"), *map(str, objs), "-o", str(tmp_path / "x")],
                       capture_output=True, text=True)
    assert r.returncode != 0
    assert re.search(r"undefined reference to .mcunn_runtime_v1'", r.stderr), r.stderr


def test_the_runtime_prefix_is_not_a_model_name(tmp_path):
    """mcunn_* names the runtime's files and symbols: a model called so would clash with them."""
    from mcu_nn.errors import McuNnError
    g = Q.make_graph("gru", name="mcunn_fixedpoint")
    with pytest.raises(McuNnError, match="prefix mcunn_ belongs to the runtime"):
        write_export(Q.quantize_graph(g, "int8"), tmp_path / "x", Q.make_input(g), np.zeros(1))
