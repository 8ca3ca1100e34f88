"""Output formats (issue 11): `mcu-nn package DIR --format F` lays an export out for a firmware
build system. Every format copies the model's C byte for byte (the model hash is unchanged) and
lists its files with sha256; the cmake package builds in a two-model consumer project for the
host (run bit-exact) and for Cortex-M4; the Arduino library's example compiles for the Uno with
Debian's arduino-builder and prints, under simavr, the simulator's outputs; the Zephyr,
PlatformIO and ESP-IDF files carry the keys their ecosystems document and their C compiles."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import qmodels as Q
from clitools import mcu_nn, one_error_line
from mcu_nn.codegen import write_export
from mcu_nn.exportdir import file_sha256, open_export, source_digest, vector_lengths
from mcu_nn.formats import FORMATS, package
from mcu_nn.formats.base import PACKAGE_MANIFEST, open_bundle, vectors_header
from mcu_nn.quant import quantize
from mcu_nn.sim import run


def _export(root: Path, name: str, kind: str, precision: str, **kw) -> Path:
    g = Q.make_graph(kind, input_size=3, seq_len=8, gain=1.0, name=name, **kw)
    q = quantize(g, Q.make_input(g, n=16, seed=3), precision)
    x = Q.make_input(g, n=3, seed=4)
    write_export(q, root / name, x, run(q, x))
    return root / name


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """Two models with different prefixes: an int8 GRU small enough for the Uno (per-step
    outputs, streaming) and an int16 LSTM with a head (one output per sequence)."""
    root = tmp_path_factory.mktemp("exports")
    return {"g8": _export(root, "g8", "gru", "int8", hidden=8),
            "k16": _export(root, "k16", "lstm", "int16", hidden=6, readout="last", head=("linear:3",))}


def _files(out: Path) -> dict[str, str]:
    return json.loads((out / PACKAGE_MANIFEST).read_text())["files"]


# ----------------------------------------------------------------------------- every format
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_package_copies_the_c_byte_for_byte_and_lists_every_file(tmp_path, exports, fmt):
    ex = open_export(exports["g8"])
    out = package(exports["g8"], fmt, tmp_path / fmt)
    pkg = json.loads((out / PACKAGE_MANIFEST).read_text())
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert sorted([*pkg["files"], PACKAGE_MANIFEST]) == on_disk
    for rel, sha in pkg["files"].items():
        assert file_sha256((out / rel).read_bytes()) == sha, rel
    # the model and runtime sources, found by the export's own names, are identical copies:
    # the model hash serial-test's HELLO checks is the export's
    copies = {Path(r).name: (out / r).read_bytes() for r in pkg["files"] if Path(r).name in ex.sources}
    assert copies == ex.sources
    assert source_digest(copies) == ex.manifest["sha256"] == pkg["model_sha256"]
    assert pkg["format"] == fmt and pkg["name"] == "g8"
    # again over its own output: replaced whole
    assert package(exports["g8"], fmt, out) == out


def test_the_c_package_is_still_an_export(tmp_path, exports):
    out = package(exports["k16"], "c", tmp_path / "c")
    assert open_export(out).digest == open_export(exports["k16"]).digest


def test_bad_input_gets_one_error_line(tmp_path, exports):
    assert "unknown format 'tflite'" in one_error_line(mcu_nn("package", exports["g8"], "--format", "tflite"))
    assert "not an mcu-nn export" in one_error_line(mcu_nn("package", tmp_path, "--format", "c"))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    line = one_error_line(mcu_nn("package", exports["g8"], "--format", "cmake", "-o", busy))
    assert "is not an mcu-nn package" in line and (busy / "notes.txt").read_text() == "mine"
    r = mcu_nn("package", exports["g8"], "--format", "zephyr", "-o", tmp_path / "z")
    assert r.returncode == 0 and (tmp_path / "z" / "zephyr" / "module.yml").is_file(), r.stderr


# ----------------------------------------------------------------------------- cmake
CHECK_C = """\
#include <stdio.h>
#include <string.h>
#include "{header}"
#include "{p}_test_vectors.h"

