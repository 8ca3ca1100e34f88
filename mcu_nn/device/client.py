"""DeviceClient: requests to the inference server over any pyserial URL, with timeouts,
retries and a reply cache on the chip that makes retransmissions safe (docs/protocol.md)."""
from __future__ import annotations

import collections
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional

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
        self.retransmissions = 0          # requests resent (transact: the same frame; run_many: a sequence's frames)
        self.sequences_resent = 0         # run_many: sequences sent again because one of their frames was lost
        self.link_faults = 0              # run_many: garbled replies, link-error frames and gaps/timeouts seen
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

    def _steps_per_chunk(self) -> int:
        """Steps of input per RUN_DATA frame: as many as fit ``payload_max`` (inputs and, for
        per-step models, the reply's outputs)."""
        info = self._need_info()
        in_step = info.input_size * np.dtype(info.in_dtype).itemsize
        per = info.payload_max // in_step
        if info.output_per_step and info.has_step:
            per = min(per, (info.payload_max - 6) // (info.output_size * np.dtype(info.out_dtype).itemsize))
        if per < 1:
            raise McuNnError(f"one step ({in_step} bytes) does not fit the firmware's {info.payload_max}-byte frames")
        return per

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
        per = self._steps_per_chunk()
        out_item = np.dtype(info.out_dtype).itemsize
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

    # ------------------------------------------------------------------ pipelining
    def run_many(self, items: Iterable[tuple[Any, Any, str]], *, window: int = 8192
                 ) -> Iterator[tuple[Any, np.ndarray, int]]:
        """Many sequences, with up to ``window`` bytes of requests in flight (pipelining: the
        next frames go out before the replies to the previous ones arrive; the chip answers in
        order). ``items``: ``(key, x, how)`` with ``x`` a (T, F) sequence of chip inputs and
        ``how`` "run" (RUN_BEGIN + RUN_DATA chunks, + READs for bidirectional models) or "step"
        (RESET + one STEP per step). Yields ``(key, outputs, ticks)`` as each sequence completes,
        outputs shaped as :meth:`run` gives them (``how="step"``: the STEP outputs, stacked for
        per-step models, the last one otherwise). ``window=0``: one request at a time.

        Retries without false passes, with the chip's one-entry reply cache: each sequence starts
        with a request that resets the model state (RUN_BEGIN or RESET), so a sequence is a unit
        that can be sent again from its start. A sequence counts only when every one of its
        frames got its own valid reply, in order; any gap (a reply garbled, dropped or refused
        as damaged, or ``timeout`` seconds without a reply) makes the whole sequence go again
        with new sequence numbers (``retransmissions`` += its frames, ``sequences_resent`` += 1):
        pipelined once more if it has at most 8 frames, then one frame at a time ("lockstep"),
        where a frame whose reply is lost or damaged is resent as it was (same seq: the chip
        answers a repeat of the request it last executed from its cache, without stepping
        twice), at most ``retries`` times per frame, as :meth:`transact` does. Replies of an
        abandoned attempt are ignored."""
        info = self._need_info()
        pipe = _Pipe(self, info, window)
        try:
            yield from pipe.drive(iter(items))
        finally:
            self.link_seconds += pipe.elapsed()


@dataclass(eq=False)
class _Unit:
    """One sequence in flight: its frames and, for the current attempt, their replies."""
    key: Any
    how: str
    steps: int
    frames: list                                   # [(cmd, payload)]
    attempt: int = 0
    replies: list = field(default_factory=list)   # payloads of the current attempt, in order
    dead: bool = False                             # the current attempt lost a frame


class _Pipe:
    """The sender/receiver loop of DeviceClient.run_many."""

    def __init__(self, client: DeviceClient, info: P.DeviceInfo, window: int) -> None:
        self.c, self.info, self.window = client, info, max(0, int(window))
        self.per = client._steps_per_chunk()
        self.out_item = np.dtype(info.out_dtype).itemsize
        self.queue: collections.deque[_Unit] = collections.deque()     # to send (retries first)
        self.current: Optional[_Unit] = None                          # being sent, frame by frame
        self.next_frame = 0
        self.inflight: collections.deque = collections.deque()        # (seq, unit, attempt, index, nbytes)
        self.by_seq: dict[int, tuple] = {}
        self.inflight_bytes = 0
        self.rx = b""
        self.problem = ""
        self.lock: Optional[list] = None      # [entry, wire, resends, deadline, problem]: the lockstep frame in flight
        self.t0 = time.monotonic()
        self.last = self.t0                                           # last sign of life from the chip
        # A thread drains the port as bytes arrive, while this one sends, simulates and compares:
        # an emulator's UART sends each byte in its own TCP segment, and a receive queue left
        # alone for a few ms fills up (then the kernel drops segments and TCP backs off for
        # hundreds of ms).
        self.chunks: collections.deque[bytes] = collections.deque()
        self.arrived = threading.Condition()
        self.stop = False
        self.read_error: Optional[BaseException] = None
        self.reader = threading.Thread(target=self._read, name="mcu-nn-rx", daemon=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    # -- building units
    def unit(self, key: Any, x: Any, how: str) -> _Unit:
        a = self.c._inputs(x)
        steps = a.shape[0]
        info = self.info
        if steps == 0:
            raise McuNnError("RUN needs at least one step")
        if how == "step":
            if not info.has_step:
                raise McuNnError("bidirectional model: no STEP, use RUN")
            frames = [(P.RESET, b"")] + [(P.STEP, a[t].tobytes()) for t in range(steps)]
        elif how == "run":
            if info.max_steps and steps > info.max_steps:
                raise McuNnError(f"the firmware's model takes at most {info.max_steps} steps per sequence, "
                                 f"got {steps}")
            frames = [(P.RUN_BEGIN, struct.pack("<I", steps))]
            frames += [(P.RUN_DATA, a[t:t + self.per].tobytes()) for t in range(0, steps, self.per)]
            if not info.has_step:
                total = steps * info.output_size if info.output_per_step else info.output_size
                chunk = (info.payload_max - 6) // self.out_item
                frames += [(P.READ, struct.pack("<IH", off, min(chunk, total - off)))
                           for off in range(0, total, chunk)]
        else:
            raise ValueError(f"how must be 'run' or 'step', not {how!r}")
        return _Unit(key, how, steps, frames)

    def result(self, u: _Unit) -> tuple[np.ndarray, int]:
        """The outputs of a completed attempt; BadFrame when a reply is malformed."""
        info, ticks, outs = self.info, 0, []
        for (cmd, _), p in zip(u.frames, u.replies):
            if cmd in (P.RUN_DATA, P.STEP, P.READ):
                dt, y = P.parse_values(p, info.out_dtype)
                if cmd != P.READ:
                    ticks += dt
                if cmd == P.READ or info.has_step:
                    outs.append(y)
        if not info.has_step:                     # bidirectional: the READ replies, in order
            y = np.concatenate(outs)
            want = u.steps * info.output_size if info.output_per_step else info.output_size
            if y.size != want:
                raise P.BadFrame(f"READ gave {y.size} values, expected {want}")
            return (y.reshape(u.steps, info.output_size) if info.output_per_step else y), ticks
        if info.output_per_step:
            y = np.concatenate(outs)
            if y.size != u.steps * info.output_size:
                raise P.BadFrame(f"{y.size} output values for {u.steps} steps")
            return y.reshape(u.steps, info.output_size), ticks
        if any(y.size != info.output_size for y in outs):
            raise P.BadFrame("an output of the wrong size")
        return outs[-1], ticks

    # -- failing an attempt
    def fail(self, u: _Unit, why: str) -> None:
        if u.dead:
            return
        u.dead = True
        self.problem = why
        self.c.link_faults += 1
        if u.attempt >= self.c.retries:
            raise McuNnError(f"{self.c.port_url}: sequence {u.key} ({u.steps} steps via "
                             f"{'STEP' if u.how == 'step' else 'RUN'}) lost a frame on each of "
                             f"{u.attempt + 1} attempts (last: {why}); check that the link is sound")
        if self.current is u:
            self.current = None
        self.c.retransmissions += len(u.frames)
        self.c.sequences_resent += 1
        self.queue.appendleft(u)

    # -- sending
    def fill(self, items: Iterator) -> bool:
        """Send frames while the window has room; False when there is nothing left to send."""
        out = []
        while True:
            if self.current is None:
                if self.queue:
                    u = self.queue.popleft()
                    u.attempt += 1 if u.dead else 0
                    u.dead, u.replies = False, []
                else:
                    item = next(items, None)
                    if item is None:
                        break
                    u = self.unit(*item)
                self.current, self.next_frame = u, 0
            u = self.current
            # a sequence that lost a frame goes again pipelined once if short, then one frame at a time
            lockstep = not self.window or u.attempt > 1 or (u.attempt > 0 and len(u.frames) > 8)
            if self.inflight and (lockstep or self.inflight_bytes >= max(self.window, 1)):
                break
            cmd, payload = u.frames[self.next_frame]
            self.c._seq = seq = (self.c._seq + 1) & 0xFFFF
            wire = b"\0" + P.encode(cmd, seq, payload)  # the 0x00 ends any garbage in the chip's receiver
            entry = (seq, u, u.attempt, self.next_frame, len(wire))
            self.inflight.append(entry)
            self.by_seq[seq] = entry
            self.inflight_bytes += len(wire)
            out.append(wire)
            self.next_frame += 1
            if self.next_frame == len(u.frames):
                self.current = None
            if lockstep:
                self.lock = [entry, wire, 0, time.monotonic() + self.c.timeout, ""]
                break
        if out:
            if len(self.inflight) == len(out):
                self.last = time.monotonic()       # the chip had nothing to answer until now
            self.c._write(b"".join(out))
        return bool(out) or self.current is not None or bool(self.queue)

    def resend_lock(self, why: str) -> None:
        """A sequence that lost a frame once goes again one frame at a time, and a frame of it
        whose reply is lost or damaged is sent again as it was (same seq): the chip answers a
        repeat of the last request it executed from its reply cache, without stepping twice."""
        if self.lock is None:
            return
        entry, wire, resends, _, _ = self.lock
        u = entry[1]
        if resends >= self.c.retries:
            raise McuNnError(f"{self.c.port_url}: no valid reply to {P.command_name(u.frames[entry[3]][0])} "
                             f"of sequence {u.key} after {resends + 1} attempts ({why}); check that the board "
                             "runs mcu-nn firmware on this port and that the link is sound")
        self.lock[2] = resends + 1
        self.lock[3:] = [time.monotonic() + self.c.timeout, ""]
        self.c.retransmissions += 1
        self.problem = why
        self.c._write(wire)
        self.last = time.monotonic()

    def soon(self, why: str) -> None:
        """Something arrived garbled while a lockstep frame waits: resend it unless its reply
        comes within a moment (one damaged frame can yield several error frames)."""
        if self.lock is not None:
            self.lock[3:] = [min(self.lock[3], time.monotonic() + 0.05), why]

    def pop(self) -> tuple:
        entry = self.inflight.popleft()
        del self.by_seq[entry[0]]
        if self.lock is not None and self.lock[0] is entry:
            self.lock = None
        self.inflight_bytes -= entry[4]
        return entry

    # -- receiving
    def _read(self) -> None:
        ser = self.c._ser
        try:
            while not self.stop:
                data = ser.read(max(1, ser.in_waiting))     # returns after the port's 20 ms timeout
                if data:
                    with self.arrived:
                        self.chunks.append(data)
                        self.arrived.notify()
        except BaseException as e:                          # noqa: BLE001 - re-raised by receive()
            with self.arrived:
                self.read_error = e
                self.arrived.notify()

    def receive(self) -> Iterator[tuple[Any, np.ndarray, int]]:
        c = self.c
        with self.arrived:
            if not self.chunks and self.read_error is None:
                self.arrived.wait(0.05)
            data = b"".join(self.chunks)
            self.chunks.clear()
            if self.read_error is not None:
                raise McuNnError(f"{c.port_url}: reading from the port failed: {self.read_error}") from None
        c.bytes_received += len(data)
        if data:
            self.rx += data
            *bodies, self.rx = self.rx.split(b"\0")
            if len(self.rx) > 1 << 17:
                self.rx = b""                       # garbage with no delimiter: drop it
            for body in bodies:
                if body:
                    yield from self.frame(body)
        if self.lock is not None:
            if time.monotonic() > self.lock[3]:
                self.resend_lock(self.lock[4] or f"no reply within {c.timeout:g} s")
        elif self.inflight and time.monotonic() - self.last > c.timeout:
            while self.inflight:                  # nothing for `timeout` s: every frame in flight is lost
                _, u, attempt, _, _ = self.pop()
                if attempt == u.attempt:
                    self.fail(u, f"no reply within {self.c.timeout:g} s")
            self.last = time.monotonic()

    def frame(self, body: bytes) -> Iterator[tuple[Any, np.ndarray, int]]:
        try:
            f = P.decode(body)
        except P.BadFrame as e:
            self.c.link_faults += 1               # garbled reply: the gap shows at the next good one
            self.soon(f"garbled reply: {e}")
            return
        if f.cmd == P.ERROR and P.parse_error(f.payload)[0] in P.LINK_ERRORS:
            self.c.link_faults += 1               # a request arrived damaged: its gap shows likewise
            self.soon(f"the board received a garbled request ({P.ERROR_NAMES[P.parse_error(f.payload)[0]]})")
            return
        if f.seq not in self.by_seq:
            return                                # a duplicate, or a reply to an abandoned attempt
        self.last = time.monotonic()
        while True:                               # the chip answers in order: earlier unanswered frames are lost
            seq, u, attempt, index, _ = self.pop()
            current = attempt == u.attempt and not u.dead
            if seq == f.seq:
                break
            if current:
                self.fail(u, f"no valid reply to {P.command_name(u.frames[index][0])}")
        if not current:
            return
        cmd = u.frames[index][0]
        if f.cmd == P.ERROR:
            code, _, msg = P.parse_error(f.payload)
            raise McuNnError(f"{self.c.port_url}: the board refused {P.command_name(cmd)} of sequence {u.key}: "
                             f"{msg} ({P.ERROR_NAMES.get(code, code)})")
        if f.cmd != cmd | P.REPLY or index != len(u.replies):
            self.fail(u, f"a reply of the wrong kind to {P.command_name(cmd)}")
            return
        u.replies.append(f.payload)
        if len(u.replies) == len(u.frames):
            try:
                y, ticks = self.result(u)
            except P.BadFrame as e:
                self.fail(u, f"malformed reply ({e})")
                return
            yield u.key, y, ticks

    def drive(self, items: Iterator) -> Iterator[tuple[Any, np.ndarray, int]]:
        try:
            self.c._ser.reset_input_buffer()
        except (serial.SerialException, OSError):
            pass
        self.reader.start()
        try:
            while True:
                more = self.fill(items)
                if not more and not self.inflight:
                    return
                yield from self.receive()
        finally:
            self.stop = True
            self.reader.join(5)
