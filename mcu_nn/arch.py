"""Architectures: what every board of one core shares (toolchain, CPU flags and features,
start-up code, linker template, how a program prints and exits under emulation, which
sections count as flash and RAM). A board row (mcu_nn/boards.py) names one of these, so a
new board of a known core is a row and a ``board.c``; a new core is one entry here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .errors import McuNnError


@dataclass(frozen=True)
class Arch:
    name: str                         # "cortex-m4f": what board rows name
    core: str                         # "Cortex-M4F": for people
    cpu: str                          # the -mcpu value ("host" for the host board)
    cflags: tuple[str, ...]           # compiler flags selecting the core and float ABI
    features: frozenset[str]          # "dsp" (fast kernels), "fpu", "mve", "v7m" (ARMv7-M, no DSP), "v6m" (ARMv6-M)
    fpu: Optional[str] = None
    toolchain_prefix: str = ""        # "arm-none-eabi-"; "" is the host compiler
    link_flags: tuple[str, ...] = ()
    startup: Optional[str] = None     # under mcu_nn/firmware: reset handler and vector table
    linker_template: Optional[str] = None
    semihosting: Optional[str] = None  # print/exit under emulation (the bench)
    flash_sections: tuple[str, ...] = ()
    ram_sections: tuple[str, ...] = ()
    cycle_counter: Optional[str] = None   # the core's own counter on real silicon, if it has one
    loop_units: int = 2               # counter units per iteration of the bench's calibration loop
    bench_link_flags: tuple[str, ...] = ("-nostartfiles", "--specs=nosys.specs")
    libc: str = "libc_nano.a"         # a file the cross compiler finds when its C library is installed
    packages: str = "gcc-arm-none-eabi libnewlib-arm-none-eabi"   # apt packages of the toolchain

    @property
    def cross(self) -> bool:
        return bool(self.toolchain_prefix)

    @property
    def dsp(self) -> bool:
        """The fast kernels (templates/ports/cortex_m_dsp) apply; else the portable C."""
        return "dsp" in self.features

    @property
    def v7m(self) -> bool:
        """ARMv7-M without the DSP extension (Cortex-M3): the MLA kernels of templates/ports/cortex_m3
        (MCUNN_V7M) apply; else, without dsp either, the portable C."""
        return "v7m" in self.features

    @property
    def v6m(self) -> bool:
        """ARMv6-M (Cortex-M0/M0+): the LDRSB + MULS kernels of templates/ports/cortex_m0 (MCUNN_V6M)
        apply; else the portable C."""
        return "v6m" in self.features

    def tool(self, name: str) -> str:
        return self.toolchain_prefix + name


def _cortex_m(name: str, core: str, cpu: str, float_flags: tuple[str, ...], features: set[str],
              fpu: Optional[str] = None, cycle_counter: Optional[str] = "DWT CYCCNT") -> Arch:
    return Arch(name=name, core=core, cpu=cpu, cflags=("-mthumb", f"-mcpu={cpu}", *float_flags),
                features=frozenset(features), fpu=fpu, toolchain_prefix="arm-none-eabi-",
                link_flags=("-nostartfiles", "-specs=nano.specs", "-specs=nosys.specs"),
                startup="common/cortexm_startup.c", linker_template="common/cortexm.ld.in",
                semihosting="bench/semihost.c",
                flash_sections=(".isr_vector", ".text", ".ARM.exidx", ".data"),
                ram_sections=(".data", ".bss"), cycle_counter=cycle_counter)


ARCHES: dict[str, Arch] = {a.name: a for a in [
    _cortex_m("cortex-m0plus", "Cortex-M0/M0+ (ARMv6-M)", "cortex-m0plus", ("-mfloat-abi=soft",), {"v6m"},
              cycle_counter=None),
    _cortex_m("cortex-m3", "Cortex-M3", "cortex-m3", ("-mfloat-abi=soft",), {"v7m"}),
    _cortex_m("cortex-m4f", "Cortex-M4F", "cortex-m4", ("-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
              {"dsp", "fpu"}, "fpv4-sp-d16"),
    _cortex_m("cortex-m7", "Cortex-M7", "cortex-m7", ("-mfloat-abi=hard", "-mfpu=fpv5-d16"),
              {"dsp", "fpu"}, "fpv5-d16"),
    _cortex_m("cortex-m33", "Cortex-M33 (DSP, FPU)", "cortex-m33", ("-mfloat-abi=hard", "-mfpu=fpv5-sp-d16"),
              {"dsp", "fpu"}, "fpv5-sp-d16"),
    # -mfpu=auto: the FPU and Helium that -mcpu=cortex-m55 implies (Helium kernels: a later port)
    _cortex_m("cortex-m55", "Cortex-M55 (DSP, FPU, Helium)", "cortex-m55", ("-mfloat-abi=hard", "-mfpu=auto"),
              {"dsp", "fpu", "mve"}, "fp-armv8-fullfp16-d16+mve.fp"),
    # AVR: avr-libc's start-up and avr-gcc's default linker script for the MCU; the bench prints
    # over USART0 and exits by sleeping with interrupts off (simavr stops); its calibration loop
    # (sbiw + brne) is 4 cycles an iteration
    *(Arch(name=mcu, core=core, cpu=mcu, cflags=(f"-mmcu={mcu}",), features=frozenset(), toolchain_prefix="avr-",
           link_flags=("-Wl,--defsym=_ebss=__bss_end",), semihosting="bench/avr_exit.c",
           flash_sections=(".text", ".data"), ram_sections=(".data", ".bss"), loop_units=4,
           libc="libc.a", packages="gcc-avr avr-libc")
      for mcu, core in (("atmega328p", "AVR ATmega328P (8-bit)"), ("atmega2560", "AVR ATmega2560 (8-bit)"))),
    # RV32IMAC in machine mode with picolibc. -misa-spec=2.2: there Zicsr is part of I, so the
    # start-up's CSR instructions assemble while GCC 12 still picks picolibc's rv32imac/ilp32
    # multilib (with -march=rv32imac_zicsr it falls back to the rv64 default and cannot link).
    # picolibc's specs in the compile flags too: they carry its include path.
    Arch(name="rv32imac", core="RISC-V RV32IMAC", cpu="rv32imac",
         cflags=("-march=rv32imac", "-mabi=ilp32", "-misa-spec=2.2", "--specs=picolibc.specs"),
         features=frozenset(), toolchain_prefix="riscv64-unknown-elf-", link_flags=("-nostartfiles",),
         startup="common/riscv_startup.c", linker_template="common/riscv.ld.in",
         semihosting="bench/semihost.c", flash_sections=(".text", ".data"),
         ram_sections=(".data", ".bss"), cycle_counter="mcycle CSR",
         bench_link_flags=("-nostartfiles",), libc="picolibc.specs",
         packages="gcc-riscv64-unknown-elf picolibc-riscv64-unknown-elf"),
    Arch(name="host", core="this machine", cpu="host", cflags=(), features=frozenset()),
]}


def get_arch(name: str) -> Arch:
    try:
        return ARCHES[name]
    except KeyError:
        raise McuNnError(f"unknown architecture {name!r}; known: {', '.join(ARCHES)}") from None
