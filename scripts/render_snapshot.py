"""Snapshot what mcu-nn produces for a fixed set of models, so a refactor can prove it changes nothing.

    PYTHONPATH=. python3 scripts/render_snapshot.py /tmp/before
    ... refactor ...
    PYTHONPATH=. python3 scripts/render_snapshot.py /tmp/after && diff -r /tmp/before /tmp/after

For each model (the toy graphs of tests/qmodels.py, torch models of tests/zoo.py and a handful of
tests/realzoo cases, each through the frontend) and each precision (int8 with both weight layouts,
int16, float32) it writes the generated C (<name>.h / <name>.c) and one line per model in
``sim.txt``: sha256 of the simulator's outputs, of its trace (gates, c, h: what calibration and the
report read), of the calibration ranges and of the quantisation report's numbers. The QAT forward
of a few int8/int16 models is hashed too (it must equal the integer simulator), and the runtime
header is written once.
"""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from mcu_nn.codegen.emit import emit, render_runtime  # noqa: E402
from mcu_nn.ir import Graph  # noqa: E402
from mcu_nn.quant import quantize  # noqa: E402
from mcu_nn.sim import run, run_float  # noqa: E402
from mcu_nn.sim.float_sim import run_float64  # noqa: E402

PRECISIONS = ("int8", "int16", "float32")


