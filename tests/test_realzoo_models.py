"""The real-world-style zoo (tests/realzoo) itself: every case builds deterministically in eval
mode, runs its forward on its example inputs, has calibration/held-out data in the documented
layout, and saves in exactly the formats it lists. No mcu-nn calls (scripts/zoo_survey.py does those)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import realzoo
from realzoo import CASES, FORMATS, ZooCase


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_registry_covers_both_issues() -> None:
    assert len(CASES) >= 27
    assert {c.issue for c in CASES} == {8, 9}
    assert all(set(c.formats) <= set(FORMATS) and c.formats for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case(case: ZooCase, tmp_path: Path) -> None:
    model = case.build()
    assert not model.training
    again = case.build()
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), f"{k} differs between two builds: seed the model"
    with torch.no_grad():
        model(*case.example_inputs())

    for part in (case.calib, case.heldout):
        data = part(3, 0)
        assert set(case.input_names) <= set(data)
        x = data["x"]
        assert x.shape[0] == 3 and (x.ndim == 3 and x.dtype == np.float32 or x.ndim == 2 and x.dtype == np.int64)
        assert all(v.shape[0] == 3 for v in data.values())
    assert len(case.input_shape()) in (1, 2)

    for fmt in FORMATS:
        path = tmp_path / f"{case.name}.{fmt}"
        if fmt in case.formats:
            realzoo.save(case, fmt, path)
            assert path.stat().st_size > 0
        else:                                  # the record must stay honest: unlisted formats really fail
            with pytest.raises(Exception):
                realzoo.save(case, fmt, path)
