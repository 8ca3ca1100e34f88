"""ELF sizes read with pyelftools (mcu_nn.elfsize) equal what binutils' ``size -A`` and
``nm -S --defined-only`` print, for objects and linked images of every architecture whose tools
are installed; and they need no binutils at all (a host-compiled object read with PATH emptied)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from mcu_nn.elfsize import defined_symbols, kept_symbol_bytes, section_sizes
from mcu_nn.errors import McuNnError

SRC = r"""
const short table[100] = {1, 2, 3};
short state[64];
int counter = 5;
static const char *msg = "hello world";
__attribute__((weak)) int weakf(int x) { return x + 1; }
static int helper(int x) { return x * 3 + counter; }
int api(int x) { return helper(x) + table[x] + state[x] + msg[x] + weakf(x); }
int main(void) { return api(2); }
"""
# (tool prefix, compile flags, link flags); an architecture is tested where its gcc is installed
TARGETS = {
    "host": ("", ["-O2", "-g"], []),
    "arm": ("arm-none-eabi-", ["-O2", "-g", "-mcpu=cortex-m4", "-mthumb", "-ffunction-sections",
                               "-fdata-sections"], ["--specs=nosys.specs", "-Wl,--gc-sections"]),
    "riscv": ("riscv64-unknown-elf-", ["-O2", "-g", "-march=rv32imac", "-mabi=ilp32"],
              ["-nostdlib", "-nostartfiles", "-Wl,-e,main"]),
    "avr": ("avr-", ["-O2", "-g", "-mmcu=atmega328p"], []),
}


def _size_a(tool: str, path: Path) -> dict[str, int]:
    """What the old code parsed: ``size -A`` rows (name, size, address), same names summed."""
    out = subprocess.run([tool, "-A", str(path)], capture_output=True, text=True, check=True).stdout
    sizes: dict[str, int] = {}
    for line in out.splitlines()[2:]:
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit():
            sizes[parts[0]] = sizes.get(parts[0], 0) + int(parts[1])
    return sizes


def _nm(tool: str, path: Path) -> list[tuple[str, str, int]]:
    out = subprocess.run([tool, "-S", "--defined-only", str(path)], capture_output=True, text=True,
                         check=True).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4:
            rows.append((parts[3], parts[2], int(parts[1], 16)))
        elif len(parts) == 3:                       # nm -S prints no size when it is 0
            rows.append((parts[2], parts[1], 0))
    return sorted(rows)


def _old_model_flash(nm: str, objects: list[Path], elf: Path) -> int:
    """mcu_nn.bench's former nm text parse, kept here as the reference."""
    names = set()
    for obj in objects:
        out = subprocess.run([nm, "--defined-only", str(obj)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in "tTrR":
                names.add(parts[2])
    total = 0
    out = subprocess.run([nm, "-S", "--defined-only", str(elf)], capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tTrR" and parts[3] in names:
            total += int(parts[1], 16)
    return total


def _compile(tmp_path: Path, target: str, link: bool) -> Path:
    prefix, cflags, lflags = TARGETS[target]
    gcc = prefix + "gcc" if prefix else (shutil.which("cc") or shutil.which("gcc"))
    if not gcc or not shutil.which(gcc):
        pytest.skip(f"no {prefix}gcc")
    (tmp_path / "t.c").write_text(SRC)
    out = tmp_path / (f"{target}.elf" if link else f"{target}.o")
    cmd = [gcc, *cflags, str(tmp_path / "t.c"), "-o", str(out)] + (lflags if link else ["-c"])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"{gcc} cannot {'link' if link else 'compile'} here: {r.stderr.strip()[-200:]}")
    return out


def test_host_object_needs_no_binutils(tmp_path, monkeypatch) -> None:
    obj = _compile(tmp_path, "host", link=False)
    monkeypatch.setenv("PATH", str(tmp_path))           # no size, no nm, no compiler
    sec = section_sizes(obj)
    assert sec[".rodata"] >= 200 and sec[".bss"] == 128 and sec[".data"] == 4 and sec[".text"] > 0
    assert ".symtab" not in sec and ".strtab" not in sec and not any(s.startswith(".rela") for s in sec)
    syms = {s.name: s for s in defined_symbols(obj)}
    assert (syms["table"].kind, syms["table"].size) == ("R", 200)
    assert (syms["state"].kind, syms["state"].size) == ("B", 128)
    assert (syms["counter"].kind, syms["counter"].size) == ("D", 4)
    assert syms["api"].kind == "T" and syms["api"].size > 0 and syms["weakf"].kind == "W"
    assert kept_symbol_bytes([obj], obj) == sum(s.size for s in syms.values() if s.kind in "tTrR")


def test_not_an_elf_is_one_clear_error(tmp_path) -> None:
    (tmp_path / "x.o").write_text("not an object")
    with pytest.raises(McuNnError, match="is not an ELF file"):
        section_sizes(tmp_path / "x.o")
    with pytest.raises(McuNnError, match="cannot read"):
        defined_symbols(tmp_path / "missing.o")


@pytest.mark.parametrize("link", [False, True], ids=["object", "linked"])
@pytest.mark.parametrize("target", list(TARGETS))
def test_same_figures_as_binutils(tmp_path, target, link) -> None:
    prefix = TARGETS[target][0]
    if not (shutil.which(prefix + "size") and shutil.which(prefix + "nm")):
        pytest.skip(f"no {prefix}size / {prefix}nm to compare with")
    path = _compile(tmp_path, target, link)
    assert section_sizes(path) == _size_a(prefix + "size", path)
    assert sorted((s.name, s.kind, s.size) for s in defined_symbols(path)) == _nm(prefix + "nm", path)
    if link:
        obj = _compile(tmp_path, target, link=False)
        assert kept_symbol_bytes([obj], path) == _old_model_flash(prefix + "nm", [obj], path) > 0


def _export(d: Path) -> Path:
    import qmodels as Q
    from mcu_nn.codegen import write_export
    from mcu_nn.quant import quantize
    from mcu_nn.sim import run

    g = Q.make_graph("gru", input_size=6, hidden=12, seq_len=6, gain=1.0, name="es")
    q = quantize(g, Q.make_input(g, n=8, seed=2), "int8")
    x = Q.make_input(g, n=2)
    write_export(q, d, x, run(q, x))
    return d


@pytest.mark.parametrize("board", [pytest.param("qemu-mps2-an386", marks=pytest.mark.qemu),
                                   pytest.param("qemu-riscv32", marks=pytest.mark.riscv),
                                   pytest.param("avr-atmega328p", marks=pytest.mark.avr)])
def test_firmware_flash_and_ram_as_size_reported(tmp_path, board) -> None:
    """build.elf_sizes on each architecture's linked firmware, against the binutils parse."""
    from mcu_nn.boards import BOARDS
    from mcu_nn.build import build_firmware, elf_sizes

    b = BOARDS[board]
    built = build_firmware(_export(tmp_path / "es"), board, log=lambda *_: None)
    old = _size_a(b.arch.tool("size"), built.elf)
    assert elf_sizes(built.elf, b) == (sum(old.get(s, 0) for s in b.arch.flash_sections),
                                       sum(old.get(s, 0) for s in b.arch.ram_sections))
    assert section_sizes(built.elf) == old


@pytest.mark.qemu
def test_bench_model_flash_as_nm_reported(tmp_path) -> None:
    """bench's model flash (the export's code and constants kept in the linked image), against nm."""
    from mcu_nn.bench import bench_export
    from mcu_nn.exportdir import compile_sources, load_manifest

    d = _export(tmp_path / "es")
    bdir = tmp_path / "bench"
    result = bench_export(d, "qemu-mps2-an386", build_dir=bdir, vectors=1)
    objects = [bdir / f"{Path(c).stem}.o" for c in compile_sources(load_manifest(d))]
    assert result.flash_bytes == _old_model_flash("arm-none-eabi-nm", objects, bdir / "bench.elf") > 0
