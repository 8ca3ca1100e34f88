"""The soak (``mcu-nn serial-test DIR --soak N``, docs/soak.md): seeded random sequences through
the emulated Cortex-M4, pipelined, each compared with the simulator; a wrong expected output is
a mismatch (exit 1), and a lossy link (tests/lossy_proxy.py) costs retransmissions, never a
false pass. The 100,000-inference figures come from scripts/soak.py."""
from __future__ import annotations

import numpy as np
import pytest

import qmodels as Q
from lossy_proxy import LossyProxy
from mcu_nn import cli
from mcu_nn.build import build_firmware
from mcu_nn.codegen import write_export
from mcu_nn.device import soak as soak_module
from mcu_nn.errors import McuNnError
from mcu_nn.onboard import running_board, serial_test, soak
from mcu_nn.sim import run
from test_json import check

BOARD = "qemu-mps2-an386"
quiet = dict(log=lambda s: None, progress=False)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """An int8 LSTM (4 features, 10 steps, per-step outputs) with its firmware built."""
    from mcu_nn.quant import quantize
    g = Q.make_graph("lstm", seq_len=10, hidden=12, input_size=4, head=("linear:3",))
    calib = Q.make_input(g, n=16, seed=7)
    q = quantize(g, calib, "int8")
    d = tmp_path_factory.mktemp("soak") / "lstm"
    write_export(q, d, calib[:4], run(q, calib[:4]))
    build_firmware(d, BOARD, log=lambda s: None)
    return d


def _wrong_simulator(monkeypatch, row: int = 5):
    """The simulator, but one value of sequence ``row`` of its first batch is off by one."""
    real = soak_module._simulate
    calls = []

    def wrong(q, x):
        y = real(q, x).copy()
        if not calls:
            y[row].flat[3] += 1
        calls.append(len(x))
        return y
    monkeypatch.setattr(soak_module, "_simulate", wrong)


@pytest.mark.qemu
def test_soak_of_200_sequences_passes(export):
    lines = []
    r = soak(export, 200, board=BOARD, seed=3, log=lines.append, progress=False, report_every=0.5)
    assert r.ok and r.mismatches == 0 and r.sequences == r.requested == 200, r.first_mismatch
    # every 64th is 20 x 10 = 200 steps long (indices 63, 127, 191); the second goes by STEP
    assert (r.seq_len, r.long_steps, r.long_sequences, r.step_sequences) == (10, 200, 3, 1)
    assert r.steps == 197 * 10 + 3 * 200
    assert r.retransmissions == 0 and r.window == 8192
    assert r.cycle_unit == "instructions" and r.mean_cycles_per_step > 100
    assert r.rss_peak_kb >= r.rss_start_kb > 0
    assert any(ln.startswith("soak: ") and "inferences/s" in ln for ln in lines)     # the progress line
    assert any(ln.startswith("ok: soak of 200/200 sequences, 2,570 inferences") for ln in lines)
    d = r.as_dict()
    assert d["inferences"] == 2570 and d["mismatches"] == 0 and d["soak"] is True


@pytest.mark.qemu
def test_soak_is_reproducible_and_one_request_at_a_time_agrees(export):
    with running_board(export, board=BOARD, log=lambda s: None) as url:
        a = soak(export, 70, port=url, seed=9, window=0, **quiet)         # stop-and-wait, per-frame retries
        b = soak(export, 70, port=url, seed=9, **quiet)
    assert a.ok and b.ok and a.window == 0 and a.steps == b.steps == 69 * 10 + 200


@pytest.mark.qemu
def test_wrong_expected_output_is_a_mismatch_and_stops(export, monkeypatch):
    _wrong_simulator(monkeypatch, row=5)
    r = serial_test(export, board=BOARD, soak=200, batch=50, **quiet)
    assert not r.ok and r.mismatches == 1 and r.sequences == 50      # stopped after the first batch
    assert r.first_mismatch.startswith("sequence 5 (10 steps via RUN): 1 of 30 values differ at index (1, 0)")
    assert "board:" in r.first_mismatch and "simulator:" in r.first_mismatch


