"""Serial port discovery: ``--port auto`` picks the one USB serial port whose VID:PID is a known
debug probe or USB-serial bridge; error messages list the ports that exist.

The IDs are those of pyocd's udev rules (ST-Link V2-1/V3, DAPLink, Raspberry Pi probes) and of
the common bridges' vendors (SEGGER, WCH, Silicon Labs, FTDI, Arduino).

``labgrid://PLACE`` (or ``labgrid://COORDINATOR_HOST:PORT/PLACE``) is a place of a labgrid
coordinator (default: $LG_COORDINATOR, else 127.0.0.1:20408): :func:`labgrid_port` acquires it
through labgrid's client API, yields its serial port as ``rfc2217://host:port`` (the
NetworkSerialPort its exporter serves through ser2net) and releases it (docs/farms.md)."""
from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from typing import Callable, Iterator, Optional

from serial.tools import list_ports

from ..errors import McuNnError

AUTO = "auto"
ANY = None          # a vendor whose every product counts

# (vid, pid or ANY) -> what it is
KNOWN_ADAPTERS: dict[tuple[int, Optional[int]], str] = {
    (0x0483, 0x374B): "ST-Link/V2-1", (0x0483, 0x3752): "ST-Link/V2-1",
    (0x0483, 0x374E): "ST-Link/V3", (0x0483, 0x374F): "ST-Link/V3", (0x0483, 0x3753): "ST-Link/V3",
    (0x0D28, 0x0204): "CMSIS-DAP (DAPLink)",
    (0x1366, ANY): "SEGGER J-Link",
    (0x1A86, 0x7523): "CH340",
    (0x10C4, 0xEA60): "CP210x",
    (0x0403, 0x6001): "FTDI FT232R", (0x0403, 0x6010): "FTDI FT2232",
    (0x0403, 0x6014): "FTDI FT232H", (0x0403, 0x6015): "FTDI FT-X",
    (0x2341, ANY): "Arduino", (0x2A03, ANY): "Arduino",
    (0x2E8A, ANY): "Raspberry Pi (Pico / Debug Probe)",
}


def adapter(vid: Optional[int], pid: Optional[int]) -> Optional[str]:
    """The known probe or bridge with this USB VID:PID, or None."""
    if vid is None:
        return None
    return KNOWN_ADAPTERS.get((vid, pid)) or KNOWN_ADAPTERS.get((vid, ANY))


def _label(p) -> str:
    ids = f" {p.vid:04X}:{p.pid:04X}" if p.vid is not None and p.pid is not None else ""
    desc = p.description if p.description and p.description not in ("n/a", p.device) else ""
    return f"{p.device} ({(desc + ids).strip()})" if desc or ids else p.device


def existing_ports() -> str:
    """One phrase naming the serial ports this machine has, for error messages."""
    ports = sorted(list_ports.comports(), key=lambda p: p.device)
    if not ports:
        return "this machine has no serial ports (is the board plugged in, and its USB cable one that carries data?)"
    return "serial ports here: " + ", ".join(_label(p) for p in ports)


def auto_port() -> tuple[str, str]:
    """(device, adapter name) of the one port with a known VID:PID; refuses none or several."""
    found = [(p, adapter(p.vid, p.pid)) for p in list_ports.comports()]
    known = sorted(((p, a) for p, a in found if a), key=lambda pa: pa[0].device)
    if not known:
        raise McuNnError(f"--port auto found no debug probe or USB-serial adapter it knows; "
                         f"{existing_ports()}; pass --port DEVICE")
    if len(known) > 1:
        raise McuNnError("--port auto found several boards: "
                         + ", ".join(f"{p.device} ({a})" for p, a in known) + "; pass --port with one of them")
    return known[0][0].device, known[0][1]


def resolve_port(port: Optional[str], log: Callable[[str], None] = print) -> Optional[str]:
    """``auto`` -> the one known adapter's device; a device path that does not exist -> an error
    listing the ports that do; anything else (URLs such as socket://, COM names) unchanged.
    (``labgrid://`` needs acquiring and releasing: see :func:`open_port`.) An ``rfc2217://`` URL
    without options gets ``?ign_set_control``, as labgrid's own serial driver does: ser2net does
    not answer the flow-control request on a pty, and pyserial would wait for it and give up."""
    if port is not None and port.startswith("rfc2217://"):
        return rfc2217_url(port)
    if port is None or "://" in port:
        return port
    if port == AUTO:
        device, name = auto_port()
        log(f"--port auto: {device} ({name})")
        return device
    if os.sep in port and not os.path.exists(port):
        raise McuNnError(f"serial port {port} does not exist; {existing_ports()}")
    return port


