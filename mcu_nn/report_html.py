"""The quantisation report (``mcu-nn export --report report.html|.md``): where the error
enters, per layer and per tensor, with plots.

It runs the float reference and the bit-exact integer model side by side over the same
inputs, recording every gate pre-activation, cell state, h and head output of both, and
shows: SNR per tensor (float vs dequantised integer), SNR of h along the sequence, the
calibration ranges with the values clipped, accuracy and top-class agreement, flash/RAM.
The same numbers go into the export's ``model.json`` under "quantisation_report".
Plots need matplotlib (``pip install 'mcu-nn[examples]'``); without it the tables remain.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Optional

import numpy as np

from .cells import cell_of
from .errors import McuNnError
from .ir import Graph, QModel
from .quant.metrics import snr_db, top1_agreement
from .sim import run_float
from .sim.int_sim import quantize_model_input, run_quant

# ----------------------------------------------------------------------------- integer traces
def trace_quant(q: QModel, x: np.ndarray) -> tuple[np.ndarray, dict]:
    """Run ``q`` on float inputs as the chip does; returns (int outputs, {name: dequantised
    float64 array}) with run_float's trace names ("input", "op{i}.out", "op{i}.d{d}.gates", ...)."""
    rec: dict = {}
    return run_quant(q, quantize_model_input(q, x), trace=rec), rec


# ----------------------------------------------------------------------------- measurements
def _label(graph: Graph, name: str) -> str:
    """'op1.d0.gates' -> 'GRU layer (op 1) fwd gates', readable in a table."""
    if name == "input":
        return "model input"
    parts = name.split(".")
    i = int(parts[0][2:])
    op = graph.ops[i]
    what = getattr(op, "source", "") or type(op).__name__
    kind = type(op).__name__
    if len(parts) == 3:
        d = " fwd" if parts[1] == "d0" else " rev"
        return f"{kind} {i} [{what}]{d} {parts[2]}"
    return f"{kind} {i} [{what}] output"


def measure(graph: Graph, q: QModel, x: np.ndarray, labels: Optional[np.ndarray] = None) -> dict:
    """Everything the report shows, as plain JSON-able data."""
    ref_trace: dict = {}
    ref = run_float(graph, x, trace=ref_trace)
    yq, qt = trace_quant(q, x)
    out = yq * q.output_scale
    tensors = []
    for name, qa in qt.items():
        fa = ref_trace.get(name)
        if fa is None or np.shape(fa) != np.shape(qa):
            continue
        row = {"name": name, "label": _label(graph, name), "snr_db": _finite(snr_db(fa, qa)),
               "max_abs_error": float(np.max(np.abs(fa - qa))) if np.size(fa) else 0.0}
        if name.endswith(".gates"):                      # per gate: which one loses precision
            op = graph.ops[int(name.split(".")[0][2:])]
            hid = op.hidden_size
            row["per_gate_snr_db"] = {g: _finite(snr_db(fa[..., k * hid:(k + 1) * hid], qa[..., k * hid:(k + 1) * hid]))
                                      for k, g in enumerate(cell_of(op.kind).gates)}
        if name.endswith(".h") and fa.ndim == 3:         # does the error grow along the sequence?
            row["snr_per_step_db"] = [_finite(snr_db(fa[:, t], qa[:, t])) for t in range(fa.shape[1])]
        tensors.append(row)
    result = {"sequences": int(x.shape[0]), "output_snr_db": _finite(snr_db(ref, out)),
              "output_max_abs_error": float(np.max(np.abs(ref - out))) if out.size else 0.0,
              "tensors": tensors, "calibration": q.calibration}
    classifier = not graph.output_per_step and ref.shape[-1] > 1
    if classifier:
        result["top1_agreement"] = float(top1_agreement(ref, out))
        if labels is not None:
            result["float_accuracy"] = float((np.argmax(ref, -1) == labels).mean())
            result["quant_accuracy"] = float((np.argmax(out, -1) == labels).mean())
    return result


def _finite(v: float) -> Optional[float]:
    """JSON has no inf: an exact match is reported as None ('exact')."""
    return float(v) if np.isfinite(v) else None


