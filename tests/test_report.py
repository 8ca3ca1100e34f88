"""The quantisation report: integer traces are the simulator's, the HTML opens with real
plots, the Markdown variant writes its PNGs, model.json gets the numbers, CLI --report."""
from __future__ import annotations

import base64
import json
import re
import sys

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


def _visible_op_names(html: str) -> list[str]:
    """Internal trace names ("op2.out", "op0.d0.gates") anywhere a reader can see them."""
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    return re.findall(r"\bop\d+\.\w+", text)


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
    assert "Verdict:" in html and "accuracy (labels)" in html and "task accuracy on 32 labelled" in html
    assert _visible_op_names(html) == []                  # one naming scheme: the modules' names
    assert "rnn (layer 0) · gates" in html
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
    with pytest.raises(McuNnError, match="3 labels for 4 calibration sequences"):
        write_report(tmp_path / "r.html", g, quantize(g, x, "int8"), calib=x, labels=np.zeros(3, int))


def test_cli_export_report(tmp_path, capsys, monkeypatch) -> None:
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
    y = np.arange(32) % 2
    np.savez(tmp_path / "calib.npz", x=x, y=y)
    out = tmp_path / "out"
    argv = ["export", str(tmp_path / "m.pt2"), "-o", str(out), "--calib", str(tmp_path / "calib.npz"),
            "--report", str(tmp_path / "report.html"), "--report-labels", "y"]     # y: a key of the --calib .npz
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/mcu-nn", *argv])              # as the console script sees it
    rc = main(argv)
    assert rc == 0
    html = (tmp_path / "report.html").read_text()
    assert len(_pngs(html)) == 3
    assert "task accuracy on 32 labelled sequences" in html and "accuracy (labels)" in html
    assert "m.pt2" in html and "mcu-nn export" in html and "--report-labels y" in html   # sys.argv of the CLI
    manifest = json.loads((out / "model.json").read_text())
    saved = manifest["quantisation_report"]
    assert {"tensors", "calibration", "ops", "provenance", "verdict"} <= saved.keys()
    assert saved["provenance"]["export_sha256"] == manifest["sha256"] and "float_accuracy" in saved

    # the report again, later, without the model, with the chip's results
    (tmp_path / "st.json").write_text(json.dumps(SERIAL))
    (tmp_path / "bench.json").write_text(json.dumps(BENCH_JSON) + "\n")     # as `bench --json` prints it
    (tmp_path / "m.pt2").unlink()
    assert main(["report", str(out), "-o", str(tmp_path / "again.md"), "--chip", str(tmp_path / "st.json"),
                 str(tmp_path / "bench.json")]) == 0
    md = (tmp_path / "again.md").read_text()
    assert "Verdict:" in md and "task accuracy on 32 labelled sequences" in md and "re-rendered" in md
    assert manifest["sha256"] in md and "On the chip" in md and "1,930 instructions" in md
    assert sorted(p.name for p in (tmp_path / "again_files").glob("*.png")) == [
        "calibration_ranges.png", "snr_per_step.png", "snr_per_tensor.png"]
    assert main(["report", str(out), "-o", str(tmp_path / "again.html")]) == 0
    assert _visible_op_names((tmp_path / "again.html").read_text()) == []
    capsys.readouterr()


