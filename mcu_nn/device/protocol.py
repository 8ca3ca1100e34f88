"""The host side of the mcu-nn serial protocol (docs/protocol.md; C twin in
firmware/common/frame.c and mcunn_proto.h).

A frame is COBS(cmd u8 | seq u16 | len u16 | payload | crc16) + 0x00, all little-endian,
CRC-16/CCITT-FALSE over everything before it."""
from __future__ import annotations

import binascii

import struct
from dataclasses import dataclass
from typing import Iterator, Optional

from cobs import cobs

PROTO_VERSION = 1
HELLO, RESET, STEP, RUN_BEGIN, RUN_DATA, READ, GENERATE = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
REPLY, ERROR = 0x80, 0x7F
COMMAND_NAMES = {HELLO: "HELLO", RESET: "RESET", STEP: "STEP", RUN_BEGIN: "RUN_BEGIN",
                 RUN_DATA: "RUN_DATA", READ: "READ", GENERATE: "GENERATE", ERROR: "ERROR"}
GENERATE_HEADER = struct.Struct("<BBHIIH")     # flags, 0, n, temperature_milli, seed, n_prefix
GENERATE_CONTINUE = 1                          # flags bit0: keep the model state and the sampler

E_CRC, E_FRAME, E_OVERSIZE, E_UNKNOWN_CMD, E_BAD_LENGTH, E_STATE, E_UNSUPPORTED = range(1, 8)
ERROR_NAMES = {E_CRC: "bad CRC", E_FRAME: "bad frame", E_OVERSIZE: "frame too long",
               E_UNKNOWN_CMD: "unknown command", E_BAD_LENGTH: "bad payload length",
               E_STATE: "bad state", E_UNSUPPORTED: "unsupported"}
LINK_ERRORS = (E_CRC, E_FRAME, E_OVERSIZE)   # the request was garbled on the way: resend it

PRECISIONS = {0: "int8", 1: "int16", 2: "float32"}
VALUE_TYPES = {0: "<i2", 1: "<i4", 2: "<f4"}
COUNTERS = {0: "none", 1: "cycles", 2: "timer", 3: "ns"}
HEADER = struct.Struct("<BHH")

def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF), the firmware's frame.c: the standard library's
    binascii.crc_hqx with that initial value."""
    return binascii.crc_hqx(data, 0xFFFF)


@dataclass(frozen=True)
class Frame:
    cmd: int
    seq: int
    payload: bytes


class BadFrame(Exception):
    """A frame arrived but was garbled (bad COBS, length or CRC)."""


def encode(cmd: int, seq: int, payload: bytes = b"") -> bytes:
    raw = HEADER.pack(cmd, seq & 0xFFFF, len(payload)) + payload
    raw += struct.pack("<H", crc16(raw))
    return cobs.encode(raw) + b"\0"


def decode(body: bytes) -> Frame:
    """One frame's bytes between delimiters -> Frame, or BadFrame."""
    try:
        raw = cobs.decode(body)
    except cobs.DecodeError:
        raise BadFrame("bad COBS encoding") from None
    if len(raw) < HEADER.size + 2:
        raise BadFrame("frame too short")
    cmd, seq, n = HEADER.unpack_from(raw)
    if n + HEADER.size + 2 != len(raw):
        raise BadFrame("length field disagrees with the frame")
    if crc16(raw[:-2]) != struct.unpack_from("<H", raw, len(raw) - 2)[0]:
        raise BadFrame("bad CRC")
    return Frame(cmd, seq, raw[HEADER.size:-2])


class Decoder:
    """Splits a byte stream on 0x00 and yields Frames (or BadFrame instances for garbled ones);
    garbage between frames costs at most the frame it lands in."""

    def __init__(self, max_frame: int = 1 << 17) -> None:
        self.buf = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes) -> Iterator[Frame | BadFrame]:
        for b in data:
            if b:
                if len(self.buf) < self.max_frame:
                    self.buf.append(b)
                continue
            body, self.buf = bytes(self.buf), bytearray()
            if not body:
                continue
            try:
                yield decode(body)
            except BadFrame as e:
                yield e


@dataclass(frozen=True)
class DeviceInfo:
    """What the firmware says about itself in its HELLO reply."""
    protocol: int
    precision: str
    in_dtype: str
    out_dtype: str
    output_per_step: bool
    has_step: bool
    counter: str
    input_size: int
    output_size: int
    max_steps: int
    payload_max: int
    clock_hz: int
    counter_hz: int
    sha256: str
    name: str
    board: str
    modified: bool = False          # built from files that differ from the export's model.json

    @classmethod
    def parse(cls, p: bytes) -> "DeviceInfo":
        if len(p) < 56:
            raise BadFrame(f"HELLO reply of {len(p)} bytes is too short")
        (ver, prec, tin, tout, flags, counter, nin, nout, maxs, pmax, clock, chz) = \
            struct.unpack_from("<6B4H2I", p)
        digest = p[22:54].hex()
        k = 54
        name = p[k + 1:k + 1 + p[k]].decode("ascii", "replace")
        k += 1 + p[k]
        board = p[k + 1:k + 1 + p[k]].decode("ascii", "replace") if k < len(p) else "?"
        return cls(ver, PRECISIONS.get(prec, f"?{prec}"), VALUE_TYPES.get(tin, "<i2"),
                   VALUE_TYPES.get(tout, "<i2"), bool(flags & 1), bool(flags & 2),
                   COUNTERS.get(counter, "none"), nin, nout, maxs, pmax, clock, chz, digest, name, board,
                   bool(flags & 4))


def parse_error(p: bytes) -> tuple[int, int, str]:
    """ERROR payload -> (code, command it answers, message)."""
    if len(p) < 2:
        return 0, 0, "malformed error frame"
    return p[0], p[1], p[2:].decode("ascii", "replace")


def parse_values(p: bytes, dtype: str) -> tuple[int, "object"]:
    """STEP/RUN_DATA/READ reply -> (counter ticks, values as a numpy array)."""
    import numpy as np
    if len(p) < 6:
        raise BadFrame("reply too short")
    ticks, count = struct.unpack_from("<IH", p)
    size = np.dtype(dtype).itemsize
    if len(p) != 6 + count * size:
        raise BadFrame("reply length disagrees with its value count")
    return ticks, np.frombuffer(p[6:], dtype=dtype).copy()


def command_name(cmd: Optional[int]) -> str:
    return COMMAND_NAMES.get((cmd or 0) & 0x7F, f"0x{cmd or 0:02x}")