# ----------------------------------------------------------------------------- plots
def _plots(m: dict, title: str) -> dict[str, bytes]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    pngs: dict[str, bytes] = {}

    def save(fig, name: str) -> None:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        pngs[name] = buf.getvalue()

    rows = m["tensors"]
    snr = [r["snr_db"] if r["snr_db"] is not None else 120.0 for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.5))
    colors = ["#c0392b" if s < 30 else "#e67e22" if s < 45 else "#27ae60" for s in snr]
    ax.barh(range(len(rows)), snr, color=colors)
    ax.set_yticks(range(len(rows)), [r["label"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("SNR float vs integer (dB, higher is better; 120 = exact)")
    ax.set_title(f"{title}: where quantisation error enters")
    save(fig, "snr_per_tensor")

    steps = [r for r in rows if "snr_per_step_db" in r]
    if steps:
        fig, ax = plt.subplots(figsize=(9, 3.5))
        for r in steps:
            ax.plot([v if v is not None else 120.0 for v in r["snr_per_step_db"]], label=r["label"])
        ax.set_xlabel("time step")
        ax.set_ylabel("SNR of h (dB)")
        ax.set_title("does the error accumulate along the sequence?")
        ax.legend(fontsize=7)
        save(fig, "snr_per_step")

    cal = [(k, v) for k, v in m["calibration"].items() if v.get("scale", 0) > 0]
    if cal:
        fig, ax = plt.subplots(figsize=(9, 0.32 * len(cal) + 1.5))
        rng = [v["scale"] * 32767 for _, v in cal]
        seen = [max(abs(v["min"]), abs(v["max"])) for _, v in cal]
        y = np.arange(len(cal))
        ax.barh(y, rng, color="#bdc3c7", label="int16 range (scale x 32767)")
        ax.scatter(seen, y, color=["#c0392b" if v["clipped_fraction"] > 0 else "#2c3e50" for _, v in cal],
                   zorder=3, label="largest |value| in calibration (red: some values clipped)")
        ax.set_xscale("log")
        ax.set_yticks(y, [k for k, _ in cal], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("|value|")
        ax.set_title("calibration ranges")
        ax.legend(fontsize=7, loc="lower right")
        save(fig, "calibration_ranges")
    return pngs


# ----------------------------------------------------------------------------- writers
def _fmt(v, spec: str = ".1f", none: str = "exact") -> str:
    return none if v is None else format(v, spec)


def _summary_rows(m: dict, manifest: Optional[dict]) -> list[tuple[str, str]]:
    rows = [("output SNR vs float", f"{_fmt(m['output_snr_db'])} dB on {m['sequences']} sequences"),
            ("output max |error|", f"{m['output_max_abs_error']:.4g}")]
    if "top1_agreement" in m:
        rows.append(("top class agrees with float", f"{m['top1_agreement']:.1%}"))
    if "float_accuracy" in m:
        rows.append(("accuracy (labels): float / integer", f"{m['float_accuracy']:.1%} / {m['quant_accuracy']:.1%}"))
    if manifest:
        rows.append(("precision", str(manifest.get("precision"))))
        rows.append(("model flash (constant arrays)", f"{manifest.get('flash_bytes', 0):,} B"))
        rows.append(("model RAM (state + scratch)", f"{manifest.get('ram_bytes', 0):,} B"))
        rows.append(("MACs per step", f"{manifest.get('macs_per_step', 0):,}"))
    return rows


def _worst(m: dict) -> str:
    rows = [r for r in m["tensors"] if r["snr_db"] is not None and r["name"] != "input"]
    if not rows:
        return "every traced tensor matches the float model exactly"
    w = min(rows, key=lambda r: r["snr_db"])
    return f"the error enters mostly at {w['label']} (SNR {w['snr_db']:.1f} dB)"


def render_html(m: dict, pngs: dict[str, bytes], title: str, manifest: Optional[dict]) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}: quantisation report</title>",
             "<style>body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "font-size:13px;text-align:right}td:first-child,th:first-child{text-align:left}"
             ".bad{background:#fadbd8}.warn{background:#fdebd0}img{max-width:100%}</style></head><body>",
             f"<h1>{e(title)}: quantisation report</h1>", f"<p><b>In short:</b> {e(_worst(m))}.</p>",
             "<table>" + "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in _summary_rows(m, manifest))
             + "</table>"]
    for name, caption in (("snr_per_tensor", "SNR per tensor (red < 30 dB, orange < 45 dB)"),
                          ("snr_per_step", "SNR of each recurrent layer's h along the sequence"),
                          ("calibration_ranges", "Calibration ranges and clipping")):
        if name in pngs:
            b64 = base64.b64encode(pngs[name]).decode()
            parts.append(f"<h2>{e(caption)}</h2><img alt='{name}' src='data:image/png;base64,{b64}'>")
    if not pngs:
        parts.append("<p><i>plots need matplotlib: pip install 'mcu-nn[examples]'</i></p>")
    parts.append("<h2>Per tensor: float vs integer</h2><table><tr><th>tensor</th><th>SNR dB</th>"
                 "<th>max |error|</th><th>per gate SNR dB</th></tr>")
    for r in m["tensors"]:
        cls = "" if r["snr_db"] is None or r["snr_db"] >= 45 else (" class='warn'" if r["snr_db"] >= 30 else " class='bad'")
        gates = ", ".join(f"{g}: {_fmt(v)}" for g, v in r.get("per_gate_snr_db", {}).items())
        parts.append(f"<tr{cls}><td>{e(r['label'])}</td><td>{_fmt(r['snr_db'])}</td>"
                     f"<td>{r['max_abs_error']:.3g}</td><td>{e(gates)}</td></tr>")
    parts.append("</table><h2>Calibration ranges</h2><table><tr><th>tensor</th><th>min</th><th>max</th>"
                 "<th>int16 covers ±</th><th>scale</th><th>clipped</th></tr>")
    for k, v in m["calibration"].items():
        cls = " class='bad'" if v["clipped_fraction"] > 0 else ""
        parts.append(f"<tr{cls}><td>{e(k)}</td><td>{v['min']:.4g}</td><td>{v['max']:.4g}</td>"
                     f"<td>{v['scale'] * 32767:.4g}</td><td>{v['scale']:.3g}</td>"
                     f"<td>{v['clipped_fraction']:.3%}</td></tr>")
    parts.append("</table><p>Gate pre-activations are Q3.12 (±8, where sigmoid/tanh are flat), h of tanh "
                 "cells Q15; their 'clipped' counts values past those fixed formats.</p></body></html>")
    return "\n".join(parts)


def render_md(m: dict, images: dict[str, str], title: str, manifest: Optional[dict]) -> str:
    lines = [f"# {title}: quantisation report", "", f"In short: {_worst(m)}.", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in _summary_rows(m, manifest)]
    for name, rel in images.items():
        lines += ["", f"![{name}]({rel})"]
    lines += ["", "| tensor | SNR dB | max abs error | per gate SNR dB |", "|---|---|---|---|"]
    for r in m["tensors"]:
        gates = ", ".join(f"{g}: {_fmt(v)}" for g, v in r.get("per_gate_snr_db", {}).items())
        lines.append(f"| {r['label']} | {_fmt(r['snr_db'])} | {r['max_abs_error']:.3g} | {gates} |")
    lines += ["", "| calibrated tensor | min | max | int16 covers ± | clipped |", "|---|---|---|---|---|"]
    for k, v in m["calibration"].items():
        lines.append(f"| {k} | {v['min']:.4g} | {v['max']:.4g} | {v['scale'] * 32767:.4g} | {v['clipped_fraction']:.3%} |")
    return "\n".join(lines) + "\n"


def write_report(path: str | Path, graph: Graph, q: QModel, *, calib: np.ndarray,
                 test: Optional[tuple[np.ndarray, np.ndarray]] = None, manifest: Optional[dict] = None,
                 export_dir: Optional[Path] = None) -> Path:
    """Write the report to ``path`` (.html: one self-contained file with embedded plots; .md:
    Markdown with PNGs in ``<stem>_files/``). Measures on ``test`` inputs (with labels) when
    given, else on ``calib``. With ``export_dir``, the numbers also go into its model.json."""
    if q.precision == "float32":
        raise McuNnError("--report compares integer arithmetic with float; export int8 or int16 to get one")
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm", ".md"):
        raise McuNnError(f"report {path}: unknown type {path.suffix or '(none)'}; name it .html or .md")
    x, labels = (test[0], test[1]) if test is not None else (calib, None)
    m = measure(graph, q, x, labels)
    title = q.name or "model"
    pngs = _plots(m, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".md":
        files = path.parent / f"{path.stem}_files"
        images = {}
        if pngs:
            files.mkdir(exist_ok=True)
            for name, data in pngs.items():
                (files / f"{name}.png").write_bytes(data)
                images[name] = f"{files.name}/{name}.png"
        path.write_text(render_md(m, images, title, manifest))
    else:
        path.write_text(render_html(m, pngs, title, manifest))
    if export_dir is not None and (Path(export_dir) / "model.json").is_file():
        from .exportdir import update_manifest
        update_manifest(export_dir, {"quantisation_report": {k: v for k, v in m.items() if k != "calibration"}})
    return path