def _digest(obj) -> str:
    h = hashlib.sha256()
    if isinstance(obj, dict):
        for k in sorted(obj):
            h.update(k.encode())
            h.update(_digest(obj[k]).encode())
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    else:
        h.update(json.dumps(obj, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def toy_graphs() -> dict[str, tuple[Graph, np.ndarray]]:
    from qmodels import make_graph, make_input
    specs = {
        "lstm": dict(kind="lstm"),
        "lstm_bi_last": dict(kind="lstm", bidirectional=True, readout="last", head=("linear:3",)),
        "lstm_proj": dict(kind="lstm", proj=4, layers=2, readout="final:0"),
        "lstm_vocab": dict(kind="lstm", vocab=11, readout="last", head=("linear:5", "tanh")),
        "lstm_nobias_h16": dict(kind="lstm", bias=False, hidden=16, input_size=8, head=("sigmoid",)),
        "gru": dict(kind="gru"),
        "gru_bi_final": dict(kind="gru", bidirectional=True, readout="final:0,1", head=("linear:2",)),
        "gru_h16": dict(kind="gru", hidden=16, layers=2, readout="last", head=("linear:4", "relu")),
        "rnn_tanh": dict(kind="rnn_tanh", bidirectional=True),
        "rnn_relu": dict(kind="rnn_relu", hidden=8, readout="last", head=("linear:3",)),
        "rnn_relu_vocab": dict(kind="rnn_relu", vocab=7, layers=2),
    }
    out = {}
    for name, kw in specs.items():
        g = make_graph(**kw, seq_len=7, name=name)
        x = make_input(g, n=16, steps=7, seed=3)
        out[name] = (g, np.abs(x) % g.input_size if g.input_kind == "tokens" else x)   # calibration takes valid ids
    return out


def _load(save_fn, tmp: Path, name: str):
    from mcu_nn.frontend import load_model
    path = tmp / f"{name}.pt2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save_fn(path)
    return load_model(path, name=name)


def zoo_graphs(tmp: Path) -> dict[str, tuple[Graph, np.ndarray]]:
    import zoo
    specs = {
        "zoo_lstm": dict(kind="lstm"),
        "zoo_lstm_bi_mlp": dict(kind="lstm", bidirectional=True, head="mlp", hidden=12),
        "zoo_lstm_proj_seq": dict(kind="lstm", proj_size=5, readout="seq", hidden=10),
        "zoo_gru_tokens": dict(kind="gru", tokens=True, readout="h_n", hidden=16),
        "zoo_gru_2l_tm": dict(kind="gru", num_layers=2, batch_first=False, hidden=8),
        "zoo_rnn_tanh_cat": dict(kind="rnn_tanh", bidirectional=True, readout="h_n_cat", hidden=8),
        "zoo_rnn_relu": dict(kind="rnn_relu", hidden=20, bias=False),
    }
    out = {}
    for name, kw in specs.items():
        model = zoo.make_model(**kw)
        g = _load(lambda p: zoo.save_model(model, p, example=zoo.example_input(model, T=9)), tmp, name)
        x = zoo.canonical_input(model, T=9, N=16, seed=5)
        out[name] = (g, x)
    return out


REALZOO = ("tutorial_lstm_tagger", "bentrevett_bigru_hcat", "kws_conv_gru", "gru_cell_loop",
           "chunk_lstm_one_linear", "lstm_fcn", "airline_lstm_forecast", "mobile_gru_scripted")


def realzoo_graphs(tmp: Path) -> dict[str, tuple[Graph, np.ndarray]]:
    from realzoo import BY_NAME, save
    out = {}
    for name in REALZOO:
        case = BY_NAME[name]
        g = _load(lambda p: save(case, "pt2", p), tmp, name)
        out[name] = (g, case.calib(24, 0)["x"])
    return out


def test_quantiser_models(out: Path) -> list[str]:
    """QModels of tests/qmodels.py's own quantiser: 64-bit accumulators and other cell formats."""
    from qmodels import make_input, make_qmodel
    lines = []
    for kind in ("lstm", "gru", "rnn_tanh", "rnn_relu"):
        for force64, cell_frac in ((False, 11), (True, 13)):
            for precision in ("int8", "int16"):
                q = make_qmodel(kind, precision, force64=force64, cell_frac=cell_frac, hidden=8, seed=2)
                stem = f"tq_{kind}_{int(force64)}_{cell_frac}.{precision}"
                e = emit(q, "tq")
                (out / f"{stem}.h").write_text(e.header)
                (out / f"{stem}.c").write_text(e.source)
                x = make_input(q, n=8, steps=6, seed=4)
                lines.append(f"{stem} out={_digest(run(q, x))}")
    return lines


def qat_hash(g: Graph, x: np.ndarray, precision: str) -> str:
    from mcu_nn.qat import QATModel
    qat = QATModel(g, x, precision)
    return _digest(qat.forward_int(x[:6]))


def snapshot(out: Path) -> None:
    from mcu_nn.report_html import measure, trace_quant
    out.mkdir(parents=True, exist_ok=True)
    for fname, text in render_runtime().items():
        (out / fname).write_text(text)
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        models = {**toy_graphs(), **zoo_graphs(Path(tmp)), **realzoo_graphs(Path(tmp))}
    for name, (g, x) in models.items():
        ftrace: dict = {}
        run_float(g, x, trace=ftrace)
        lines.append(f"{name} float trace={_digest(ftrace)} f64={_digest(run_float64(g, x))}")
        for precision in PRECISIONS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                q = quantize(g, x, precision)
            layouts = ("packed", "wide") if precision == "int8" else ("packed",)
            for layout in layouts:
                e = emit(q, name, weight_layout=layout)
                stem = f"{name}.{precision}.{layout}"
                (out / f"{stem}.h").write_text(e.header)
                (out / f"{stem}.c").write_text(e.source)
            y = run(q, x)
            row = f"{name} {precision} out={_digest(y)} cal={_digest(q.calibration)}"
            if precision != "float32":
                _, trace = trace_quant(q, x)
                row += f" trace={_digest(trace)} report={_digest(measure(g, q, x))}"
                if name in ("lstm", "gru", "rnn_tanh", "rnn_relu", "gru_bi_final", "lstm_vocab"):
                    row += f" qat={qat_hash(g, x, precision)}"
            lines.append(row)
            print(row, flush=True)
    lines += test_quantiser_models(out)
    (out / "sim.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: render_snapshot.py OUT_DIR")
    snapshot(Path(sys.argv[1]))
