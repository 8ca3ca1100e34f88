"""bench/run.py, the generator of bench/RESULTS.md, on fake measurements (no emulator): the
tables' units and columns, CMSIS-NN figures (reproduced over published), the goals table, "does
not fit" against a failure, and the exit status."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from mcu_nn.bench import BenchResult

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("bench_run_results", ROOT / "bench" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fake(job, instr: int) -> BenchResult:
    macs = 6144 if job.h == 32 else 26624
    avr = job.board.startswith("avr-")
    return BenchResult(f"{job.kind}{job.i}x{job.h}", job.precision, job.board, "portable" if job.portable else "simd",
                       instr, macs, round(instr / macs, 3), 11000, 300, 192, 108, job.layout, 4,
                       "cycles" if avr else "instructions",
                       instructions_per_step_f32=0 if avr or job.precision == "float32" else instr + 106,
                       quantize_input_instructions=0 if avr or job.precision == "float32" else 642)


def outcomes(gen, jobs, failing=()):
    out = {}
    for n, j in enumerate(jobs):
        if (j.board, j.h, j.precision) in failing:
            out[j] = gen.Outcome(None, *gen.classify("bench firmware printed no outputs | rebuild it"))
        elif j.board == "avr-atmega328p" and j.h == 64:
            out[j] = gen.Outcome(None, *gen.classify("ld: region `text' overflowed by 9444 bytes"))
        else:
            out[j] = gen.Outcome(fake(j, 5000 + 1000 * n))
    return out


def test_classify(gen):
    assert gen.classify("x: region `text' overflowed by 9444 bytes") == ("does not fit (flash overflowed by 9,444 B)", False)
    assert gen.classify("region `data' overflowed by 12 bytes")[0].startswith("does not fit (RAM")
    assert gen.classify("error: size of array ‘lstm_w’ is too large") == (
        "does not build (`lstm_w` is over avr-gcc's 32 KiB object limit)", False)
    text, fits = gen.classify("bench firmware hit a CPU fault")
    assert text.startswith("FAILED") and fits


def test_document(gen, tmp_path):
    boards = gen.board_order(["qemu-mps2-an386", "qemu-mps2-an385", "qemu-mps3-an547", "avr-atmega328p"])
    shapes = [("lstm", 16, 32), ("lstm", 40, 64)]
    jobs = gen.core_jobs(boards, shapes)
    assert not any(j.precision == "float32" for j in jobs if j.board in ("qemu-mps2-an385", "avr-atmega328p"))
    assert any(j.portable for j in jobs if j.board == "qemu-mps2-an386")
    out = outcomes(gen, jobs, failing={("qemu-mps2-an385", 64, "int16")})
    m3_16 = out[gen.Job("lstm", 16, 32, "int8", "packed", "qemu-mps2-an385")].result
    js = tmp_path / "results.json"
    js.write_text(json.dumps({"cmsis_nn_commit": "abc123", "results": {
        "qemu-mps2-an385": {"s16 16x32": {"instructions_per_step": 3 * m3_16.instructions_per_step,
                                          "flash_bytes": 9000}, "s8 40x64": {"flash_bytes": 1}},
        "qemu-mps2-an386": "garbage"}}))
    cmsis, commit = gen.load_cmsis(js)
    assert commit == "abc123" and cmsis[("qemu-mps2-an385", "s16", 16, 32)][1:3] == (9000, None)
    assert ("qemu-mps2-an385", "s8", 40, 64) not in cmsis          # no figure: ignored
    assert cmsis[("qemu-mps2-an386", "s16", 16, 32)][0] == 37070    # published, kept
    env = {k: k for k in ("qemu-system-arm", "qemu-system-riscv32", "arm-none-eabi-gcc", "riscv64-unknown-elf-gcc",
                          "avr-gcc", "simavr", "numpy", "commit", "date", "host")}
    sim = {"wall": 90_000.0, "cpu": 120_000.0, "batch": 256, "steps": 50, "repeat": 3}
    text = gen.render(out, boards, shapes, cmsis, commit, sim, env, 12.0, "python bench/run.py", 2)
    m4 = out[gen.Job("lstm", 16, 32, "int8", "packed", "qemu-mps2-an386")].result
    assert f"{37070 / m4.instructions_per_step:.2f}x vs `_s16`" in text and "published, issue 4" in text
    assert "(reproduced)" in text or "`_s16`, reproduced" in text
    assert "| cycles/step | cycles/MAC |" in text and "| instr/step |" in text
    assert "does not fit (flash overflowed by 9,444 B)" in text
    assert "## Failures in this run" in text and "FAILED: bench firmware" in text
    goals = text.split("## Goals")[1].split("\n## ")[0]
    assert "3.00x" in goals and "| met |" in goals                 # M3 vs the reproduced _s16
    assert "(`_step_f32`: the step" in goals and "`_quantize_input` calls would add 642" in goals and "120,000 sequence-steps/s" in goals
    assert "(no GRU in CMSIS-NN)" not in text and "(no FPU)" in text
    for line in text.splitlines():                                  # every table row is whole
        if line.startswith("|") and not line.startswith("|---"):
            assert line.endswith("|")


def test_main_exit_status_and_file(gen, tmp_path, monkeypatch):
    def measure(jobs, workers, tmp, **kw):
        return outcomes(gen, jobs, failing={("qemu-mps2-an386", 32, "int16")})
    monkeypatch.setattr(gen, "measure", measure)
    f = tmp_path / "R.md"
    assert gen.main(["--board", "qemu-mps2-an386", "--shape", "lstm:16x32", "--out", str(f)]) == 1
    assert "FAILED" in f.read_text() and "# mcu-nn benchmark results" in f.read_text()
    monkeypatch.setattr(gen, "measure", lambda jobs, workers, tmp, **kw: outcomes(gen, jobs))
    assert gen.main(["--cores", "--board", "qemu-mps2-an386", "--shape", "lstm:16x32", "--out", str(f)]) == 0


def test_measure_reports_each_job(gen, tmp_path, capsys):
    jobs = [gen.Job("lstm", 16, 32, p, "packed", "qemu-mps2-an386") for p in ("int8", "int16")]
    made = []

    def exporter(*model):
        made.append(model)
        return tmp_path

    def bench(d, board, portable=False):
        if portable:
            raise RuntimeError("boom")
        return fake(jobs[0], 1234)
    out = gen.measure(jobs + [gen.Job("lstm", 16, 32, "int8", "packed", "qemu-mps2-an386", True)], 2, tmp_path,
                      bench=bench, exporter=exporter)
    assert len(made) == 2                                           # one export per model
    assert sum(o.failed for o in out.values()) == 1
    assert capsys.readouterr().out.count("\n") == 3


def test_the_reproduced_cmsis_nn_figures_are_read(gen):
    """bench/cmsis_nn/results.json (the harness's real output) fills every Arm core's CMSIS-NN
    column, as the reproduction and not the published figure."""
    cmsis, commit = gen.load_cmsis()
    assert commit
    for board in ("qemu-microbit", "qemu-mps2-an385", "qemu-mps2-an386", "qemu-mps2-an500", "qemu-mps2-an505",
                  "qemu-mps3-an547"):
        for kernel in ("s16", "s8"):
            for i, h in ((16, 32), (40, 64)):
                instructions, flash, ram, source = cmsis[(board, kernel, i, h)]
                assert instructions > 0 and flash > 0 and ram > 0 and source.startswith("reproduced"), (board, kernel)
