"""mcu-nn bench: the CLI entry's table and --json, figures that add up, clear one-line errors."""
from __future__ import annotations

import json

import numpy as np

import pytest

import qmodels as Q
from mcu_nn.bench import BOARDS, bench_command, bench_export, ticks_to_instructions
from mcu_nn.codegen import write_export
from mcu_nn.errors import McuNnError
from mcu_nn.quant import quantize
from mcu_nn.sim import run

qemu = pytest.mark.qemu                  # skipped without the emulator (tests/conftest.py)
KEYS = ["instructions_per_step", "macs_per_step", "instructions_per_mac", "flash_bytes", "ram_bytes", "board"]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    g = Q.make_graph("lstm", input_size=8, hidden=12, seq_len=6, gain=1.0, name="bq")
    q = quantize(g, Q.make_input(g, n=8, seed=2), "int8")
    x = Q.make_input(g, n=3)
    d = tmp_path_factory.mktemp("bench") / "bq"
    write_export(q, d, x, run(q, x))
    return d


def test_tick_conversion_is_exact_at_shift_10():
    # 25 MHz timer, 1024 ns per instruction: 25.6 ticks per instruction
    assert ticks_to_instructions(256) == 10.0


@qemu
def test_json_has_the_issue_keys_and_consistent_figures(export_dir, capsys):
    assert bench_command(export_dir, "qemu-mps2-an386", as_json=True) == 0
    doc = json.loads(capsys.readouterr().out.strip())
    assert doc["schema"] == 1 and doc["command"] == "bench" and len(doc["models"]) == 1
    d = doc["models"][0]
    assert list(d)[:6] == KEYS
    assert d["flash_bytes"] == d["model_code_bytes"] + d["model_constants_bytes"] + d["shared_runtime_bytes"]
    assert d["model_constants_bytes"] > 4 * 12 * (8 + 12)         # the int8 LSTM weights at least
    assert d["macs_per_step"] == 4 * 12 * (8 + 12)
    assert d["instructions_per_mac"] == pytest.approx(d["instructions_per_step"] / d["macs_per_step"], abs=1e-3)
    assert d["ram_bytes"] == d["state_bytes"] + d["stack_bytes"] and d["stack_bytes"] > 0
    assert 0 < d["flash_bytes"] < 20000 and d["board"] == "qemu-mps2-an386"
    # float inputs: bq_step_f32 (outputs checked on every vector) = the step + a few instructions a value
    assert d["instructions_per_step"] < d["instructions_per_step_f32"] < d["instructions_per_step"] + 10 * 8 + 40
    assert d["quantize_input_instructions"] > 8 * 20          # the C quantiser, element by element


@qemu
def test_float_inputs_with_nan_and_inf_build_and_match(tmp_path):
    # NaN and inf have no C literal: the bench's float vectors still compile, and <name>_step_f32
    # quantises them as the simulator did (NaN -> 0, inf -> saturated)
    g = Q.make_graph("lstm", input_size=5, hidden=6, seq_len=4, gain=1.0, name="nf")
    q = quantize(g, Q.make_input(g, n=8, seed=2), "int8")
    x = Q.make_input(g, n=2)
    x[0, 1, :4] = [np.nan, np.inf, -np.inf, -0.0]
    d = tmp_path / "nf"
    write_export(q, d, x, run(q, x))
    r = bench_export(d, "qemu-mps2-an386")
    assert r.instructions_per_step_f32 > r.instructions_per_step > 0


@qemu
def test_step_f32_outputs_are_checked(export_dir, monkeypatch):
    # a firmware whose bq_step_f32 disagreed with the simulator fails the bench
    import mcu_nn.bench as bench
    real = bench.run_bench

    def drop_first(elf, board, timeout=300):
        lines = real(elf, board, timeout).split("\n")
        f = next(i for i, ln in enumerate(lines) if ln.startswith("F 0 "))
        vals = lines[f].split()
        vals[2] = "%04x" % ((int(vals[2], 16) + 1) & 0xFFFF)
        lines[f] = " ".join(vals)
        return "\n".join(lines)
    monkeypatch.setattr(bench, "run_bench", drop_first)
    with pytest.raises(McuNnError, match="step_f32 on the board differs"):
        bench_export(export_dir, "qemu-mps2-an386")


@qemu
def test_table_output_and_deterministic_count(export_dir, capsys):
    assert bench_command(export_dir, "qemu-mps2-an386") == 0
    out = capsys.readouterr().out
    assert "instr/step" in out and "bq" in out and "bit-exact" in out
    assert "float-input step instr" in out and "quantize_input instr/step" in out
    assert all(w in out for w in ("model code B", "model constants B", "shared runtime B"))
    a = bench_export(export_dir, "qemu-mps2-an386")
    b = bench_export(export_dir, "qemu-mps2-an386")
    assert a.instructions_per_step == b.instructions_per_step      # -icount: exact, repeatable


def test_unknown_board_is_one_clear_line(export_dir):
    with pytest.raises(McuNnError, match="emulated boards") as e:
        bench_command(export_dir, "nucleo-f411re")
    assert "\n" not in str(e.value) and all(b in str(e.value) for b in BOARDS)


def test_missing_export_is_one_clear_line(tmp_path):
    with pytest.raises(McuNnError, match="does not exist") as e:
        bench_command(tmp_path / "nope", "qemu-mps2-an386")
    assert "\n" not in str(e.value)


def test_benchmark_set_script_builds_every_row(tmp_path):
    """bench/run.py (the table in bench/RESULTS.md): every layer it measures, the fused kernels'
    and the cell units', still builds and exports (the measuring itself needs minutes of QEMU)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "bench" / "run.py"
    spec = importlib.util.spec_from_file_location("bench_run", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    kinds = {(k, i, h) for k, i, h in mod.SHAPES} | {(k, i, h) for pair in mod.CELL_PAIRS for k in pair
                                                     for i, h in mod.CELL_SHAPES}
    for kind, i, h in sorted(kinds):
        d = mod.export(kind, i, h, "int8", "packed", tmp_path)
        assert (d / "model.json").is_file()
