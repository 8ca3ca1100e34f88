"""bench/cmsis_nn/results.json (CMSIS-NN's LSTM kernels on our emulated cores, issue 14): the
checked-in figures that bench/run.py reads parse and cover every emulated Arm core. Needs neither
CMSIS-NN nor an emulator."""
from __future__ import annotations

import json
from pathlib import Path

from mcu_nn.boards import BOARDS

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "cmsis_nn" / "results.json"
KEYS = [f"{k} {s}" for k in ("arm_lstm_unidirectional_s16", "arm_lstm_unidirectional_s8") for s in ("16x32", "40x64")]


def test_results_json_covers_every_emulated_arm_core():
    doc = json.loads(RESULTS.read_text())
    assert len(doc["cmsis_nn_commit"]) == 40 and doc["gcc"] and doc["qemu"] and doc["method"]
    arm = {b.name for b in BOARDS.values() if b.emulated and b.emulator.binary == "qemu-system-arm"}
    assert set(doc["results"]) == arm
    for board, r in doc["results"].items():
        assert sorted(r) == sorted(KEYS)
        for f in r.values():
            assert f["instructions_per_step"] > 0 and f["flash_bytes"] == f["cmsis_code_bytes"] + f["constants_bytes"]
            assert f["ram_bytes"] == f["state_bytes"] + f["stack_bytes"] > 0
            assert f["code_path"] == doc["boards"][board]["code_path"]
    # the Helium core runs CMSIS-NN's MVE code, the DSP cores its DSP code
    assert doc["boards"]["qemu-mps3-an547"]["code_path"] == "mve"
    assert {doc["boards"][b]["code_path"] for b in arm if BOARDS[b].arch.dsp and b != "qemu-mps3-an547"} == {"dsp"}
    # all cores computed the same outputs
    for key in KEYS:
        assert len({r[key]["outputs_sha"] for r in doc["results"].values()}) == 1