@pytest.mark.parametrize("make, args, message", [
    (lambda d: np.save(d / "l.npy", np.zeros((3, 4))), ["--report-labels", "{d}/l.npy"], "one integer class label"),
    (lambda d: (d / "l.npy").write_text("1,0,1"), ["--report-labels", "{d}/l.npy"], "not a numpy"),
    (lambda d: None, ["--report-labels", "nope"], "no such file"),
    (lambda d: np.savez(d / "l.npz", a=np.zeros(3, int), b=np.ones(3, int)), ["--report-labels", "{d}/l.npz"],
     "holds a, b; say which"),
    (lambda d: np.save(d / "l.npy", np.zeros(3, int)), ["--report-labels", "{d}/l.npy", "--report", None],
     "needs --report"),
])
def test_cli_bad_report_labels_is_one_line(tmp_path, capsys, make, args, message) -> None:
    from mcu_nn.cli import main
    make(tmp_path)
    args = [a.format(d=tmp_path) for a in args if a is not None]
    if "--report" not in args:
        args += ["--report", str(tmp_path / "r.html")]
    else:
        args.remove("--report")
    rc = main(["export", str(tmp_path / "missing.pt2"), "-o", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and message in err and err.startswith("mcu-nn: error:"), err


def test_cli_report_needs_saved_data(tmp_path, capsys) -> None:
    from mcu_nn.cli import main
    assert main(["report", str(tmp_path / "nothing"), "-o", str(tmp_path / "r.html")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err


# ----------------------------------------------------------------------------- the report decides
SERIAL = {"schema": 1, "command": "serial-test", "mcu_nn_version": "0.1.0", "board": "qemu-mps2-an386",
          "ok": True, "sequences": 8, "passed": 8, "mean_cycles_per_step": 1937, "cycle_unit": "instructions",
          "whole_firmware": {"flash_bytes": 7380, "ram_bytes": 7296, "stack_bytes": 4096}, "some_new_field": "kept"}
BENCH_JSON = {"schema": 1, "command": "bench", "mcu_nn_version": "0.1.0", "models": [
    {"instructions_per_step": 1930, "board": "qemu-mps2-an386", "vectors_checked": 8, "unit": "instructions"}]}
BENCH = {"instructions_per_step": 1930, "macs_per_step": 384, "flash_bytes": 4078, "ram_bytes": 160,
         "board": "qemu-mps2-an386", "vectors_checked": 8, "unit": "instructions"}


def _m(**kw) -> dict:
    """A measure() result reduced to what the verdict reads."""
    return {"sequences": 50, "precision": "int8", "output_snr_db": 40.0, "output_max_abs_error": 0.01,
            "tensors": [], "calibration": {}, "ops": [], **kw}


def test_verdict_decides_and_says_why() -> None:
    from mcu_nn.report_html import verdict
    v = verdict(_m(top1_agreement=1.0), {"precision": "int8", "saturation": {"calibration": {}}})
    assert v["status"] == "ok" and v["deployable"]
    assert v["headline"].startswith("Deployable at int8: top-1 class unchanged on 50 of 50")
    v = verdict(_m(top1_agreement=0.9))
    assert not v["deployable"] and "Not deployable at int8" in v["headline"] and "45 of 50" in v["headline"]
    v = verdict(_m(top1_agreement=1.0, float_accuracy=0.9, quant_accuracy=0.8))       # accuracy fell 10 points
    assert v["status"] == "fail" and "float 90.0%, int8 80.0%" in v["headline"]
    v = verdict(_m(output_snr_db=12.0))                                                # a regressor below 30 dB
    assert v["status"] == "fail" and "12.0 dB" in v["headline"] and "threshold 30 dB" in v["headline"]
    assert verdict(_m(output_snr_db=None))["status"] == "ok"                          # exact
    sat = {"precision": "int8", "saturation": {"calibration": {"op0": {"clipped": 3, "values": 1000, "source": "rnn"}}}}
    ops = [{"type": "Recurrent", "kind": "lstm", "source": "encoder.rnn"}]
    v = verdict(_m(top1_agreement=1.0, ops=ops), sat)
    assert v["status"] == "warn" and v["deployable"] and "encoder.rnn: 3 of 1,000 values" in v["headline"]
    bad_chip = {**SERIAL, "ok": False, "passed": 5}
    v = verdict(_m(top1_agreement=1.0), None, [bad_chip])
    assert v["status"] == "fail" and "qemu-mps2-an386" in v["headline"] and "5 of 8" in v["headline"]
    other = {**SERIAL, "model_sha256": "b" * 64}
    assert verdict(_m(top1_agreement=1.0), {"sha256": "a" * 64}, [other])["status"] == "fail"


def test_report_provenance_and_chip_results_in_html_and_markdown(tmp_path) -> None:
    import hashlib
    from mcu_nn import __version__
    g = make_graph(kind="lstm", readout="last", head=("linear:4",), seq_len=6, seed=1)
    x = make_input(g, n=16, steps=6, seed=3)
    q = quantize(g, x, "int8")
    model_file = tmp_path / "m.pt2"
    model_file.write_bytes(b"not really a model, but a file with a hash")
    manifest = {"name": "m", "precision": "int8", "sha256": "c" * 64, "flash_bytes": 976, "ram_bytes": 64,
                "macs_per_step": 384, "saturation": {"calibration": {}, "test_vectors": {}},
                "layers": [{"index": 0, "kind": "QRecurrent", "source": "rnn (layer 0)", "cell": "lstm",
                            "input_size": 3, "hidden_size": 8, "output_size": 8, "macs_per_step": 352,
                            "flash_bytes": 896},
                           {"index": 1, "kind": "SelectLast", "source": "", "output_size": 8, "macs_per_step": 0,
                            "flash_bytes": 0},
                           {"index": 2, "kind": "QLinear", "source": "fc", "input_size": 8, "output_size": 4,
                            "macs_per_step": 32, "flash_bytes": 80}],
                "state": {"slots": [{"op": 0, "size": 8}, {"op": 0, "size": 8}]}}
    for suffix in (".html", ".md"):
        path = write_report(tmp_path / f"r{suffix}", g, q, calib=x, manifest=manifest, model=model_file,
                            command="mcu-nn export m.pt2 -o out --report r.html", chip=[SERIAL, BENCH])
        text = path.read_text()
        assert "Verdict:" in text and "Deployable at int8" in text
        for s in (__version__, hashlib.sha256(model_file.read_bytes()).hexdigest(), "c" * 64,
                  "mcu-nn export m.pt2 -o out --report r.html", "UTC"):
            assert s in text, (suffix, s)
        assert "On the chip" in text and "qemu-mps2-an386" in text and "serial-test" in text
        assert "1,937 instructions" in text and "7,380 B" in text and "8 of 8" in text
        assert "bit-exact with the simulator" in text
        row = ("| rnn (layer 0) | LSTM 3->8 | 352 | 896 | 32 |" if suffix == ".md"
               else "<td>rnn (layer 0)</td><td>LSTM 3-&gt;8</td><td>352</td><td>896</td><td>32</td>")
        assert "model constants (flash B)" in text and row in text
        assert _visible_op_names(text) == [], suffix
    assert "some_new_field" in (tmp_path / "r.html").read_text()      # unknown fields shown, not refused
    # an in-memory module has no file to hash
    text = write_report(tmp_path / "mem.md", g, q, calib=x, model=object(), command="notebook").read_text()
    assert "in-memory module" in text and "notebook" in text


def test_chip_results_files(tmp_path) -> None:
    from mcu_nn.report_html import load_chip_results
    (tmp_path / "a.json").write_text(json.dumps(SERIAL))
    (tmp_path / "b.json").write_text(json.dumps(BENCH) + "\n" + json.dumps({**BENCH, "board": "x"}) + "\n")
    assert [r["board"] for r in load_chip_results([tmp_path / "a.json", tmp_path / "b.json"])] == [
        "qemu-mps2-an386", "qemu-mps2-an386", "x"]
    (tmp_path / "c.json").write_text("serial-test: 8/8 vectors passed")
    with pytest.raises(McuNnError, match=r"c\.json: not JSON.*--json"):
        load_chip_results([tmp_path / "c.json"])
    with pytest.raises(McuNnError, match="cannot read"):
        load_chip_results([tmp_path / "missing.json"])


def test_chip_result_objects_and_manifest_provenance(tmp_path) -> None:
    """The Python API hands over its serial_test / bench result objects and a manifest that records
    where the model came from (source_model, source_sha256)."""
    from mcu_nn.bench import BenchResult
    from mcu_nn.device.serial_test import SerialTestResult
    from mcu_nn.report_html import chip_row, provenance
    st = SerialTestResult(ok=True, vectors=8, passed=8, first_mismatch="", mean_cycles_per_step=1937.0,
                          max_cycles_per_step=1938.0, bytes_per_second=1e4, cycle_unit="instructions",
                          outputs=np.zeros((8, 4), np.int16), device=None)
    bench = BenchResult(name="m", precision="int8", board="qemu-mps2-an386", path="simd", instructions_per_step=1930,
                        macs_per_step=384, instructions_per_mac=5.0, flash_bytes=4078, ram_bytes=160, state_bytes=64,
                        stack_bytes=96, weight_layout="packed", vectors_checked=8)
    assert chip_row(st)["bit_exact"] is True and chip_row(st)["per_step"] == 1937.0
    assert chip_row(bench)["command"] == "bench" and chip_row(bench)["flash_bytes"] is None   # model+runtime,
    assert chip_row(SERIAL)["flash_bytes"] == 7380 and chip_row(SERIAL)["ram_bytes"] == 7296  # not the firmware
    g = make_graph(kind="gru", readout="last", head=("linear:3",), seq_len=5)
    x = make_input(g, n=8, steps=5)
    text = write_report(tmp_path / "r.md", g, quantize(g, x, "int8"), calib=x, chip_results=[st, bench],
                        command="api").read_text()
    assert "1,930 instructions" in text and "1,937 instructions" in text and "bit-exact" in text
    p = provenance(manifest={"source_model": "har.pt2", "source_sha256": "d" * 64, "sha256": "e" * 64}, command="x")
    assert p["model_file"] == "har.pt2" and p["model_sha256"] == "d" * 64 and p["export_sha256"] == "e" * 64
    p = provenance(manifest={"source_model": "<Net in memory>", "source_sha256": None}, command="x")
    assert p["model_file"] == "in-memory module (Net)" and "model_sha256" not in p


def test_ragged_sequences_are_measured_at_their_own_lengths() -> None:
    """Padding is never run on the chip, so the report does not run it either: each sequence's
    figures are those of the sequence alone."""
    g = make_graph(kind="lstm", readout="last", head=("linear:3",), seq_len=9)
    x = make_input(g, n=6, steps=9)
    lengths = np.array([3, 9, 5, 9, 3, 7])
    for i, n in enumerate(lengths):
        x[i, n:] = 0.0
    q = quantize(g, x, "int8", lengths=lengths)
    labels = np.array([0, 1, 2, 0, 1, 2])
    m = measure(g, q, x, labels, lengths=lengths)
    ref = np.stack([run_float(g, x[i:i + 1, :n])[0] for i, n in enumerate(lengths)])
    got = np.stack([run(q, x[i:i + 1, :n])[0] * q.output_scale for i, n in enumerate(lengths)])
    assert m["float_accuracy"] == pytest.approx(float(np.mean(ref.argmax(-1) == labels)))
    assert m["quant_accuracy"] == pytest.approx(float(np.mean(got.argmax(-1) == labels)))
    assert m["output_max_abs_error"] == pytest.approx(float(np.abs(ref - got).max()))
    h = next(t for t in m["tensors"] if t["name"].endswith(".h"))
    assert len(h["snr_per_step_db"]) == 9                  # steps 8 and 9 from the two long sequences only
    padded = measure(g, q, x, labels)                      # the old way: padding run as input
    assert padded["output_max_abs_error"] != m["output_max_abs_error"]


def test_cli_report_measures_again_from_the_export(tmp_path, capsys) -> None:
    """`mcu-nn report DIR --calib FILE`: the float and quantised models the export keeps are
    enough; no model file and no earlier --report."""
    import zoo
    from mcu_nn.cli import main
    from mcu_nn.pipeline import export_model
    model = zoo.make_model("gru", input_size=3, hidden=6, readout="last", head="linear")
    path = zoo.save_model(model, tmp_path / "m.pt2", "pt2", zoo.example_input(model, T=8))
    rng = np.random.default_rng(3)
    seqs = [rng.standard_normal((int(n), 3)).astype(np.float32) for n in rng.integers(2, 9, 12)]
    np.savez(tmp_path / "data.npz", *seqs, y=rng.integers(0, 2, 12))
    export_model(path, tmp_path / "out", calib=tmp_path / "data.npz", log=lambda s: None)
    (tmp_path / "m.pt2").unlink()
    assert main(["report", str(tmp_path / "out"), "-o", str(tmp_path / "r.md"), "--calib",
                 str(tmp_path / "data.npz"), "--labels", "y"]) == 0
    md = (tmp_path / "r.md").read_text()
    assert "Verdict:" in md and "task accuracy on 12 labelled sequences" in md
    assert main(["report", str(tmp_path / "out"), "-o", str(tmp_path / "r2.md"), "--labels", "y"]) == 1
    assert "--labels needs --calib" in capsys.readouterr().err
