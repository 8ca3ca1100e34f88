"""Board farms (docs/farms.md): serial-test and bench on several boards or ports at once, one
result each and a verdict that fails if any fails; emulated boards served over RFC 2217 by
Debian's ser2net; a labgrid coordinator and exporter on 127.0.0.1 in front of an emulated board,
reached as ``--port labgrid://PLACE``."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fixtures.make_standin import make_standin
from mcu_nn.build import build_firmware, firmware_path
from mcu_nn.device.emulator import free_port, terminate
from mcu_nn.device.ports import parse_labgrid_url, resolve_port
from mcu_nn.errors import McuNnError

ROOT = Path(__file__).resolve().parents[1]
BOARD = "qemu-mps2-an386"
HAVE_SER2NET = shutil.which("ser2net") is not None or os.path.isfile("/usr/sbin/ser2net")
needs_ser2net = pytest.mark.skipif(not HAVE_SER2NET, reason="needs ser2net: apt install ser2net (scripts/install-deps.sh)")


def _labgrid_tools() -> bool:
    try:
        import labgrid.remote.client  # noqa: F401
    except ImportError:
        return False
    return all(shutil.which(t) for t in ("labgrid-coordinator", "labgrid-exporter", "labgrid-client"))


def cli(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mcu_nn.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("farm") / "standin"
    make_standin(d)
    return d


def _wait_listening(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@contextlib.contextmanager
def _process(cmd: list[str], log: Path, **kw):
    """A helper process for the time of the with, its output in ``log``, always ended."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)
        try:
            yield proc
        finally:
            terminate(proc, grace=5)


# ------------------------------------------------------------------ no board needed
def test_rfc2217_urls_get_ign_set_control_and_labgrid_urls_parse(monkeypatch):
    assert resolve_port("rfc2217://10.0.0.5:3001") == "rfc2217://10.0.0.5:3001?ign_set_control"
    assert resolve_port("rfc2217://h:1?logging=debug") == "rfc2217://h:1?logging=debug"
    assert resolve_port("socket://127.0.0.1:4") == "socket://127.0.0.1:4"
    monkeypatch.delenv("LG_COORDINATOR", raising=False)
    assert parse_labgrid_url("labgrid://rack1-f4") == ("127.0.0.1:20408", "rack1-f4")
    assert parse_labgrid_url("labgrid://lab.example:20409/rack1-f4") == ("lab.example:20409", "rack1-f4")
    monkeypatch.setenv("LG_COORDINATOR", "coord:1")
    assert parse_labgrid_url("labgrid://p") == ("coord:1", "p")
    with pytest.raises(McuNnError, match="name a labgrid place"):
        parse_labgrid_url("labgrid://")


def test_every_port_failing_fails_the_run_with_one_result_each(standin):
    """Two dead remote ports: exit 1, one FAILED line each and the verdict; in --json one entry each."""
    dead = [f"rfc2217://127.0.0.1:{free_port()}", f"rfc2217://127.0.0.1:{free_port()}"]
    r = cli("serial-test", str(standin), "--port", *dead)
    assert r.returncode == 1, r.stderr
    lines = r.stdout.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == ["FAILED", "FAILED", "FAILED:"]
    assert lines[-1].startswith("FAILED: 2 of 2 boards failed")
    r = cli("serial-test", str(standin), "--json", "--port", dead[0], "--port", dead[1])   # repeated works too
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["command"] == "serial-test" and out["ok"] is False and out["boards"] == 2
    assert out["failed"] == dead and [e["target"] for e in out["results"]] == dead
    assert all(e["ok"] is False and "cannot open serial port" in e["error"] for e in out["results"])


def test_several_ports_and_boards_together_are_refused(standin):
    r = cli("serial-test", str(standin), "--port", "rfc2217://h:1", "rfc2217://h:2", "--board", BOARD)
    assert r.returncode == 1 and "not both" in r.stderr


def test_unreachable_labgrid_coordinator_is_one_line(standin):
    pytest.importorskip("labgrid.remote.client")
    r = cli("serial-test", str(standin), "--port", f"labgrid://127.0.0.1:{free_port()}/nowhere", timeout=90)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "labgrid coordinator" in r.stderr, r.stderr