/* every test vector through {p}_run, compared bit for bit with the simulator's outputs */
int check_{p}(void)
{{
    static {p}_state_t s;
    static {p}_out_t y[{P}_TEST_OUT_PER_VECTOR];
    int bad = 0;
    unsigned i;
    for (i = 0; i < {P}_TEST_N; ++i) {{
        size_t len = {p}_test_lengths[i];
        size_t n = {P}_OUTPUT_PER_STEP ? len * {P}_OUTPUT_SIZE : {P}_OUTPUT_SIZE;
        {p}_reset(&s);
        {p}_run(&s, {p}_test_input + i * {P}_TEST_STEPS * {P}_INPUT_SIZE, len, y);
        bad += memcmp(y, {p}_test_expected + i * {P}_TEST_OUT_PER_VECTOR, n * sizeof y[0]) != 0;
    }}
    printf("{p}: %d of %d vectors differ\\n", bad, {P}_TEST_N);
    return bad;
}}
"""

CONSUMER = """\
cmake_minimum_required(VERSION 3.13)
project(consumer LANGUAGES C)
{subdirs}
# each check sees only its own model's include path (a consumer may keep models apart)
{checks}
add_executable(consumer main.c)
target_link_libraries(consumer PRIVATE {check_libs})
"""

TOOLCHAIN = """\
set(CMAKE_SYSTEM_NAME Generic)
set(CMAKE_SYSTEM_PROCESSOR arm)
set(CMAKE_C_COMPILER arm-none-eabi-gcc)
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)
set(CMAKE_C_FLAGS_INIT "-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16")
set(CMAKE_EXE_LINKER_FLAGS_INIT "--specs=nosys.specs")
"""


def _consumer(root: Path, exports: dict[str, Path]) -> Path:
    """A project with a main.c that runs both models' test vectors, each added with add_subdirectory."""
    app = root / "app"
    app.mkdir()
    subdirs, checks = [], []
    for name, d in exports.items():
        out = package(d, "cmake", root / f"mcunn_{name}")
        b = open_bundle(d)
        subdirs.append(f"add_subdirectory({out.as_posix()} mcunn_{name})")
        (app / f"check_{name}.c").write_text(CHECK_C.format(p=name, P=name.upper(), header=b.header))
        (app / f"{name}_test_vectors.h").write_bytes(vectors_header(b))
        checks.append(f"add_library(check_{name} STATIC check_{name}.c)\n"
                      f"target_link_libraries(check_{name} PRIVATE mcunn::{name})")
    names = list(exports)
    (app / "CMakeLists.txt").write_text(CONSUMER.format(subdirs="\n".join(subdirs), checks="\n".join(checks),
                                                        check_libs=" ".join(f"check_{n}" for n in names)))
    (app / "main.c").write_text("".join(f"int check_{n}(void);\n" for n in names)
                                + "int main(void)\n{\n    return (" + " + ".join(f"check_{n}()" for n in names)
                                + ") != 0;\n}\n")
    return app


def _cmake(app: Path, build: Path, *extra: str) -> None:
    for cmd in (["cmake", "-S", app, "-B", build, *extra], ["cmake", "--build", build]):
        r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.mark.cmake