def rfc2217_url(url: str) -> str:
    """``rfc2217://host:port`` -> ``rfc2217://host:port?ign_set_control`` (options given: as given)."""
    return url if "?" in url else url + "?ign_set_control"


LABGRID = "labgrid://"
LABGRID_DEFAULT_COORDINATOR = "127.0.0.1:20408"


def parse_labgrid_url(url: str) -> tuple[str, str]:
    """``labgrid://PLACE`` or ``labgrid://HOST:PORT/PLACE`` -> (coordinator address, place)."""
    rest = url[len(LABGRID):].strip("/")
    coordinator, _, place = rest.rpartition("/")
    if not place:
        raise McuNnError(f"{url}: name a labgrid place (labgrid://PLACE or labgrid://COORDINATOR:PORT/PLACE)")
    return coordinator or os.environ.get("LG_COORDINATOR") or LABGRID_DEFAULT_COORDINATOR, place


def _serial_url(resources: dict, place: str) -> Optional[str]:
    """The place's one serial port as a pyserial URL: a NetworkSerialPort (what an exporter
    makes of a RawSerialPort/USBSerialPort: ser2net on host:port) or a local RawSerialPort.
    None while the exporter has not yet published the port of the ser2net it starts on acquire."""
    found = []
    for (name, cls), res in sorted(resources.items(), key=lambda kv: kv[0]):
        args = dict(getattr(res, "args", {}) or {})
        if cls == "NetworkSerialPort" and not args.get("port"):
            return None
        if cls == "NetworkSerialPort":
            scheme = "socket" if args.get("protocol") == "raw" else "rfc2217"
            where = f"{args['host']}:{args['port']}"
            found.append((name, rfc2217_url(f"rfc2217://{where}") if scheme == "rfc2217" else f"socket://{where}"))
        elif cls in ("RawSerialPort", "USBSerialPort") and args.get("port"):
            found.append((name, args["port"]))
    if not found:
        raise McuNnError(f"labgrid place {place} has no serial port (NetworkSerialPort) among its resources "
                         f"({', '.join(f'{c} {n}' for n, c in resources) or 'none'}); add-match the exporter's "
                         f"RawSerialPort or USBSerialPort to it")
    if len(found) > 1:
        raise McuNnError(f"labgrid place {place} has several serial ports ({', '.join(n for n, _ in found)}); "
                         "give the one to use its own place")
    return found[0][1]


class _QuietRootLog:
    """A root logger without handlers prints ERROR records on stderr (logging.lastResort);
    while labgrid runs, give it a NullHandler (only when it has none: an app's own logging stays)."""

    def __enter__(self) -> None:
        import logging
        self.handler = None
        if not logging.root.handlers:
            self.handler = logging.NullHandler()
            logging.root.addHandler(self.handler)

    def __exit__(self, *exc) -> None:
        import logging
        if self.handler is not None:
            logging.root.removeHandler(self.handler)
            self.handler = None


_labgrid_thread = None        # every labgrid call runs on one thread with one event loop (gRPC's aio wants that)
_labgrid_lock = threading.Lock()


def _labgrid_run(fn):
    """Run ``fn(loop)`` on the labgrid thread and return its result (or raise its exception)."""
    global _labgrid_thread
    import asyncio
    from concurrent.futures import ThreadPoolExecutor
    with _labgrid_lock:
        if _labgrid_thread is None:
            def init() -> None:
                asyncio.set_event_loop(asyncio.new_event_loop())
            _labgrid_thread = ThreadPoolExecutor(1, thread_name_prefix="mcunn-labgrid", initializer=init)
    return _labgrid_thread.submit(lambda: fn(asyncio.get_event_loop())).result()