@pytest.mark.qemu
def test_cli_soak_mismatch_exits_1(export, monkeypatch, capsys):
    _wrong_simulator(monkeypatch, row=7)
    assert cli.main(["serial-test", str(export), "--soak", "200", "--board", BOARD]) == 1
    out = capsys.readouterr().out
    assert "FAILED: soak of" in out and "first mismatch: sequence 7 (10 steps via RUN)" in out
    assert "board:" in out and "simulator:" in out


@pytest.mark.qemu
def test_cli_soak_json(export, capsys):
    import json
    assert cli.main(["serial-test", str(export), "--soak", "100", "--seed", "2", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    check(d, "soak")                                        # docs/json.md's table
    assert d["command"] == "soak" and d["soak"] and d["ok"] and d["sequences"] == 100
    assert d["inferences"] == 99 * 10 + 1 * 200 and d["seed"] == 2 and d["mismatches"] == 0


def test_soak_arguments_are_checked(tmp_path):
    with pytest.raises(McuNnError, match="leave out --inputs"):
        serial_test(tmp_path, port="socket://127.0.0.1:1", soak=5, inputs=np.zeros((1, 3, 4)), **quiet)
    with pytest.raises(McuNnError, match="at least 1 sequence"):
        soak(tmp_path, 0, port="socket://127.0.0.1:1", **quiet)


# ----------------------------------------------------------------------------- slow: more sequences, a lossy link
@pytest.mark.slow
@pytest.mark.qemu
def test_soak_of_2000_sequences_clean_then_lossy(export):
    """2,000 sequences clean (26,000 inferences), then 400 through a link that drops 1% of the
    frames, duplicates 0.5% and corrupts 1 byte in 2,000, both ways: every loss is retried
    (counted), nothing differs, host memory stays flat."""
    with running_board(export, board=BOARD, log=lambda s: None) as url:
        clean = soak(export, 2000, port=url, seed=1, **quiet)
        assert clean.ok and clean.steps == 1969 * 10 + 31 * 200 and clean.retransmissions == 0
        assert clean.rss_growth_kb < 8 * 1024
        port = int(url.rsplit(":", 1)[1])
        with LossyProxy(("127.0.0.1", port), drop=0.01, duplicate=0.005, corrupt=0.0005, seed=4) as proxy:
            lossy = soak(export, 400, port=proxy.url, seed=2, timeout=0.3, retries=10, **quiet)
    assert lossy.ok and lossy.mismatches == 0 and lossy.sequences == 400, lossy.first_mismatch
    assert proxy.stats["dropped"] > 0 and proxy.stats["corrupted"] > 0 and proxy.stats["duplicated"] > 0
    assert lossy.retransmissions > 0 and lossy.sequences_resent > 0 and lossy.link_faults > 0


@pytest.mark.slow
@pytest.mark.qemu
def test_lossy_link_never_passes_a_wrong_output(export, monkeypatch):
    """Through the lossy link, an expected output that is wrong is still found: a retried frame
    is compared like any other."""
    _wrong_simulator(monkeypatch, row=40)
    with running_board(export, board=BOARD, log=lambda s: None) as url:
        port = int(url.rsplit(":", 1)[1])
        with LossyProxy(("127.0.0.1", port), drop=0.02, corrupt=0.001, seed=5) as proxy:
            r = soak(export, 200, port=proxy.url, timeout=0.3, retries=10, **quiet)
    assert not r.ok and r.mismatches == 1 and r.first_mismatch.startswith("sequence 40 ")
    assert r.retransmissions > 0


def test_cli_soak_takes_one_board(tmp_path, capsys):
    assert cli.main(["serial-test", str(tmp_path), "--soak", "5", "--board", BOARD, "qemu-mps2-an385"]) == 1
    assert "--soak runs on one board or port at a time" in capsys.readouterr().err
