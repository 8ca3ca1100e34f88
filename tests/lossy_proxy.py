"""A lossy link for tests and the soak script: a loopback TCP proxy between a client and a
board's TCP serial port (an emulator's UART) that, at seeded rates and in both directions,

* drops whole frames (everything up to and including a 0x00 delimiter),
* corrupts bytes (one random bit flipped; a flipped byte may become or stop being a delimiter,
  so it also splits and merges frames),
* duplicates whole frames,
* drops or doubles single bytes (``byte_drop``, ``byte_duplicate``: a frame loses or gains a byte),

and counts what it did. The serial protocol must retry every damaged or lost frame and never
pass one (tests/test_soak.py, scripts/soak.py).

    with LossyProxy(("127.0.0.1", port), drop=0.01, corrupt=0.0005, seed=1) as proxy:
        soak(export, 1000, port=proxy.url)
    proxy.stats       # {"frames": ..., "dropped": ..., "corrupted": ..., "duplicated": ...}

    python tests/lossy_proxy.py 127.0.0.1:4321 --drop 0.01 --corrupt 0.0005   (prints its URL, Ctrl-C stops)
"""
from __future__ import annotations

import argparse
import random
import socket
import threading
from typing import Optional


class LossyProxy:
    """Serves one connection at a time to ``target`` until :meth:`close`; ``drop`` and
    ``duplicate`` are probabilities per frame, ``corrupt``, ``byte_drop`` and ``byte_duplicate``
    per byte, each direction with its own seeded generator (so a run is reproducible for a given
    byte stream)."""

    def __init__(self, target: tuple[str, int], *, drop: float = 0.0, corrupt: float = 0.0,
                 duplicate: float = 0.0, byte_drop: float = 0.0, byte_duplicate: float = 0.0,
                 seed: int = 0) -> None:
        self.target = target
        self.drop, self.corrupt, self.duplicate = drop, corrupt, duplicate
        self.byte_drop, self.byte_duplicate = byte_drop, byte_duplicate
        self.seed = seed
        self.stats = {"frames": 0, "dropped": 0, "corrupted": 0, "duplicated": 0,
                      "bytes_dropped": 0, "bytes_duplicated": 0, "bytes": 0}
        self.by_direction = {"to_board": dict(self.stats), "to_host": dict(self.stats)}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._srv = socket.create_server(("127.0.0.1", 0))
        self._srv.settimeout(0.2)
        self.port = self._srv.getsockname()[1]
        self.url = f"socket://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._serve, name="lossy-proxy", daemon=True)
        self._thread.start()

    def __enter__(self) -> "LossyProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._srv.close()

    def _count(self, direction: str, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n
            self.by_direction[direction][key] += n

    def _serve(self) -> None:
        connection = 0
        while not self._stop.is_set():
            try:
                client, _ = self._srv.accept()
            except (socket.timeout, OSError):
                continue
            try:
                board = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for s in (client, board):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(0.1)
            connection += 1
            done = threading.Event()
            pumps = [threading.Thread(target=self._pump, daemon=True,
                                      args=(src, dst, name, random.Random(f"{self.seed}/{connection}/{name}"), done))
                     for src, dst, name in ((client, board, "to_board"), (board, client, "to_host"))]
            for t in pumps:
                t.start()
            for t in pumps:
                t.join()
            client.close()
            board.close()

    def _pump(self, src: socket.socket, dst: socket.socket, name: str, rng: random.Random,
              done: threading.Event) -> None:
        pending = bytearray()
        while not self._stop.is_set() and not done.is_set():
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            out = bytearray()
            for b in data:                                   # damage bytes as they pass
                if self.byte_drop and rng.random() < self.byte_drop:
                    self._count(name, "bytes_dropped")
                    continue
                if self.corrupt and rng.random() < self.corrupt:
                    b ^= 1 << rng.randrange(8)
                    self._count(name, "corrupted")
                doubled = bool(self.byte_duplicate) and rng.random() < self.byte_duplicate
                if doubled:
                    self._count(name, "bytes_duplicated")
                    if b:                                    # a doubled delimiter follows the frame below
                        pending.append(b)
                pending.append(b)
                if b == 0 and len(pending) == 1:             # a lone delimiter: pass it
                    out += pending
                    pending = bytearray()
                elif b == 0:                                 # a frame ends: pass, drop or double it
                    self._count(name, "frames")
                    r = rng.random()
                    if r < self.drop:
                        self._count(name, "dropped")
                    elif r < self.drop + self.duplicate:
                        self._count(name, "duplicated")
                        out += pending + pending
                    else:
                        out += pending
                    pending = bytearray()
                if doubled and b == 0:
                    out.append(0)
            self._count(name, "bytes", len(data))
            if out:
                try:
                    dst.sendall(bytes(out))
                except OSError:
                    break
        done.set()


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description="a lossy TCP proxy in front of a board's TCP serial port")
    ap.add_argument("target", help="HOST:PORT of the board (e.g. 127.0.0.1:4321 from mcu-nn flash --listen)")
    ap.add_argument("--drop", type=float, default=0.01, help="probability a frame is dropped (default 0.01)")
    ap.add_argument("--corrupt", type=float, default=0.0005, help="probability a byte is corrupted (default 5e-4)")
    ap.add_argument("--duplicate", type=float, default=0.0, help="probability a frame is sent twice")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    host, port = a.target.rsplit(":", 1)
    proxy = LossyProxy((host, int(port)), drop=a.drop, corrupt=a.corrupt, duplicate=a.duplicate, seed=a.seed)
    print(proxy.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.close()
        print(proxy.stats)


if __name__ == "__main__":
    main()
