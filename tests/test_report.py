"""The quantisation report: integer traces are the simulator's, the HTML opens with real
plots, the Markdown variant writes its PNGs, model.json gets the numbers, CLI --report."""
from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from mcu_nn.ir import QRecurrent

from mcu_nn.errors import McuNnError
from mcu_nn.quant import quantize
from mcu_nn.report_html import measure, trace_quant, write_report
from mcu_nn.sim import run, run_float
from qmodels import make_graph, make_input

GRAPHS = {
    "lstm_last": dict(kind="lstm", readout="last", head=("linear:4",)),
    "gru_bi_final": dict(kind="gru", bidirectional=True, readout="final:0,1", head=("linear:3", "tanh")),
    "lstm_proj_2layer": dict(kind="lstm", layers=2, proj=3, head=("linear:2",)),
    "rnn_relu": dict(kind="rnn_relu", readout="last", head=("linear:4", "relu", "linear:2")),
}


@pytest.mark.parametrize("case", sorted(GRAPHS))
def test_integer_trace_is_the_simulator(case: str) -> None:
    g = make_graph(**GRAPHS[case], seq_len=6)
    x = make_input(g, n=16, steps=6, seed=2)
    q = quantize(g, x, "int8")
    ints, rec = trace_quant(q, x)
    assert np.array_equal(ints, run(q, x))
    recurrent = [i for i, op in enumerate(q.ops) if isinstance(op, QRecurrent)]
    assert {f"op{i}.out" for i in range(len(q.ops))} <= rec.keys() and "input" in rec
    assert all(f"op{i}.d0.gates" in rec and f"op{i}.d0.h" in rec for i in recurrent) and recurrent
    ref: dict = {}
    run_float(g, x, trace=ref)
    for name, arr in rec.items():          # same names and shapes as the float trace, close values
        assert ref[name].shape == arr.shape, name
        assert np.abs(ref[name] - arr).max() <= 0.1 * max(1.0, np.abs(ref[name]).max()), name


def _pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)]


def test_html_report_has_rendered_plots_tables_and_updates_model_json(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.image as mpimg
    g = make_graph(kind="lstm", readout="last", head=("linear:4",), seq_len=8, seed=1)
    x = make_input(g, n=32, steps=8, seed=3)
    labels = np.argmax(run_float(g, x), -1)
    q = quantize(g, x, "int8")
    (tmp_path / "model.json").write_text(json.dumps({"name": "m"}))
    path = write_report(tmp_path / "r.html", g, q, calib=x, test=(x, labels), export_dir=tmp_path)
    html = path.read_text()
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    pngs = _pngs(html)
    assert len(pngs) == 3
    for i, data in enumerate(pngs):
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        (tmp_path / f"p{i}.png").write_bytes(data)
        img = mpimg.imread(tmp_path / f"p{i}.png")
        assert img.shape[0] > 100 and img.shape[1] > 300
        assert img[..., :3].std() > 0.05                # not a blank canvas
    assert "where quantisation error enters" not in html or "In short" in html
    assert "op0.d0.gates" in html and "accuracy (labels)" in html
    manifest = json.loads((tmp_path / "model.json").read_text())
    rep = manifest["quantisation_report"]
    assert rep["top1_agreement"] == pytest.approx(measure(g, q, x, labels)["top1_agreement"])
    gates = [t for t in rep["tensors"] if t["name"] == "op0.d0.gates"][0]
    assert set(gates["per_gate_snr_db"]) == set("ifgo")
    assert len([t for t in rep["tensors"] if t["name"] == "op0.d0.h"][0]["snr_per_step_db"]) == 8


def test_markdown_report_writes_png_files(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    g = make_graph(kind="gru", readout="last", head=("linear:3",), seq_len=5)
    x = make_input(g, n=16, steps=5)
    path = write_report(tmp_path / "report.md", g, quantize(g, x, "int16"), calib=x)
    text = path.read_text()
    files = sorted((tmp_path / "report_files").glob("*.png"))
    assert len(files) == 3 and all(f.stat().st_size > 5000 for f in files)
    assert all(f"report_files/{f.name}" in text for f in files)


def test_report_errors_are_one_line(tmp_path) -> None:
    g = make_graph(kind="gru", seq_len=5)
    x = make_input(g, n=4, steps=5)
    with pytest.raises(McuNnError, match="int8 or int16"):
        write_report(tmp_path / "r.html", g, quantize(g, x, "float32"), calib=x)
    with pytest.raises(McuNnError, match=r"\.html or \.md"):
        write_report(tmp_path / "r.pdf", g, quantize(g, x, "int8"), calib=x)


def test_cli_export_report(tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    torch = pytest.importorskip("torch")
    from mcu_nn.cli import main

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = torch.nn.LSTM(3, 8, batch_first=True)
            self.head = torch.nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((32, 10, 3)).astype(np.float32)
    torch.export.save(torch.export.export(Net().eval(), (torch.from_numpy(x[:1]),)), str(tmp_path / "m.pt2"))
    np.savez(tmp_path / "calib.npz", x=x)
    rc = main(["export", str(tmp_path / "m.pt2"), "-o", str(tmp_path / "out"), "--calib",
               str(tmp_path / "calib.npz"), "--report", str(tmp_path / "report.html")])
    assert rc == 0
    assert len(_pngs((tmp_path / "report.html").read_text())) == 3
    assert "quantisation_report" in json.loads((tmp_path / "out" / "model.json").read_text())