def _labgrid_session(address: str, place_name: str, action: str, timeout: float) -> tuple[Optional[str], bool, str]:
    """One short session with the coordinator: ``action`` "acquire" (-> the place's serial
    port, whether we acquired it, labgrid's chatter) or "release"."""
    import argparse
    import asyncio
    try:
        from labgrid.remote.client import ClientSession
        from labgrid.util.proxy import proxymanager
    except ImportError:
        raise McuNnError("labgrid:// ports need labgrid: pip install 'mcu-nn[farm]' (or pip install labgrid)") from None

    def work(loop) -> tuple[Optional[str], bool, str]:
        chatter = io.StringIO()        # labgrid prints "acquired place …" on stdout: not ours (--json)
        args = argparse.Namespace(place=place_name, allow_unmatched=False, kick=False)

        def call(coro, what: str):
            try:
                with contextlib.redirect_stdout(chatter):
                    return loop.run_until_complete(asyncio.wait_for(coro, timeout))
            except asyncio.TimeoutError:
                raise McuNnError(f"labgrid coordinator {address}: no answer to {what} within {timeout:g} s") from None
            except McuNnError:
                raise
            except Exception as e:
                raise McuNnError(f"labgrid place {place_name} on {address}: {what} failed: {e}") from None

        session = None
        with _QuietRootLog():
            try:
                try:
                    session = ClientSession(proxymanager.get_grpc_address(address, default_port=20408), loop,
                                            args=args)
                    with contextlib.redirect_stdout(chatter):
                        loop.run_until_complete(asyncio.wait_for(session.start(), timeout))
                except asyncio.TimeoutError:
                    raise McuNnError(f"no answer from the labgrid coordinator at {address} within {timeout:g} s "
                                     "(is labgrid-coordinator running? set LG_COORDINATOR or use "
                                     "labgrid://HOST:PORT/PLACE)") from None
                except Exception as e:
                    raise McuNnError(f"cannot reach the labgrid coordinator at {address}: {e} (is "
                                     "labgrid-coordinator running? set LG_COORDINATOR or use "
                                     "labgrid://HOST:PORT/PLACE)") from None
                try:
                    place = session.get_place(place_name)
                except Exception as e:
                    raise McuNnError(f"labgrid coordinator {address}: {e}") from None
                if action == "release":
                    call(session.release(), "release")
                    return None, False, chatter.getvalue()
                me = f"{session.gethostname()}/{session.getuser()}"
                if place.acquired and place.acquired != me:
                    raise McuNnError(f"labgrid place {place_name} is acquired by {place.acquired}; wait for it, "
                                     f"or ask them to release it")
                acquired = False
                if not place.acquired:
                    call(session.acquire(), "acquire")
                    acquired = True
                try:
                    deadline = time.monotonic() + timeout
                    while True:
                        port = _serial_url(session.get_target_resources(session.get_place(place_name)), place_name)
                        if port is not None:
                            break
                        if time.monotonic() > deadline:
                            raise McuNnError(f"labgrid place {place_name}: its exporter published no serial port "
                                             f"within {timeout:g} s of the acquire (is ser2net installed there?)")
                        loop.run_until_complete(asyncio.sleep(0.2))   # the exporter's update arrives meanwhile
                except McuNnError:
                    if acquired:
                        call(session.release(), "release")
                    raise
                except Exception as e:
                    if acquired:
                        call(session.release(), "release")
                    raise McuNnError(f"labgrid place {place_name}: {e}") from None
                return port, acquired, chatter.getvalue()
            finally:
                if session is not None:
                    with contextlib.suppress(Exception), contextlib.redirect_stdout(chatter):
                        loop.run_until_complete(asyncio.wait_for(session.stop(), 5))
                        loop.run_until_complete(asyncio.wait_for(session.close(), 5))

    return _labgrid_run(work)


@contextlib.contextmanager
def labgrid_port(url: str, log: Callable[[str], None] = print, *, timeout: float = 20.0) -> Iterator[str]:
    """The serial port of the labgrid place ``url`` names, the place acquired for the time of
    the ``with`` (and released after; a place this user already holds is used and kept). The
    coordinator is asked only to acquire and to release, one short session each, on one thread
    for the whole process (several places in parallel: a farm)."""
    address, place_name = parse_labgrid_url(url)
    port, acquired, _ = _labgrid_session(address, place_name, "acquire", timeout)
    if acquired:
        log(f"labgrid: acquired place {place_name} on {address}")
    log(f"labgrid: place {place_name} serial port {port}")
    try:
        yield port
    finally:
        if acquired:
            try:
                _labgrid_session(address, place_name, "release", timeout)
                log(f"labgrid: released place {place_name}")
            except McuNnError as e:
                log(f"warning: {e}")


@contextlib.contextmanager
def open_port(port: Optional[str], log: Callable[[str], None] = print) -> Iterator[Optional[str]]:
    """:func:`resolve_port` for the time of a ``with``: a ``labgrid://`` place is acquired first
    and released after."""
    if port is not None and port.startswith(LABGRID):
        with labgrid_port(port, log) as url:
            yield url
    else:
        yield resolve_port(port, log)
