"""The serial protocol: Python framing, the C frame receiver under sanitizers, and the two
talking to each other through the host board (a pty)."""
from __future__ import annotations

import shutil
import struct
import subprocess

import numpy as np
import pytest
import serial

from fixtures.make_standin import make_standin
from mcu_nn.build import FIRMWARE, build_firmware
from mcu_nn.device import protocol as P
from mcu_nn.device.emulator import Emulator

CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def test_crc_is_ccitt_false():
    assert P.crc16(b"123456789") == 0x29B1          # the catalogue check value


@pytest.mark.parametrize("payload", [b"", b"\0", b"\0" * 600, bytes(range(256)) * 3, b"abc\0def"])
def test_encode_decode_roundtrip(payload):
    wire = P.encode(P.RUN_DATA, 0xBEEF, payload)
    assert wire.endswith(b"\0") and b"\0" not in wire[:-1]
    frames = list(P.Decoder().feed(wire))
    assert frames == [P.Frame(P.RUN_DATA, 0xBEEF, payload)]


def test_decoder_resynchronises_after_noise_and_flags_bad_frames():
    rng = np.random.default_rng(0)
    good = P.encode(P.STEP, 7, b"\1\2\3")
    bad = bytearray(good)
    bad[3] ^= 0x40
    noise = bytes(rng.integers(1, 256, 50, dtype=np.uint8))
    items = list(P.Decoder().feed(noise + b"\0" + bytes(bad) + good + good))
    assert isinstance(items[0], P.BadFrame)           # the noise
    assert isinstance(items[1], P.BadFrame)           # the corrupted copy
    assert items[2:] == [P.Frame(P.STEP, 7, b"\1\2\3")] * 2


def test_length_field_is_checked():
    raw = struct.pack("<BHH", 1, 1, 5) + b"ab"
    raw += struct.pack("<H", P.crc16(raw))
    from cobs import cobs
    with pytest.raises(P.BadFrame, match="length"):
        P.decode(cobs.encode(raw))


@pytest.mark.skipif(CC is None, reason="no host C compiler")
def test_c_frame_receiver_survives_200k_mutated_frames_under_sanitizers(tmp_path):
    exe = tmp_path / "fuzz_frame"
    subprocess.run([CC, "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1", "-g",
                    "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                    "-I", str(FIRMWARE / "common"), str(FIRMWARE / "tools" / "fuzz_frame.c"),
                    str(FIRMWARE / "common" / "frame.c"), "-o", str(exe)], check=True)
    r = subprocess.run([str(exe), "200000", "12345"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "200000 iterations" in r.stdout
    clean = int(r.stdout.split(",")[1].split()[0])
    assert clean > 300000                              # both clean passes of most iterations decoded


# ---------------------------------------------------------------- C <-> Python via the host board
@pytest.fixture(scope="module")
def host_board(tmp_path_factory):
    if CC is None:
        pytest.skip("no host C compiler")
    d = tmp_path_factory.mktemp("standin")
    make_standin(d)
    r = build_firmware(d, "host", sanitize=True, log=lambda s: None)
    with Emulator(r.elf, "host") as emu:
        ser = serial.serial_for_url(emu.url, timeout=2)
        yield ser, emu
        ser.close()
        assert emu.proc.poll() is None, "the host board died (sanitizer report?)"


def _ask(ser, data: bytes) -> list:
    ser.write(data)
    dec, out = P.Decoder(), []
    while not out:
        chunk = ser.read(1)
        assert chunk, "no reply from the host board"
        out += list(dec.feed(chunk))
    return out


def test_hello_over_the_pty(host_board):
    ser, _ = host_board
    (f,) = _ask(ser, P.encode(P.HELLO, 1))
    info = P.DeviceInfo.parse(f.payload)
    assert (f.cmd, f.seq) == (P.HELLO | P.REPLY, 1)
    assert (info.name, info.board, info.input_size, info.output_size) == ("standin", "host", 3, 2)
    assert info.has_step and info.output_per_step and info.payload_max >= 512


@pytest.mark.parametrize("wire,code", [
    (P.encode(0x42, 3), P.E_UNKNOWN_CMD),
    (P.encode(P.STEP, 3, b"\1\2"), P.E_BAD_LENGTH),
    (P.encode(P.RUN_DATA, 3, b"\0" * 6), P.E_STATE),                # no RUN_BEGIN
    (P.encode(P.STEP, 3, b"\1\2\3\4\5\6")[:-3] + b"\x55\x55\0", P.E_CRC),
    (b"\x05\x01\0", P.E_FRAME),
    (b"\x01" * 5000 + b"\0", P.E_OVERSIZE),
])
def test_bad_requests_get_typed_error_frames(host_board, wire, code):
    ser, _ = host_board
    ser.write(P.encode(P.RESET, 2))
    _ask(ser, b"")
    (f,) = _ask(ser, wire)
    assert f.cmd == P.ERROR and f.payload[0] == code, f


def test_retransmitted_step_is_answered_from_the_cache(host_board):
    """A STEP whose reply was lost is sent again: the chip must not advance the state twice."""
    ser, _ = host_board
    _ask(ser, P.encode(P.RESET, 10))
    x = np.array([1000, -500, 300], "<i2").tobytes()
    (a,) = _ask(ser, P.encode(P.STEP, 11, x))
    (b,) = _ask(ser, P.encode(P.STEP, 11, x))       # retransmission
    (c,) = _ask(ser, P.encode(P.STEP, 12, x))       # a new request
    assert a.payload[4:] == b.payload[4:]
    assert c.payload[6:] != a.payload[6:]
