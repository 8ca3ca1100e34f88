"""The inference server (firmware/common/server.c) under AddressSanitizer on the host board, fed
hostile traffic: frames of every length up to past the receive buffer for every command, random
payloads (token ids out of the vocabulary included) and random bytes. Each request gets a reply
or a typed error frame, the server stays alive, and afterwards it still answers bit-exact
(issue 13, "Hardened inputs"). ASan aborts the process on any out-of-bounds access."""
from __future__ import annotations

import struct
import time

import numpy as np
import pytest
import serial
import torch

import mcu_nn
from mcu_nn.build import build_firmware
from mcu_nn.device import protocol as P
from mcu_nn.device.client import DeviceClient
from mcu_nn.device.emulator import Emulator
from mcu_nn.device.serial_test import serial_test

pytestmark = pytest.mark.slow
quiet = {"log": lambda s: None}


class WideHead(torch.nn.Module):
    """A streaming model whose output step (2048 values) is larger than the board's default frame."""
    def __init__(self) -> None:
        super().__init__()
        self.gru = torch.nn.GRU(4, 8, batch_first=True)
        self.fc = torch.nn.Linear(8, 2048)

    def forward(self, x):
        y, _ = self.gru(x)
        return self.fc(y[:, -1])


class TokenLM(torch.nn.Module):
    """Embedding(1000) -> LSTM -> Linear(1000): token ids in, one logit per token per step."""
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(1000, 8)
        self.lstm = torch.nn.LSTM(8, 16, batch_first=True)
        self.fc = torch.nn.Linear(16, 1000)

    def forward(self, ids):
        y, _ = self.lstm(self.emb(ids))
        return self.fc(y)


class BiGRU(torch.nn.Module):
    """Whole sequences only (RUN_DATA collects, READ returns): the other buffer path."""
    def __init__(self) -> None:
        super().__init__()
        self.gru = torch.nn.GRU(3, 6, batch_first=True, bidirectional=True)

    def forward(self, x):
        y, _ = self.gru(x)
        return y


def _export(kind: str, d):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    if kind == "wide":
        x = rng.standard_normal((8, 6, 4)).astype(np.float32)
        return mcu_nn.export(WideHead().eval(), x[:1], calib=x, name="wide", out=d)
    if kind == "lm":
        ids = rng.integers(0, 1000, (8, 12))
        return mcu_nn.export(TokenLM().eval(), ids[:1], calib=ids, name="lm", out=d)
    x = rng.standard_normal((8, 5, 3)).astype(np.float32)
    return mcu_nn.export(BiGRU().eval(), x[:1], calib=x, name="bi", out=d)


@pytest.fixture(scope="module", params=["wide", "lm", "bi"])
def host_server(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param) / "export"
    _export(request.param, d)
    r = build_firmware(d, "host", sanitize=True, **quiet)
    return d, r.elf


class Raw:
    """Frames written as given, replies read back, with no retries: what a fuzzer needs."""
    def __init__(self, url: str) -> None:
        self.port = serial.serial_for_url(url, timeout=0.05)
        self.dec = P.Decoder()
        self.seq = 0

    def reply(self, timeout: float = 5.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                chunk = self.port.read(1)                  # waits for the first byte (or 50 ms)
                chunk += self.port.read(self.port.in_waiting)   # then takes what has arrived
            except serial.SerialException:                # the server died (ASan aborted it)
                return None
            for f in self.dec.feed(chunk):
                return f
        return None

    def send(self, cmd: int, payload: bytes):
        self.seq = (self.seq + 1) & 0xFFFF
        self.port.write(P.encode(cmd, self.seq, payload))
        return self.reply()

    def close(self) -> None:
        self.port.close()


def _payload(rng: np.random.Generator, n: int) -> bytes:
    return bytes(rng.integers(1, 256, n, dtype=np.uint8))       # no zeros: the longest frames COBS allows


def _died(emu: Emulator, cmd: int, n: int) -> str:
    err = emu.proc.stderr.read()[-3000:] if emu.proc.poll() is not None else "(still running)"
    return f"no answer to {P.command_name(cmd)} with {n} bytes of payload: {err}"


def test_frames_of_every_length_get_an_answer(host_server):
    d, elf = host_server
    rng = np.random.default_rng(1)
    with Emulator(elf, "host", **quiet) as emu:
        with DeviceClient(emu.url) as c:
            info = c.hello()
        raw = Raw(emu.url)
        try:
            top = info.payload_max + 48                     # past what the receive buffer holds
            for n in range(top + 1):
                for cmd in (P.RUN_DATA, P.STEP):
                    if cmd == P.RUN_DATA:
                        begin = raw.send(P.RUN_BEGIN, struct.pack("<I", max(info.max_steps, 1) if info.max_steps
                                                                      else 0xFFFF))
                        assert begin is not None and not isinstance(begin, P.BadFrame)
                    f = raw.send(cmd, _payload(rng, n))
                    assert f is not None and emu.proc.poll() is None, _died(emu, cmd, n)
                    if n > info.payload_max:
                        assert P.parse_error(f.payload)[0] in (P.E_OVERSIZE, P.E_FRAME), f
            for n in range(0, top + 1, 7):                  # the other commands, a stride of lengths
                for cmd in (P.GENERATE, P.READ, P.HELLO, P.RESET, P.RUN_BEGIN, 0x33):
                    f = raw.send(cmd, _payload(rng, n))
                    assert f is not None and emu.proc.poll() is None, _died(emu, cmd, n)
            for _ in range(200):                            # noise, then a resynchronising 0x00
                raw.port.write(bytes(rng.integers(0, 256, int(rng.integers(1, 600)), dtype=np.uint8)) + b"\0")
            raw.port.reset_input_buffer()
        finally:
            raw.close()
        assert emu.proc.poll() is None, emu.proc.stderr.read()
        r = serial_test(d, port=emu.url, progress=False, **quiet)   # still bit-exact afterwards
        assert r.ok and r.passed == r.vectors