# ------------------------------------------------------------------ emulated boards
@pytest.mark.qemu
def test_two_emulated_boards_in_parallel_and_single_board_json_unchanged(standin):
    """--board A B: both firmwares built in parallel (each in firmware/<board>/), both booted in
    their own QEMU; one result each; the single-board --json shape stays as it was."""
    boards = [BOARD, "qemu-mps2-an500"]
    r = cli("serial-test", str(standin), "--board", *boards, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] is True and out["boards"] == 2 and out["passed_boards"] == 2 and out["failed"] == []
    assert [e["target"] for e in out["results"]] == boards
    for e, b in zip(out["results"], boards):
        assert e["board"] == b and e["target_kind"] == "board" and e["error"] is None
        assert e["passed"] == e["sequences"] == 4 and e["whole_firmware"]["flash_bytes"] > 0
        assert firmware_path(standin, b).is_file()
    single = json.loads(cli("serial-test", str(standin), "--board", BOARD, "--json").stdout)
    assert "results" not in single and single["board"] == BOARD and single["passed"] == 4


@pytest.mark.qemu
def test_building_one_board_from_several_threads_does_not_race(tmp_path):
    from mcu_nn.farm import ensure_firmware
    make_standin(tmp_path)
    errors = []

    def build():
        try:
            ensure_firmware(tmp_path, BOARD, log=lambda s: None)
        except Exception as e:       # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and firmware_path(tmp_path, BOARD).is_file()


@pytest.mark.qemu
@pytest.mark.slow
def test_bench_on_two_boards_in_parallel(tmp_path):
    import qmodels as Q
    from mcu_nn.codegen import write_export
    from mcu_nn.quant import quantize
    from mcu_nn.sim import run
    g = Q.make_graph("lstm", input_size=4, hidden=6, seq_len=4, gain=1.0, name="fq")
    q = quantize(g, Q.make_input(g, n=8, seed=2), "int8")
    x = Q.make_input(g, n=2)
    write_export(q, tmp_path / "fq", x, run(q, x))
    r = cli("bench", str(tmp_path / "fq"), "--board", BOARD, "qemu-mps2-an500", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] is True and out["failed"] == [] and out["errors"] == []
    assert sorted(m["board"] for m in out["models"]) == sorted([BOARD, "qemu-mps2-an500"])
    assert all(m["instructions_per_step"] > 0 for m in out["models"])
    r = cli("bench", str(tmp_path / "fq"), "--board", BOARD, "--board", "no-such-board")   # one fails: exit 1
    assert r.returncode == 1 and "FAILED: 1 of 2 boards failed (no-such-board)" in r.stdout, r.stdout + r.stderr
    assert "instr/step" in r.stdout                       # the table of the board that ran


@pytest.mark.qemu
@needs_ser2net
def test_four_emulated_boards_through_ser2net_rfc2217_in_one_command(standin, tmp_path):
    """The must-show: 4 emulated boards, each UART a pty served by ser2net as an RFC 2217 port on
    127.0.0.1, tested in parallel by one `mcu-nn serial-test DIR --port rfc2217://… ×4`."""
    from mcu_nn.farm import PtyBoard
    build_firmware(standin, BOARD, log=lambda s: None)
    elf = firmware_path(standin, BOARD)
    with contextlib.ExitStack() as stack:
        ptys = [stack.enter_context(PtyBoard(elf, BOARD)) for _ in range(4)]
        ports = [free_port() for _ in ptys]
        cfg = tmp_path / "ser2net.yaml"
        cfg.write_text("".join(f"connection: &board{i}\n"
                               f"  accepter: telnet(rfc2217),tcp,127.0.0.1,{p}\n"
                               f"  connector: serialdev,{b.device},115200n81,local\n"
                               for i, (b, p) in enumerate(zip(ptys, ports))))
        ser2net = shutil.which("ser2net") or "/usr/sbin/ser2net"
        stack.enter_context(_process([ser2net, "-n", "-u", "-c", str(cfg), "-P", str(tmp_path / "ser2net.pid")],
                                     tmp_path / "ser2net.log"))
        for p in ports:
            _wait_listening(p)
        urls = [f"rfc2217://127.0.0.1:{p}" for p in ports]
        r = cli("serial-test", str(standin), "--port", *urls, "--json", timeout=180)
        assert r.returncode == 0, r.stderr + (tmp_path / "ser2net.log").read_text()
        out = json.loads(r.stdout)
        assert out["ok"] is True and out["boards"] == 4 and out["passed_boards"] == 4
        assert [e["target"] for e in out["results"]] == urls
        assert all(e["board"] == BOARD and e["passed"] == e["sequences"] == 4 and e["first_mismatch"] is None
                   for e in out["results"])
        r = cli("serial-test", str(standin), "--port", *urls, timeout=180)         # the text: a line each
        assert r.returncode == 0, r.stderr
        summary = r.stdout.strip().splitlines()[-5:]
        assert summary[-1] == "ok: all 4 boards passed"
        assert sorted(ln.split()[1] for ln in summary[:4]) == sorted(urls)


