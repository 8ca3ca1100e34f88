"""pytest plugin shipped with mcu-nn (entry point ``pytest11: mcunn``): a firmware team's own
test suite gets fixtures for "the chip still computes what the simulator says", on every board
it names (docs/farms.md, examples/pytest_project/).

    pytest --mcunn-export build/har --mcunn-board qemu-mps2-an386 --mcunn-board qemu-mps2-an500 \\
           --mcunn-port rfc2217://lab1:3001 --mcunn-port labgrid://rack1-f4 --junitxml results.xml

Fixtures:
  ``mcunn_export``  the export directory (``--mcunn-export DIR``), a Path
  ``mcunn_board``   a running board (:class:`McuBoard`: ``.url``, ``.target``, ``.kind``): each
                    ``--mcunn-board`` booted in its emulator (firmware built if needed) and each
                    ``--mcunn-port`` as given; a test using it runs once per board (session scope)
  ``mcunn_client``  a connected :class:`mcu_nn.device.DeviceClient` on that board, HELLO done and
                    its model hash checked against the export
  ``mcunn_check``   ``mcunn_check(inputs=None, labels=None, **options)``: every test vector (or the
                    given inputs) through the board, compared with the simulator; fails the test
                    with the first mismatch; board, model and counts become JUnit properties
Tests that use them are skipped when no ``--mcunn-export`` is given. The plugin imports nothing
of mcu-nn until a fixture is used, and adds only ``--mcunn-*`` options.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

_log = logging.getLogger("mcu_nn.pytest")


def pytest_addoption(parser) -> None:
    g = parser.getgroup("mcunn", "mcu-nn: the chip computes what the simulator says")
    g.addoption("--mcunn-export", metavar="DIR", default=None,
                help="export directory (mcu-nn export -o DIR) for the mcunn_* fixtures")
    g.addoption("--mcunn-board", metavar="BOARD", action="append", default=[],
                help="emulated board to boot for mcunn_board (repeat for several; default qemu-mps2-an386 when "
                     "no --mcunn-port is given)")
    g.addoption("--mcunn-port", metavar="URL", action="append", default=[],
                help="a running board's serial port for mcunn_board: /dev/ttyACM0, socket://, rfc2217://, "
                     "labgrid://PLACE (repeat for several)")
    g.addoption("--mcunn-timeout", metavar="SECONDS", type=float, default=5.0,
                help="seconds to wait for each reply of the board (default 5)")


def _targets(config) -> list[tuple[str, str]]:
    ports = config.getoption("mcunn_port") or []
    boards = config.getoption("mcunn_board") or []
    if not ports and not boards:
        from .boards import DEFAULT_BOARD
        boards = [DEFAULT_BOARD]
    return [("port", p) for p in ports] + [("board", b) for b in boards]


def pytest_generate_tests(metafunc) -> None:
    """A test that uses mcunn_board (directly or through mcunn_client / mcunn_check) runs once
    per board and port given."""
    if "mcunn_board" not in metafunc.fixturenames or metafunc.config.getoption("mcunn_export") is None:
        return
    targets = _targets(metafunc.config)
    metafunc.parametrize("mcunn_board", targets, indirect=True, scope="session", ids=[t for _, t in targets])


@dataclass
class McuBoard:
    """A board the tests talk to: ``url`` is its serial port as pyserial opens it."""
    target: str          # the board name or the port as given
    kind: str            # "board" (emulated, booted here) or "port"
    url: str
    export_dir: Path


@pytest.fixture(scope="session")
def mcunn_export(pytestconfig) -> Path:
    d = pytestconfig.getoption("mcunn_export")
    if d is None:
        pytest.skip("no export given: pass --mcunn-export DIR (mcu-nn export -o DIR)")
    d = Path(d)
    if not (d / "model.json").is_file():
        raise pytest.UsageError(f"--mcunn-export {d}: not an mcu-nn export directory (no model.json)")
    return d


@pytest.fixture(scope="session")
def mcunn_board(request, mcunn_export):
    from .onboard import running_board
    kind, target = getattr(request, "param", None) or _targets(request.config)[0]
    if kind == "board":
        from .farm import ensure_firmware
        ensure_firmware(mcunn_export, target, log=_log.info)
    with running_board(mcunn_export, port=target if kind == "port" else None,
                       board=target if kind == "board" else None, log=_log.info) as url:
        yield McuBoard(target, kind, url, mcunn_export)


@pytest.fixture
def mcunn_client(mcunn_board, mcunn_export, pytestconfig):
    from .device.serial_test import board_session
    from .exportdir import open_export
    ex = open_export(mcunn_export, vectors=False)
    with board_session(ex, port=mcunn_board.url, timeout=pytestconfig.getoption("mcunn_timeout"),
                       log=_log.info) as client:
        yield client


def _serial_test(board: McuBoard, inputs: Any, labels: Any, timeout: float, **options: Any):
    from .device.serial_test import serial_test
    options.setdefault("progress", False)
    return serial_test(board.export_dir, port=board.url, timeout=timeout, inputs=inputs, labels=labels,
                       log=_log.info, **options)


def _verdict(board: McuBoard, r) -> None:
    if not r.ok:
        raise AssertionError(f"the chip on {board.target} does not compute what the simulator says: "
                             f"{r.passed}/{r.sequences} sequences match\n{r.first_mismatch}")


def assert_matches_simulator(board: McuBoard, *, inputs: Any = None, labels: Any = None,
                             timeout: float = 5.0, **options: Any):
    """Every test vector (or ``inputs``, with optional ``labels``) through ``board``, compared
    with the simulator (mcu_nn.device.serial_test); an AssertionError naming the first mismatch
    when the board differs. Returns the SerialTestResult. (Opens its own connection: do not
    hold a ``mcunn_client`` on the same emulated board meanwhile.)"""
    r = _serial_test(board, inputs, labels, timeout, **options)
    _verdict(board, r)
    return r


@pytest.fixture
def mcunn_check(request, mcunn_board, pytestconfig):
    """``mcunn_check(inputs=None, labels=None, **options)`` -> SerialTestResult, asserting the
    board matches the simulator; what ran is recorded as JUnit properties (mcunn_*)."""
    def check(inputs: Any = None, labels: Any = None, **options: Any):
        props = request.node.user_properties
        props.append(("mcunn_target", mcunn_board.target))
        r = _serial_test(mcunn_board, inputs, labels, options.pop("timeout", pytestconfig.getoption("mcunn_timeout")),
                         **options)
        d = r.device
        props += [("mcunn_board", d.board if d else ""), ("mcunn_model", d.name if d else ""),
                  ("mcunn_sha256", d.sha256 if d else ""), ("mcunn_sequences", r.sequences),
                  ("mcunn_passed", r.passed), ("mcunn_rule", r.rule)]
        _verdict(mcunn_board, r)
        return r
    return check
