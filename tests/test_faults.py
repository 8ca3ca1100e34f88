"""A bad link never gives a false pass: a proxy that corrupts, drops or duplicates bytes sits
between the client and the board; a firmware of another export is refused by hash; a board
that never answers times out with a clear message."""
from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time

import numpy as np
import pytest

from fixtures.make_standin import make_standin
from lossy_proxy import LossyProxy
from mcu_nn.build import build_firmware
from mcu_nn.device import Emulator
from mcu_nn.onboard import serial_test
from mcu_nn.errors import McuNnError
from mcu_nn.flash import flash

HAVE_QEMU = bool(shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc"))
quiet = dict(log=lambda s: None, progress=False)


@pytest.fixture(scope="module")
def board_port(tmp_path_factory):
    """The stand-in on QEMU (or the host board when QEMU is absent), served on TCP."""
    if not HAVE_QEMU:
        pytest.skip("qemu-system-arm or arm-none-eabi-gcc missing")
    d = tmp_path_factory.mktemp("standin")
    make_standin(d, steps=10, vectors=6)
    elf = build_firmware(d, "qemu-mps2-an386", log=lambda s: None).elf
    with Emulator(elf, "qemu-mps2-an386") as emu:
        yield d, emu.port


@pytest.mark.qemu
@pytest.mark.parametrize("mode", ["corrupt", "drop", "duplicate"])
@pytest.mark.parametrize("tamper", [False, True])
def test_faulty_link_never_gives_a_false_pass(board_port, tmp_path, mode, tamper):
    d, port = board_port
    if tamper:      # the board is right and the export says otherwise: must never pass
        for f in d.iterdir():
            if f.is_file():
                shutil.copy(f, tmp_path / f.name)
        z = dict(np.load(tmp_path / "test_vectors.npz"))
        z["expected"][5, 9, 0] ^= 1
        np.savez(tmp_path / "test_vectors.npz", **z)
        d = tmp_path
    rate = {"corrupt": dict(corrupt=0.004), "drop": dict(byte_drop=0.004), "duplicate": dict(byte_duplicate=0.004)}[mode]
    proxy = LossyProxy(("127.0.0.1", port), **rate, seed=2 * ["corrupt", "drop", "duplicate"].index(mode) + tamper)
    try:
        r = serial_test(d, port=proxy.url, timeout=0.3, retries=8, allow_modified=tamper, **quiet)
    except McuNnError as e:          # a clear failure is acceptable, a false pass is not
        assert "no valid reply" in str(e) or "malformed" in str(e), e
        return
    finally:
        proxy.close()
    assert proxy.stats[{"corrupt": "corrupted", "drop": "bytes_dropped", "duplicate": "bytes_duplicated"}[mode]] > 0
    if tamper:
        assert not r.ok and "vector 5" in r.first_mismatch
    else:
        assert r.ok, r.first_mismatch
        assert r.retransmissions > 0


def test_firmware_of_another_export_is_refused_by_hash(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_standin(a, name="kws", seed=1)
    make_standin(b, name="kws", seed=2)
    elf = build_firmware(a, "host", log=lambda s: None).elf
    with Emulator(elf, "host") as emu:
        with pytest.raises(McuNnError, match=r"runs model 'kws' \(sha256 .*\), not the export .*b.*mcu-nn build"):
            serial_test(b, port=emu.url, **quiet)


def test_board_that_never_answers_times_out_clearly(tmp_path):
    make_standin(tmp_path)
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    conns = []
    threading.Thread(target=lambda: conns.append(srv.accept()), daemon=True).start()
    t = time.monotonic()
    try:
        with pytest.raises(McuNnError, match=r"no valid reply to HELLO after 3 attempts \(no reply within 0.2 s\)"):
            serial_test(tmp_path, port=f"socket://127.0.0.1:{port}", timeout=0.2, retries=2, **quiet)
    finally:
        srv.close()
        for c, _ in conns:
            c.close()
    assert time.monotonic() - t < 5


def test_a_port_that_does_not_exist(tmp_path):
    make_standin(tmp_path)
    with pytest.raises(McuNnError, match="serial port /dev/ttyNOPE does not exist"):   # + the ports that do
        serial_test(tmp_path, port="/dev/ttyNOPE", **quiet)


def _marked_elf(tmp_path, board: str):
    """A host ELF carrying the board note that mcu-nn build writes for ``board``."""
    from mcu_nn.boards import get_board
    from mcu_nn.build import board_note_c
    src = tmp_path / f"{board}.c"
    src.write_text(board_note_c(get_board(board)) + "int main(void) { return 0; }\n")
    subprocess.run(["cc", str(src), "-o", str(tmp_path / f"{board}.elf")], check=True)
    return tmp_path / f"{board}.elf"


def test_flash_without_a_probe_tool_is_one_clear_line(tmp_path, monkeypatch):
    nucleo, qemu = _marked_elf(tmp_path, "nucleo-f411re"), _marked_elf(tmp_path, "qemu-mps2-an386")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(McuNnError, match=r"needs pyocd, which is not installed: pip install 'mcu-nn\[hw\]' "
                                         r"\(or apt install openocd\)"):
        flash(nucleo, "nucleo-f411re", log=lambda s: None)
    with pytest.raises(McuNnError, match="pass --listen PORT"):
        flash(qemu, "qemu-mps2-an386", log=lambda s: None)
