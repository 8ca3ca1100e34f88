#!/usr/bin/env bash
# Installs what mcu-nn's demo and tests need on a fresh Debian/Ubuntu machine:
# the Arm cross compiler with newlib, QEMU's Arm system emulator, the AVR toolchain and simavr
# (with its headers: mcu-nn's UART bridge links libsimavr), clang, CMake, Arduino's arduino-builder with
# its AVR core (the output-format tests), ser2net (the board-farm tests), and the Python
# package with its test extras (labgrid among them: the farm extra). Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v arm-none-eabi-gcc >/dev/null || need+=(gcc-arm-none-eabi)
[ -e /usr/lib/arm-none-eabi/newlib/libc.a ] || [ -e /usr/lib/arm-none-eabi/lib/libc.a ] || need+=(libnewlib-arm-none-eabi)
command -v qemu-system-arm >/dev/null || need+=(qemu-system-arm)
command -v avr-gcc >/dev/null || need+=(gcc-avr avr-libc)
{ command -v simavr >/dev/null && [ -e /usr/include/simavr/sim_avr.h ]; } || need+=(simavr libsimavr-dev)
# the RISC-V board (qemu-riscv32): compiler, picolibc, and qemu-system-riscv32 from qemu-system-misc
command -v riscv64-unknown-elf-gcc >/dev/null || need+=(gcc-riscv64-unknown-elf)
[ -e /usr/lib/picolibc/riscv64-unknown-elf/picolibc.specs ] || need+=(picolibc-riscv64-unknown-elf)
command -v qemu-system-riscv32 >/dev/null || need+=(qemu-system-misc)
# mcu-nn package --format arduino/cmake: the tests build the packages with Debian's Arduino tools and CMake
command -v arduino-builder >/dev/null || need+=(arduino-builder)
[ -d /usr/share/arduino/hardware/arduino/avr ] || need+=(arduino-core-avr)
command -v cmake >/dev/null || need+=(cmake)
command -v clang >/dev/null || need+=(clang)
command -v cc >/dev/null || need+=(gcc)
# board farms (tests/test_farm.py): ser2net serves emulated boards' ptys as RFC 2217 ports, as labgrid's exporter does
{ command -v ser2net >/dev/null || [ -x /usr/sbin/ser2net ]; } || need+=(ser2net)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${need[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
# torch==2.13.0 exactly: the CPU build on our machines; any other spec pulls a multi-GB CUDA build.
$PY -m pip install -q torch==2.13.0
$PY -m pip install -q -e ".[test]"
