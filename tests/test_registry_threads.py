"""The cell and op registries fill on first use; threads exporting at once (bench/run.py runs
boards in a thread pool) must all see the whole registry, never a half-filled one."""
from __future__ import annotations

import subprocess
import sys

PROGRAM = """
import threading
from mcu_nn.cells import cell_of
from mcu_nn.ops import unit_of
from mcu_nn.ops.elementwise import Elementwise
errors = []
start = threading.Barrier(16)
def use(i):
    start.wait()
    try:
        cell_of(("lstm", "gru", "rnn_tanh", "peephole_lstm")[i % 4])
        assert unit_of(Elementwise.__new__(Elementwise)) is not None
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=use, args=(i,)) for i in range(16)]
for t in threads: t.start()
for t in threads: t.join()
print(len(errors), errors[:1])
"""


def test_first_use_from_many_threads_sees_every_cell_and_op():
    for _ in range(5):              # each run is a fresh interpreter: the first use is the race
        out = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, check=True).stdout
        assert out.startswith("0 "), out
