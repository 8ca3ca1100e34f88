"""DeviceClient: requests to the inference server over any pyserial URL, with timeouts,
retries and a reply cache on the chip that makes retransmissions safe (docs/protocol.md)."""
from __future__ import annotations

import struct
import time
from typing import Optional

import numpy as np
import serial

from ..errors import McuNnError
from . import protocol as P


class DeviceClient:
    """One session with a board. ``timeout`` is seconds per reply; ``retries`` is how many
    times a request is resent after a timeout or a garbled frame before giving up."""

    def __init__(self, port_url: str, timeout: float = 5.0, retries: int = 5, *,
                 baudrate: int = 115200, connect_timeout: float = 10.0) -> None:
        self.port_url = port_url
        self.timeout = timeout
        self.retries = retries
        self.info: Optional[P.DeviceInfo] = None
        self.bytes_sent = self.bytes_received = 0
        self.link_seconds = 0.0
        self.retransmissions = 0
        self._seq = 0
        self._decoder = P.Decoder()
        self._ser = self._open(port_url, baudrate, connect_timeout)

    @staticmethod
    def _open(url: str, baudrate: int, connect_timeout: float) -> serial.SerialBase:
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                # pyserial's rfc2217:// (ser2net, labgrid exporters) has no write timeout
                remote = url.startswith("rfc2217://")
                ser = serial.serial_for_url(url, baudrate=baudrate, timeout=0.02,
                                            **({} if remote else {"write_timeout": 5}))
                if remote:   # a PURGE round trip costs 50 ms a request; stale replies are dropped by seq anyway
                    ser.reset_input_buffer = lambda: ser.read(ser.in_waiting)
                return ser
            except (serial.SerialException, OSError, ValueError) as e:
                # an emulator that is still starting refuses connections for a moment
                if time.monotonic() > deadline or not url.startswith("socket://"):
                    from .ports import existing_ports
                    where = "" if "://" in url else f"; {existing_ports()}"
                    raise McuNnError(f"cannot open serial port {url}: {e}; check the port name "
                                     f"(e.g. /dev/ttyACM0, COM3, socket://127.0.0.1:4321, auto){where}") from None
                time.sleep(0.05)

    def close(self) -> None:
        try:
            self._ser.close()
        except Exception:
            pass

    def __enter__(self) -> "DeviceClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ transport
    def transact(self, cmd: int, payload: bytes = b"") -> P.Frame:
        """Send one request and return its reply; resends on timeout or garbled frames."""
        self._seq = (self._seq + 1) & 0xFFFF
        seq = self._seq
        # the leading 0x00 ends whatever garbage the chip's receiver holds
        frame = b"\0" + P.encode(cmd, seq, payload)
        start = time.monotonic()
        try:
            self._ser.reset_input_buffer()
        except (serial.SerialException, OSError):
            pass
        self._decoder = P.Decoder()
        problem = ""
        try:
            for attempt in range(self.retries + 1):
                if attempt:
                    self.retransmissions += 1
                self._write(frame)
                reply, problem = self._await(cmd, seq)
                if reply is not None:
                    return reply
        finally:
            self.link_seconds += time.monotonic() - start
        raise McuNnError(f"{self.port_url}: no valid reply to {P.command_name(cmd)} after "
                         f"{self.retries + 1} attempts ({problem}); check that the board runs mcu-nn "
                         "firmware on this port and that the link is sound")

    def _write(self, data: bytes) -> None:
        try:
            self._ser.write(data)
            self._ser.flush()
        except (serial.SerialException, OSError) as e:
            raise McuNnError(f"{self.port_url}: writing to the port failed: {e}") from None
        self.bytes_sent += len(data)

    def _await(self, cmd: int, seq: int) -> tuple[Optional[P.Frame], str]:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                data = self._ser.read(max(1, self._ser.in_waiting))
            except (serial.SerialException, OSError) as e:
                raise McuNnError(f"{self.port_url}: reading from the port failed: {e}") from None
            self.bytes_received += len(data)
            for item in self._decoder.feed(data):
                if isinstance(item, P.BadFrame):
                    return None, f"garbled reply: {item}"
                if item.cmd == P.ERROR:
                    code, _, msg = P.parse_error(item.payload)
                    if code in P.LINK_ERRORS:
                        return None, f"the board received a garbled request ({P.ERROR_NAMES[code]})"
                    if item.seq == seq:
                        raise McuNnError(f"{self.port_url}: the board refused {P.command_name(cmd)}: "
                                         f"{msg} ({P.ERROR_NAMES.get(code, code)})")
                    continue
                if item.seq == seq and item.cmd == cmd | P.REPLY:
                    return item, ""
                # else: a stale reply to an earlier attempt; ignore it
        return None, f"no reply within {self.timeout:g} s"

    # ------------------------------------------------------------------ commands
    def hello(self) -> P.DeviceInfo:
        try:
            info = P.DeviceInfo.parse(self.transact(P.HELLO).payload)
        except P.BadFrame as e:
            raise McuNnError(f"{self.port_url}: the board's HELLO reply is malformed ({e})") from None
        if info.protocol != P.PROTO_VERSION:
            raise McuNnError(f"{self.port_url}: the firmware speaks protocol {info.protocol}, this "
                             f"mcu-nn speaks {P.PROTO_VERSION}; rebuild and flash the firmware")
        self.info = info
        return info

    def _need_info(self) -> P.DeviceInfo:
        return self.info or self.hello()

    def reset(self) -> None:
        self.transact(P.RESET)

    def _values(self, frame: P.Frame, what: str) -> tuple[int, np.ndarray]:
        try:
            return P.parse_values(frame.payload, self._need_info().out_dtype)
        except P.BadFrame as e:
            raise McuNnError(f"{self.port_url}: malformed {what} reply ({e})") from None

    def _inputs(self, x, steps: Optional[int] = None) -> np.ndarray:
        info = self._need_info()
        a = np.asarray(x)
        if a.size % info.input_size or (steps is not None and a.size != steps * info.input_size):
            what = "STEP takes one step" if steps == 1 else "RUN takes whole steps"
            raise McuNnError(f"{what} of {info.input_size} values, got {a.size}")
        return np.ascontiguousarray(a.astype(info.in_dtype)).reshape(-1, info.input_size)

    def step(self, x) -> tuple[np.ndarray, int]:
        """One time step -> (outputs, counter ticks spent in the model)."""
        a = self._inputs(x, steps=1)
        ticks, y = self._values(self.transact(P.STEP, a.tobytes()), "STEP")
        return y, ticks

    def run(self, x) -> tuple[np.ndarray, int]:
        """A whole sequence (T, F) from a zero state -> (outputs (T, O) or (O,), total ticks).
        The sequence is streamed in chunks that fit the chip's frame buffer."""
        info = self._need_info()
        a = self._inputs(x)
        steps = a.shape[0]
        if steps == 0:
            raise McuNnError("RUN needs at least one step")
        if info.max_steps and steps > info.max_steps:
            raise McuNnError(f"the firmware's model takes at most {info.max_steps} steps per sequence, "
                             f"got {steps}")
        in_step = a[0].nbytes
        out_item = np.dtype(info.out_dtype).itemsize
        per = info.payload_max // in_step
        if info.output_per_step and info.has_step:
            per = min(per, (info.payload_max - 6) // (info.output_size * out_item))
        if per < 1:
            raise McuNnError(f"one step ({in_step} bytes) does not fit the firmware's {info.payload_max}-byte frames")
        self.transact(P.RUN_BEGIN, struct.pack("<I", steps))
        ticks, outs, y = 0, [], np.zeros(0, info.out_dtype)
        for t in range(0, steps, per):
            dt, y = self._values(self.transact(P.RUN_DATA, a[t:t + per].tobytes()), "RUN_DATA")
            ticks += dt
            outs.append(y)
        if not info.has_step:      # bidirectional: outputs stay on the chip until read
            total = steps * info.output_size if info.output_per_step else info.output_size
            chunk = (info.payload_max - 6) // out_item
            outs = []
            for off in range(0, total, chunk):
                _, y = self._values(self.transact(P.READ, struct.pack("<IH", off, min(chunk, total - off))), "READ")
                outs.append(y)
        if info.output_per_step:
            return np.concatenate(outs).reshape(steps, info.output_size), ticks
        return (np.concatenate(outs) if not info.has_step else y), ticks

    def generate(self, prefix: list[int], n: int, *, temperature_milli: int = 0, seed: int = 0,
                 cont: bool = False) -> tuple[list[int], int]:
        """One GENERATE request: feed ``prefix`` (token ids), draw ``n`` tokens on the chip ->
        (token ids, counter ticks). ``cont`` continues the previous generation (state and
        sampler kept; temperature and seed unused); otherwise the state is reset first."""
        payload = P.GENERATE_HEADER.pack(P.GENERATE_CONTINUE if cont else 0, 0, n, temperature_milli,
                                         seed & 0xFFFFFFFF, len(prefix))
        payload += np.asarray(prefix, "<u2").tobytes()
        try:
            ticks, ids = P.parse_values(self.transact(P.GENERATE, payload).payload, "<u2")
        except P.BadFrame as e:
            raise McuNnError(f"{self.port_url}: malformed GENERATE reply ({e})") from None
        if len(ids) != n:
            raise McuNnError(f"{self.port_url}: GENERATE asked for {n} tokens, the board sent {len(ids)}")
        return [int(i) for i in ids], ticks
