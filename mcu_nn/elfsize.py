"""Sizes read from an ELF object or linked image with pyelftools: the figures
``<prefix>size -A`` and ``<prefix>nm -S --defined-only`` print, for any architecture
(Arm, RISC-V, AVR, the host), with no cross binutils installed and no text to parse."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import McuNnError

# sections BFD (so ``size -A``) keeps to itself unless the loader maps them: the symbol table,
# the string tables of symbols and section names, relocations (other string tables, like
# .stabstr, and group descriptors are listed)
_HIDDEN_TYPES = {"SHT_NULL", "SHT_SYMTAB", "SHT_REL", "SHT_RELA", "SHT_SYMTAB_SHNDX"}
# mapping symbols, which nm hides: Arm/AArch64 $a, $t, $d, $x (and $d.1 ...); RISC-V $x, $d, $xrv32i2p1...
_MAPPING = re.compile(r"^\$([adtx](\..*)?|xrv.*)$")
_WRITE, _ALLOC, _EXEC = 0x1, 0x2, 0x4


@dataclass(frozen=True)
class Symbol:
    name: str
    kind: str        # nm's letter: T/t code, R/r read-only data, D/d data, B/b zero-initialised, W/V weak, ...
    size: int        # st_size


def _open(path: Path):
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    try:
        f = open(path, "rb")
    except OSError as e:
        raise McuNnError(f"cannot read {path}: {e.strerror}") from None
    try:
        return f, ELFFile(f)
    except (ELFError, ValueError) as e:
        f.close()
        raise McuNnError(f"{path} is not an ELF file ({e})") from None


def section_sizes(path: Path) -> dict[str, int]:
    """Bytes per section of an object or linked ELF, as ``size -A`` lists them (sections of the
    same name summed). Callers group them: ``.text`` and ``.text.*`` as code, and so on."""
    f, elf = _open(Path(path))
    with f:
        sections = list(elf.iter_sections())
        own_strtabs = {elf["e_shstrndx"]} | {s["sh_link"] for s in sections if s["sh_type"] == "SHT_SYMTAB"}
        sizes: dict[str, int] = {}
        for i, sec in enumerate(sections):
            hidden = sec["sh_type"] in _HIDDEN_TYPES or (sec["sh_type"] == "SHT_STRTAB" and i in own_strtabs)
            if hidden and not sec["sh_flags"] & _ALLOC:
                continue
            sizes[sec.name] = sizes.get(sec.name, 0) + int(sec["sh_size"])
        return sizes


def _kind(sym, sections: list, riscv: bool = False) -> str | None:
    """nm's letter for one symbol table entry (binutils' bfd_decode_symclass and decode_section_type
    over the section flags BFD derives from the ELF header); None for what ``nm --defined-only``
    does not print (undefined, section and file symbols, mapping symbols)."""
    st_type, bind, shndx = sym["st_info"]["type"], sym["st_info"]["bind"], sym["st_shndx"]
    if shndx == "SHN_UNDEF" or st_type in ("STT_SECTION", "STT_FILE") or _MAPPING.match(sym.name):
        return None
    if riscv and sym.name.startswith(".L"):       # the assembler's local labels, kept for relaxation
        return None
    if shndx == "SHN_COMMON":
        return "C"
    if st_type == "STT_GNU_IFUNC":
        return "i"
    if bind == "STB_WEAK":
        return "V" if st_type == "STT_OBJECT" else "W"
    if bind in ("STB_GNU_UNIQUE", "STB_LOOS"):       # 10: pyelftools names it by the range
        return "u"
    if shndx == "SHN_ABS":
        c = "a"
    elif isinstance(shndx, int) and shndx < len(sections):
        sec = sections[shndx]
        flags, nobits = sec["sh_flags"], sec["sh_type"] == "SHT_NOBITS"
        if flags & _EXEC:
            c = "t"
        elif flags & _ALLOC and not nobits:
            c = "d" if flags & _WRITE else "r"
        elif nobits:
            c = "b"
        elif sec.name.startswith((".debug", ".zdebug", ".gnu.linkonce.wi.", ".line", ".stab")):
            c = "N"
        elif not flags & _WRITE:
            c = "n"
        else:
            c = "?"
    else:
        return "?"
    return c.upper() if bind == "STB_GLOBAL" else c


def defined_symbols(path: Path) -> list[Symbol]:
    """The symbols ``nm --defined-only`` lists, with nm's type letter and their ELF size."""
    f, elf = _open(Path(path))
    with f:
        sections = list(elf.iter_sections())
        riscv = elf["e_machine"] == "EM_RISCV"
        symtab = elf.get_section_by_name(".symtab")
        if symtab is None:
            return []
        out = []
        for sym in symtab.iter_symbols():
            kind = _kind(sym, sections, riscv) if sym.name else None
            if kind is not None:
                out.append(Symbol(sym.name, kind, int(sym["st_size"])))
        return out


def kept_symbol_bytes(objects: list[Path], elf: Path, kinds: str = "tTrR") -> int:
    """Bytes in the linked ``elf`` of the symbols of ``kinds`` (default code and read-only data)
    that ``objects`` define and survived the link (``nm`` on the objects, ``nm -S`` on the ELF)."""
    names = {s.name for obj in objects for s in defined_symbols(obj) if s.kind in kinds}
    return sum(s.size for s in defined_symbols(elf) if s.kind in kinds and s.name in names)
