"""The cell and op registries fill on first use; threads exporting at once (bench/run.py runs
boards in a thread pool) must all see the whole registry, never a half-filled one."""
from __future__ import annotations

import subprocess
import sys

# each thread's first use, then what it sees: the number of cells and of op types registered
PROGRAM = """
import sys, threading
from mcu_nn import cells, ops
threads_n = int(sys.argv[1])
seen, start = [], threading.Barrier(threads_n)
def use(i):
    start.wait()
    try:
        cells.cell_of(("lstm", "gru", "rnn_tanh", "peephole_lstm")[i % 4])
        ops.unit_of(object())                       # loads every op module; object() has no unit
        seen.append((len(cells.cells()), len(ops._UNITS)))
    except Exception as e:
        seen.append(repr(e))
threads = [threading.Thread(target=use, args=(i,)) for i in range(threads_n)]
for t in threads: t.start()
for t in threads: t.join()
print(sorted(set(map(str, seen))))
"""


def _run(threads: int) -> str:
    return subprocess.run([sys.executable, "-c", PROGRAM, str(threads)], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_first_use_from_many_threads_sees_every_cell_and_op():
    whole = _run(1)                    # one thread: the whole registry, e.g. ['(6, 31)']
    assert whole.startswith("['(") and whole.count("(") == 1, whole
    for _ in range(5):                 # each run is a fresh interpreter: the first use is the race
        assert _run(16) == whole
