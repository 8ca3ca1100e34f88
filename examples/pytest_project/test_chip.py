"""A firmware team's own tests of the model on its boards, with the fixtures of mcu-nn's pytest
plugin (installed with mcu-nn: no conftest.py, no import of the plugin). Run, e.g.:

    pytest examples/pytest_project --mcunn-export build/har --mcunn-board qemu-mps2-an386 --junitxml out.xml

Each test that uses a board runs once per --mcunn-board / --mcunn-port given."""
import json

import numpy as np


def test_the_chip_still_computes_what_the_simulator_says(mcunn_check):
    r = mcunn_check()                      # every test vector of the export, RUN and STEP, 0 differing bits
    assert r.passed == r.sequences > 0


def test_the_board_runs_the_exported_model(mcunn_client, mcunn_export):
    manifest = json.loads((mcunn_export / "model.json").read_text())
    info = mcunn_client.info               # HELLO was done, the model hash checked against the export
    assert info.name == manifest["name"] and info.precision == manifest["precision"]


def test_streaming_from_reset_is_deterministic(mcunn_client):
    x = np.zeros(mcunn_client.info.input_size)
    mcunn_client.reset()
    first = [mcunn_client.step(x)[0] for _ in range(3)]
    mcunn_client.reset()
    again = [mcunn_client.step(x)[0] for _ in range(3)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
