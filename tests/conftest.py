"""Shared test set-up: tests marked ``qemu`` (the emulated board: qemu-system-arm and the Arm
cross compiler) or ``arm`` (the cross compiler only) are skipped, with the install line, where
those tools are missing. CI installs them (scripts/install-deps.sh), so there they all run."""
from __future__ import annotations

import os
import shutil

import pytest

HAVE_ARM = shutil.which("arm-none-eabi-gcc") is not None
HAVE_QEMU = HAVE_ARM and shutil.which("qemu-system-arm") is not None
INSTALL = "apt install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm (or: make test)"
# ``avr``: the AVR toolchain and simavr with its headers (the UART bridge is built against them)
HAVE_AVR = (shutil.which("avr-gcc") is not None and shutil.which("simavr") is not None
            and os.path.isfile("/usr/include/simavr/sim_avr.h"))
INSTALL_AVR = "apt install gcc-avr avr-libc simavr libsimavr-dev (or: scripts/install-deps.sh)"


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if "avr" in item.keywords and not HAVE_AVR:
            item.add_marker(pytest.mark.skip(reason=f"needs avr-gcc and simavr: {INSTALL_AVR}"))
        elif "qemu" in item.keywords and not HAVE_QEMU:
            item.add_marker(pytest.mark.skip(reason=f"needs qemu-system-arm and arm-none-eabi-gcc: {INSTALL}"))
        elif "arm" in item.keywords and not HAVE_ARM:
            item.add_marker(pytest.mark.skip(reason=f"needs arm-none-eabi-gcc: {INSTALL}"))