def test_cmake_two_models_build_and_run_bit_exact_on_the_host(tmp_path, exports):
    app = _consumer(tmp_path, exports)
    _cmake(app, tmp_path / "build", "-DCMAKE_BUILD_TYPE=Release")
    r = subprocess.run([tmp_path / "build" / "consumer"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "g8: 0 of 3 vectors differ" in r.stdout and "k16: 0 of 3" in r.stdout, r.stdout


@pytest.mark.cmake
@pytest.mark.arm
def test_cmake_two_models_build_for_cortex_m4_with_one_runtime(tmp_path, exports):
    app = _consumer(tmp_path, exports)
    (tmp_path / "arm.cmake").write_text(TOOLCHAIN)
    _cmake(app, tmp_path / "build", f"-DCMAKE_TOOLCHAIN_FILE={tmp_path / 'arm.cmake'}", "-DCMAKE_BUILD_TYPE=MinSizeRel")
    elf = tmp_path / "build" / "consumer"
    assert subprocess.run(["arm-none-eabi-readelf", "-h", elf], capture_output=True, text=True).stdout.count("ARM") >= 1
    if not open_bundle(exports["g8"]).runtime["sources"]:
        pytest.skip("built for Cortex-M4; the one-copy check needs a runtime .c (model.json 'runtime'), "
                    "this export's runtime is a header with static tables")
    nm = subprocess.run(["arm-none-eabi-nm", elf], capture_output=True, text=True, check=True).stdout
    tables = [ln.split()[-1] for ln in nm.splitlines() if re.search(r"\bmcunn_\w*table\w*$", ln)]
    assert tables and len(tables) == len(set(tables)), tables


@pytest.mark.cmake
def test_cmake_refuses_a_second_model_with_another_runtime(tmp_path, exports):
    app = _consumer(tmp_path, exports)
    rt = tmp_path / "mcunn_k16" / "CMakeLists.txt"
    rt.write_text(re.sub(r'set\(_mcunn_runtime_id "[^"]*"\)', 'set(_mcunn_runtime_id "version 999")', rt.read_text()))
    r = subprocess.run(["cmake", "-S", app, "-B", tmp_path / "build"], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "differs from the mcunn_runtime already" in " ".join(r.stderr.split())


# ----------------------------------------------------------------------------- arduino
ARDUINO_HW = "/usr/share/arduino/hardware"


def arduino_compile(lib: Path, sketch: Path, build: Path, fqbn: str = "arduino:avr:uno") -> str:
    """arduino-builder as Debian packages it. Debian's avr-gcc 5.4 <float.h> defines DECIMAL_DIG for
    C only, which the AVR core's WString.cpp needs in C++: defined on the command line."""
    libs = build.parent / "libraries"
    libs.mkdir(exist_ok=True)
    shutil.copytree(lib, libs / lib.name)
    build.mkdir()
    cmd = ["arduino-builder", "-compile", "-hardware", ARDUINO_HW, "-hardware", "/usr/share/arduino-builder",
           "-tools", "/usr/share/arduino-builder", "-libraries", libs, "-fqbn", fqbn,
           "-prefs=compiler.cpp.extra_flags=-DDECIMAL_DIG=__DECIMAL_DIG__", "-build-path", build,
           libs / lib.name / sketch.relative_to(lib)]
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


@pytest.mark.arduino
def test_arduino_library_compiles_for_the_uno_and_prints_the_simulators_outputs(tmp_path, exports):
    import zipfile
    from conftest import HAVE_AVR
    out = package(exports["g8"], "arduino", tmp_path / "mcunn_g8")
    props = dict(ln.split("=", 1) for ln in (out / "library.properties").read_text().splitlines() if ln)
    for key in ("name", "version", "author", "maintainer", "sentence", "paragraph", "category", "url", "architectures"):
        assert props.get(key), key
    assert props["architectures"] == "*" and props["name"] == "mcunn_g8"
    sketch = out / "examples" / "mcunn_g8_test" / "mcunn_g8_test.ino"
    assert sketch.is_file() and (out / "src" / open_bundle(exports["g8"]).header).is_file()
    with zipfile.ZipFile(tmp_path / "mcunn_g8.zip") as z:
        assert "mcunn_g8/library.properties" in z.namelist() and "mcunn_g8/" + sketch.relative_to(out).as_posix() in z.namelist()
    log = arduino_compile(out, sketch, tmp_path / "build")
    assert "Sketch uses" in log and "Global variables use" in log
    elf = tmp_path / "build" / "mcunn_g8_test.ino.elf"
    assert elf.is_file()
    if not HAVE_AVR:
        pytest.skip("compiled for the Uno; running it needs simavr with its headers")
    from mcu_nn.launch import simavr_runner
    r = subprocess.run([simavr_runner(), "atmega328p", "16000000", str(elf), "--run"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ex = open_export(exports["g8"])
    want, lens = ex.vectors["expected"], vector_lengths(ex.vectors)
    rows = re.findall(r"^vector (\d+):([-\d ]+) (ok|MISMATCH)\r?$", r.stdout, re.M)
    assert len(rows) == len(lens), r.stdout
    for i, vals, verdict in rows:
        got = np.array(vals.split(), np.int64)
        assert verdict == "ok" and np.array_equal(got, want[int(i), :lens[int(i)]].ravel()), (i, vals)
    assert f"g8: {len(lens)}/{len(lens)} vectors bit-exact" in r.stdout


# ----------------------------------------------------------------------------- zephyr, platformio, esp-idf
def _compile(cc: list[str], out: Path, srcs: list[str], incs: list[str], tmp: Path) -> None:
    for s in srcs:
        cmd = [*cc, "-std=c99", "-Wall", "-Werror", "-c", str(out / s), "-o", str(tmp / (Path(s).stem + ".o")),
               *(f"-I{out / i}" for i in incs)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, " ".join(cmd) + "\n" + r.stderr[-3000:]


ARM_M4 = ["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-Os"]


@pytest.mark.arm
def test_zephyr_module_has_the_documented_layout_and_its_c_compiles(tmp_path, exports):
    yaml = pytest.importorskip("yaml")
    out = package(exports["k16"], "zephyr", tmp_path / "z")
    mod = yaml.safe_load((out / "zephyr" / "module.yml").read_text())
    # docs.zephyrproject.org "Modules": build: cmake (a folder with CMakeLists.txt), kconfig (a file)
    assert mod["name"] == "mcunn_k16" and (out / mod["build"]["cmake"] / "CMakeLists.txt").is_file()
    assert (out / mod["build"]["kconfig"]).is_file()
    assert re.search(r"^config MCUNN_K16\n\tbool ", (out / "Kconfig").read_text(), re.M)
    cm = (out / "CMakeLists.txt").read_text()
    assert cm.lstrip("# \n").count("if(CONFIG_MCUNN_K16)") == 1 and "zephyr_library_named(mcunn_k16)" in cm
    srcs = re.search(r"zephyr_library_sources\(([^)]*)\)", cm).group(1).split()
    assert all((out / s).is_file() for s in srcs)
    _compile(ARM_M4, out, srcs, re.search(r"zephyr_include_directories\(([^)]*)\)", cm).group(1).split(), tmp_path)


def test_platformio_library_json_has_the_documented_keys_and_its_c_compiles(tmp_path, exports):
    out = package(exports["k16"], "platformio", tmp_path / "pio")
    lib = json.loads((out / "library.json").read_text())
    for key in ("name", "version", "description", "keywords", "frameworks", "platforms", "build"):
        assert key in lib, key
    build = lib["build"]
    assert set(build) <= {"srcDir", "includeDir", "srcFilter", "flags", "unflags", "libArchive", "libLDFMode",
                          "libCompatMode", "extraScript"}
    src = out / build["srcDir"]
    assert (out / build["includeDir"] / open_bundle(exports["k16"]).header).is_file()
    cs = [p.relative_to(out).as_posix() for p in src.glob("*.c")]
    assert cs and build["srcFilter"] == ["+<*.c>"]
    _compile(["cc", "-O2"], out, cs, [build["includeDir"]], tmp_path)
    if shutil.which("arm-none-eabi-gcc"):
        _compile(ARM_M4, out, cs, [build["includeDir"]], tmp_path)


def test_esp_idf_component_registers_its_sources_and_its_c_compiles(tmp_path, exports):
    yaml = pytest.importorskip("yaml")
    out = package(exports["k16"], "esp-idf", tmp_path / "idf")
    meta = yaml.safe_load((out / "idf_component.yml").read_text())
    assert meta["version"] and meta["description"]
    cm = (out / "CMakeLists.txt").read_text()
    reg = re.search(r"idf_component_register\(SRCS ((?:\"[^\"]+\"\s*)+)INCLUDE_DIRS ((?:\"[^\"]+\"\s*)+)\)", cm)
    assert reg, cm
    srcs, incs = (re.findall(r'"([^"]+)"', g) for g in reg.groups())
    assert all((out / s).is_file() for s in srcs) and all((out / i).is_dir() for i in incs)
    _compile(["cc", "-O2"], out, srcs, incs, tmp_path)
    # no Xtensa toolchain on Debian; an ESP32-C3 is RV32IMC: compile for it when the RISC-V gcc is here
    specs = Path("/usr/lib/picolibc/riscv64-unknown-elf/picolibc.specs")   # its C library's headers
    if shutil.which("riscv64-unknown-elf-gcc") and specs.is_file():
        _compile(["riscv64-unknown-elf-gcc", f"--specs={specs}", "-march=rv32imc", "-mabi=ilp32", "-Os"],
                 out, srcs, incs, tmp_path)


def test_the_runtime_becomes_one_runtime_target(tmp_path, exports):
    """model.json's "runtime" (header, sources, version) is followed: its .c is copied into every
    format and, where the build system allows (cmake, zephyr), built once as mcunn_runtime."""
    d = exports["g8"]
    rt = json.loads((d / "model.json").read_text())["runtime"]
    (src,) = rt["sources"]
    cm = (package(d, "cmake", tmp_path / "cm") / "CMakeLists.txt").read_text()
    assert f"add_library(mcunn_runtime STATIC runtime/{src})" in cm and f'"version {rt["version"]}"' in cm
    assert f"runtime/{src}" not in cm.split("add_library(mcunn_g8")[1]
    z = (package(d, "zephyr", tmp_path / "z") / "CMakeLists.txt").read_text()
    assert "if(NOT TARGET mcunn_runtime)" in z and f"runtime/{src}" in z
    for fmt, rel in (("arduino", f"src/{src}"), ("platformio", f"src/{src}"),
                     ("esp-idf", f"runtime/{src}"), ("c", src)):
        out = package(d, fmt, tmp_path / fmt)
        assert (out / rel).read_bytes() == (d / src).read_bytes(), fmt
    assert f'"runtime/{src}"' in (tmp_path / "esp-idf" / "CMakeLists.txt").read_text()
