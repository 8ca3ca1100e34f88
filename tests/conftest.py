"""Shared test set-up: tests marked ``qemu`` (the emulated board: qemu-system-arm and the Arm
cross compiler) or ``arm`` (the cross compiler only) are skipped, with the install line, where
those tools are missing. CI installs them (scripts/install-deps.sh), so there they all run."""
from __future__ import annotations

import shutil

import pytest

HAVE_ARM = shutil.which("arm-none-eabi-gcc") is not None
HAVE_QEMU = HAVE_ARM and shutil.which("qemu-system-arm") is not None
INSTALL = "apt install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm (or: make test)"


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if "qemu" in item.keywords and not HAVE_QEMU:
            item.add_marker(pytest.mark.skip(reason=f"needs qemu-system-arm and arm-none-eabi-gcc: {INSTALL}"))
        elif "arm" in item.keywords and not HAVE_ARM:
            item.add_marker(pytest.mark.skip(reason=f"needs arm-none-eabi-gcc: {INSTALL}"))
