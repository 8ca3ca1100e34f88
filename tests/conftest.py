"""Shared test set-up: tests marked ``qemu`` (the emulated board: qemu-system-arm and the Arm
cross compiler), ``arm`` (the cross compiler only) or ``riscv`` (the RISC-V board's toolchain,
picolibc and emulator) are skipped, with the install line, where those tools are missing. CI
installs them (scripts/install-deps.sh), so there they all run."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

HAVE_ARM = shutil.which("arm-none-eabi-gcc") is not None
HAVE_QEMU = HAVE_ARM and shutil.which("qemu-system-arm") is not None
INSTALL = "apt install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm (or: make test)"
# ``avr``: the AVR toolchain and simavr with its headers (the UART bridge is built against them)
HAVE_AVR = (shutil.which("avr-gcc") is not None and shutil.which("simavr") is not None
            and os.path.isfile("/usr/include/simavr/sim_avr.h"))
INSTALL_AVR = "apt install gcc-avr avr-libc simavr libsimavr-dev (or: scripts/install-deps.sh)"
HAVE_RISCV = (shutil.which("riscv64-unknown-elf-gcc") is not None and shutil.which("qemu-system-riscv32") is not None
              and Path("/usr/lib/picolibc/riscv64-unknown-elf").is_dir())
INSTALL_RISCV = ("apt install gcc-riscv64-unknown-elf picolibc-riscv64-unknown-elf qemu-system-misc "
                 "(scripts/install-deps.sh)")

# ``cmake`` (a host CMake and C compiler) and ``arduino`` (Debian's arduino-builder + AVR core)
HAVE_CMAKE = shutil.which("cmake") is not None and shutil.which("cc") is not None
HAVE_ARDUINO = shutil.which("arduino-builder") is not None and Path("/usr/share/arduino/hardware/arduino/avr").is_dir()
INSTALL_ARDUINO = "apt install arduino-builder arduino-core-avr (scripts/install-deps.sh)"


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if "cmake" in item.keywords and not HAVE_CMAKE:
            item.add_marker(pytest.mark.skip(reason="needs cmake and a host C compiler: apt install cmake gcc"))
        if "arduino" in item.keywords and not HAVE_ARDUINO:
            item.add_marker(pytest.mark.skip(reason=f"needs arduino-builder and the AVR core: {INSTALL_ARDUINO}"))
        if "avr" in item.keywords and not HAVE_AVR:
            item.add_marker(pytest.mark.skip(reason=f"needs avr-gcc and simavr: {INSTALL_AVR}"))
        if "riscv" in item.keywords and not HAVE_RISCV:
            item.add_marker(pytest.mark.skip(reason=f"needs the RISC-V toolchain, picolibc and QEMU: {INSTALL_RISCV}"))
        elif "qemu" in item.keywords and not HAVE_QEMU:
            item.add_marker(pytest.mark.skip(reason=f"needs qemu-system-arm and arm-none-eabi-gcc: {INSTALL}"))
        elif "arm" in item.keywords and not HAVE_ARM:
            item.add_marker(pytest.mark.skip(reason=f"needs arm-none-eabi-gcc: {INSTALL}"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: intra-op threads only add overhead (and contention on a shared 2-core box).
    A module asks for it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