@pytest.mark.qemu
@needs_ser2net
@pytest.mark.skipif(not _labgrid_tools(), reason="needs labgrid: pip install 'mcu-nn[farm]' (scripts/install-deps.sh)")
def test_serial_test_on_a_labgrid_place(standin, tmp_path):
    """A labgrid coordinator and an exporter on 127.0.0.1; the exporter's RawSerialPort is an
    emulated board's pty (served by the exporter's own ser2net when the place is acquired); a
    place matches it; `mcu-nn serial-test DIR --port labgrid://PLACE` acquires, tests, releases."""
    from mcu_nn.farm import PtyBoard
    build_firmware(standin, BOARD, log=lambda s: None)
    coord = f"127.0.0.1:{free_port()}"
    env = {"LG_COORDINATOR": coord}
    client_env = {**os.environ, **env}

    def lgc(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["labgrid-client", *args], capture_output=True, text=True, timeout=30, env=client_env)

    with contextlib.ExitStack() as stack:
        ptys = [stack.enter_context(PtyBoard(firmware_path(standin, BOARD), BOARD)) for _ in range(2)]
        stack.enter_context(_process(["labgrid-coordinator", "-l", coord], tmp_path / "coordinator.log",
                                     cwd=tmp_path))
        _wait_listening(int(coord.rsplit(":", 1)[1]))
        (tmp_path / "exporter.yaml").write_text("".join(f"mcunn-board{i}:\n  RawSerialPort:\n    port: {p.device}\n"
                                                        f"    speed: 115200\n" for i, p in enumerate(ptys)))
        stack.enter_context(_process(["labgrid-exporter", "-c", coord, "-n", "lab1", "--hostname", "127.0.0.1",
                                      str(tmp_path / "exporter.yaml")], tmp_path / "exporter.log", cwd=tmp_path))
        deadline = time.monotonic() + 30
        while "lab1/mcunn-board1/NetworkSerialPort" not in lgc("resources").stdout:
            assert time.monotonic() < deadline, (tmp_path / "exporter.log").read_text()
            time.sleep(0.5)
        for i, place in enumerate(("mcunn-f4", "mcunn-f4b")):
            assert lgc("-p", place, "create").returncode == 0
            assert lgc("-p", place, "add-match", f"lab1/mcunn-board{i}/NetworkSerialPort").returncode == 0
        r = cli("serial-test", str(standin), "--port", "labgrid://mcunn-f4", "--json", env=env, timeout=120)
        assert r.returncode == 0, r.stderr + (tmp_path / "exporter.log").read_text()
        out = json.loads(r.stdout)
        assert out["ok"] is True and out["board"] == BOARD and out["passed"] == 4
        assert "acquired place mcunn-f4" in r.stderr and "released place mcunn-f4" in r.stderr
        assert "acquired: None" in lgc("-p", "mcunn-f4", "show").stdout      # released afterwards
        # two places in parallel, one named with the coordinator's address in the URL
        r = cli("serial-test", str(standin), "--port", f"labgrid://{coord}/mcunn-f4", "labgrid://mcunn-f4b",
                "--json", timeout=120, env=env)
        assert r.returncode == 0, r.stderr + r.stdout
        out = json.loads(r.stdout)
        assert out["passed_boards"] == 2 and all(e["passed"] == 4 for e in out["results"])
        assert all("acquired: None" in lgc("-p", p, "show").stdout for p in ("mcunn-f4", "mcunn-f4b"))
        # a place someone else holds is refused in one line, not waited for
        hold = lgc("-p", "mcunn-f4", "acquire")
        assert hold.returncode == 0, hold.stderr
        r = cli("serial-test", str(standin), "--port", "labgrid://mcunn-f4", env={**env, "LG_USERNAME": "other"},
                timeout=120)
        assert r.returncode == 1 and "is acquired by" in r.stderr, r.stderr
        lgc("-p", "mcunn-f4", "release")
