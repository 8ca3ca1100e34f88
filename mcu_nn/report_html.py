"""The quantisation report (``mcu-nn export --report report.html|.md``): does the model still
do its job at this precision, where the error enters, and what the chip said.

It runs the float reference and the bit-exact integer model side by side over the same
inputs, recording every gate pre-activation, cell state, h and head output of both
(:func:`measure`). The page then opens with a **verdict** (deployable at this precision or
not, and why: top-1 agreement or output SNR against a stated threshold, task accuracy when
labels are given, anything clipped, the chip's results when serial-test or bench ran),
**provenance** (mcu-nn version, model file and sha256, export sha256, date, command), the
per-layer flash/RAM table and plots of SNR per tensor, SNR along the sequence and the
calibration ranges.

The page is a pure function of JSON-able data: the measure() dict, the manifest, the
provenance and the chip results. With an export directory, that data is saved in
``model.json`` under "quantisation_report", so ``mcu-nn report DIR -o FILE [--chip R.json]``
re-renders it later without the model (:func:`rerender`), adding what the board reported.

Every tensor and layer is named one way everywhere, after the user's PyTorch modules
(``op.source``): "encoder.rnn · gates", "encoder.rnn · reverse · h" (direction only for
bidirectional layers), "head · output"; an op without a module path is its kind and index,
"SelectLast (op 1)". Plots need matplotlib (``pip install 'mcu-nn[examples]'``); without it
the tables remain.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import html
import io
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from . import __version__
from .cells import cell_of
from .errors import McuNnError
from .ir import Graph, QModel
from .quant.metrics import snr_db, top1_agreement
from .sim import run_float
from .sim.int_sim import quantize_model_input, run_quant

# What "deployable" means unless the caller says otherwise (stored with the data, so a
# re-render decides by the same rule).
CRITERIA = {"min_top1_agreement": 0.99,     # classifiers: top class unchanged on >= 99% of sequences
            "min_output_snr_db": 30.0,      # regressors (and per-step outputs): output SNR vs float
            "max_accuracy_drop": 0.01}      # with labels: integer accuracy at most 1 point below float
GOOD_SNR_DB = 45.0                          # plots/tables: green from here, orange from the threshold


# ----------------------------------------------------------------------------- integer traces
def trace_quant(q: QModel, x: np.ndarray) -> tuple[np.ndarray, dict]:
    """Run ``q`` on float inputs as the chip does; returns (int outputs, {name: dequantised
    float64 array}) with run_float's trace names ("input", "op{i}.out", "op{i}.d{d}.gates", ...)."""
    rec: dict = {}
    return run_quant(q, quantize_model_input(q, x), trace=rec), rec


# ----------------------------------------------------------------------------- one naming scheme
_KIND_NAMES = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN (tanh)", "rnn_relu": "RNN (relu)"}
_TENSOR_NAMES = {"out": "output", "q312": "input (Q3.12)"}


def op_info(graph: Graph) -> list[dict]:
    """What the names need of each op: its type, kind (cell or activation), module path."""
    return [{"index": i, "type": type(op).__name__, "kind": k if isinstance(k := getattr(op, "kind", ""), str) else "",
             "source": getattr(op, "source", "") or "", "bidirectional": bool(getattr(op, "bidirectional", False))}
            for i, op in enumerate(graph.ops)]


def _ops_of(m: dict, manifest: Optional[dict]) -> list[dict]:
    """The ops of measure() data, or (older data) of the manifest's layers."""
    if m.get("ops"):
        return m["ops"]
    return [{"index": layer.get("index", i), "type": layer.get("kind", ""), "kind": layer.get("cell", ""),
             "source": layer.get("source", "") or "", "bidirectional": bool(layer.get("bidirectional"))}
            for i, layer in enumerate((manifest or {}).get("layers", []))]


def layer_names(ops: Sequence[dict]) -> list[str]:
    """One name per op: its PyTorch module path ("encoder.rnn"); the kind and index when it has
    none ("SelectLast (op 1)") or shares it with another op."""
    sources = [o.get("source", "") for o in ops]
    names = []
    for i, o in enumerate(ops):
        src = o.get("source", "")
        typ, k = o.get("type", "").removeprefix("Q") or "op", o.get("kind", "")
        kind = _KIND_NAMES.get(k) or (f"{typ} {k}" if k else typ)
        if not src:
            names.append(f"{kind} (op {i})")
        elif sources.count(src) > 1:
            names.append(f"{src} ({kind}, op {i})")
        else:
            names.append(src)
    return names


def tensor_label(name: str, ops: Sequence[dict]) -> str:
    """'op0.d1.h' -> 'encoder.rnn · reverse · h'; 'op2.out' -> 'head · output'."""
    if name == "input":
        return "model input"
    head, _, rest = name.partition(".")
    try:
        i = int(head[2:])
    except ValueError:
        return name
    names = layer_names(ops)
    op = ops[i] if i < len(ops) else {}
    parts = [names[i] if i < len(names) else f"op {i}"]
    bits = rest.split(".")
    if len(bits) == 2 and bits[0][:1] == "d" and bits[0][1:].isdigit():
        if op.get("bidirectional"):
            parts.append("forward" if bits[0] == "d0" else "reverse")
        bits = bits[1:]
    if rest:
        parts.append(_TENSOR_NAMES.get(".".join(bits), ".".join(bits)))
    return " · ".join(parts)


def clipped_text(sat: dict, ops: Sequence[dict]) -> str:
    """The manifest's saturation counts of one data set ({"op0": {"clipped", "values"}, ...}) in
    the report's names: 'encoder.rnn: 17 of 40,000 values (0.043%)'."""
    return "; ".join(f"{tensor_label(site, ops)}: {e['clipped']:,} of {e['values']:,} values "
                     f"({100 * e['clipped'] / max(e['values'], 1):.2g}%)" for site, e in sat.items())


# ----------------------------------------------------------------------------- measurements
def measure(graph: Graph, q: QModel, x: np.ndarray, labels: Optional[np.ndarray] = None,
            lengths: Optional[np.ndarray] = None) -> dict:
    """Everything the report shows of the model itself, as plain JSON-able data. Sequences of
    different lengths (``lengths``) each run for their own length, as on the chip (padding is
    never run); values of every group are pooled per tensor, and per step where they exist."""
    from .quant.calibrate import CalibrationSet
    n = int(x.shape[0])
    pairs: dict = {}                       # tensor name -> [(float trace, integer trace) per length group]
    refs, outs, order = [], [], []
    for idx, steps in CalibrationSet(x, lengths).sequences_by_length():
        xs = x[idx, :steps]
        ref_trace: dict = {}
        ref = run_float(graph, xs, trace=ref_trace)
        yq, qt = trace_quant(q, xs)
        refs.append(np.asarray(ref, np.float64))
        outs.append(yq * q.output_scale)
        order.append(idx)
        for name, qa in qt.items():
            fa = ref_trace.get(name)
            if fa is not None and np.shape(fa) == np.shape(qa):
                pairs.setdefault(name, []).append((np.asarray(fa, np.float64), np.asarray(qa, np.float64)))
    ops = op_info(graph)

    def pooled(parts: list, sl=np.s_[...]) -> tuple[np.ndarray, np.ndarray]:
        return (np.concatenate([f[sl].ravel() for f, _ in parts]), np.concatenate([g[sl].ravel() for _, g in parts]))

    tensors = []
    for name, parts in pairs.items():
        fa, qa = pooled(parts)
        row = {"name": name, "label": tensor_label(name, ops), "snr_db": _finite(snr_db(fa, qa)),
               "max_abs_error": float(np.max(np.abs(fa - qa))) if fa.size else 0.0}
        if name.endswith(".gates"):                      # per gate: which one loses precision
            op = graph.ops[int(name.split(".")[0][2:])]
            hid = op.hidden_size
            row["per_gate_snr_db"] = {g: _finite(snr_db(*pooled(parts, np.s_[..., k * hid:(k + 1) * hid])))
                                      for k, g in enumerate(cell_of(op.kind).gates)}
        if name.endswith(".h") and all(f.ndim == 3 for f, _ in parts):   # does the error grow along the sequence?
            longest = max(f.shape[1] for f, _ in parts)
            row["snr_per_step_db"] = [_finite(snr_db(*pooled([p for p in parts if p[0].shape[1] > t], np.s_[:, t])))
                                      for t in range(longest)]
        tensors.append(row)
    ref_all = np.concatenate([r.reshape(-1, r.shape[-1]) for r in refs])
    out_all = np.concatenate([o.reshape(-1, o.shape[-1]) for o in outs])
    result = {"sequences": n, "precision": q.precision, "output_snr_db": _finite(snr_db(ref_all, out_all)),
              "output_max_abs_error": float(np.max(np.abs(ref_all - out_all))) if out_all.size else 0.0,
              "tensors": tensors, "calibration": q.calibration, "ops": ops}
    classifier = not graph.output_per_step and ref_all.shape[-1] > 1
    if classifier:                         # one row per sequence: back in the caller's order
        ref_seq, out_seq = np.empty((n, ref_all.shape[-1])), np.empty((n, ref_all.shape[-1]))
        for idx, r, o in zip(order, refs, outs):
            ref_seq[idx], out_seq[idx] = r, o
        result["top1_agreement"] = float(top1_agreement(ref_seq, out_seq))
        if labels is not None:
            labels = np.asarray(labels).reshape(-1)
            result["float_accuracy"] = float((np.argmax(ref_seq, -1) == labels).mean())
            result["quant_accuracy"] = float((np.argmax(out_seq, -1) == labels).mean())
    return result


def _finite(v: float) -> Optional[float]:
    """JSON has no inf: an exact match is reported as None ('exact')."""
    return float(v) if np.isfinite(v) else None


# ----------------------------------------------------------------------------- provenance
def command_line(argv: Optional[Sequence[str]] = None) -> str:
    """The command as the user typed it: ``mcu-nn ...`` when run from the CLI (sys.argv)."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    prog = os.path.basename(argv[0])
    if "ipykernel" in argv[0] or prog == "ipython":
        return "Python API, in a notebook / IPython session"
    if prog in ("mcu-nn", "cli.py", "__main__.py"):
        return shlex.join(["mcu-nn", *argv[1:]])
    return shlex.join(argv)


def provenance(*, model: Any = None, manifest: Optional[dict] = None, command: Optional[str] = None) -> dict:
    """Where the numbers come from: mcu-nn version, the model file and its sha256 (or "in-memory
    module"), the export's sha256 (manifest["sha256"]), the date (UTC) and the command."""
    p: dict = {"mcu_nn_version": __version__,
               "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}
    if isinstance(model, (str, os.PathLike)) and Path(model).is_file():
        h = hashlib.sha256()
        with open(model, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        p["model_file"], p["model_sha256"] = str(model), h.hexdigest()
    elif model is None and manifest and manifest.get("source_model"):
        src, sha = str(manifest["source_model"]), manifest.get("source_sha256")
        what = src.strip("<>").removesuffix(" in memory")
        p["model_file"] = src if sha or not src.startswith("<") else f"in-memory module ({what})"
        if sha:
            p["model_sha256"] = sha
    else:
        p["model_file"] = "in-memory module"
    if manifest and manifest.get("sha256"):
        p["export_sha256"] = manifest["sha256"]
    p["command"] = command if command is not None else command_line()
    return p


# ----------------------------------------------------------------------------- chip results
def _flat(d: Any, prefix: str = "") -> dict:
    out: dict = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
    elif isinstance(d, list) and len(d) > 8:
        out[prefix[:-1]] = f"[{len(d)} values]"
    else:
        out[prefix[:-1]] = d
    return out


def _pick(flat: dict, *keys: str) -> Any:
    """The first of ``keys`` present (exact dotted key, or a key ending in '.key')."""
    for key in keys:
        if key in flat and flat[key] is not None:
            return flat[key]
    for key in keys:
        for k, v in flat.items():
            if k.endswith("." + key) and v is not None:
                return v
    return None


def _firmware_size(flat: dict, what: str) -> Any:
    """Flash or RAM of the whole firmware, whatever the result calls it."""
    for k, v in flat.items():
        lk = k.lower().replace(" ", "_")
        if "firmware" in lk and what in lk and isinstance(v, (int, float)) and not isinstance(v, bool):
            return v
    return None            # bench's flash_bytes is model + runtime, not the whole firmware: not shown here


def chip_dict(result: Any) -> dict:
    """A chip result as plain JSON-able data: a dict as it is; a result object (serial_test's,
    bench's) through its ``as_dict()`` or its dataclass fields (arrays left out)."""
    import dataclasses
    if isinstance(result, dict):
        return result
    if hasattr(result, "as_dict"):
        d = result.as_dict()
    elif dataclasses.is_dataclass(result):
        d = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    else:
        raise McuNnError(f"chip results: expected dicts or serial-test/bench results, got {type(result).__name__}")

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, np.ndarray):
            return None                      # the board's raw outputs: not for the report
        if isinstance(v, np.generic):
            return v.item()
        return v if isinstance(v, (str, int, float, bool, list, type(None))) else str(v)
    return {k: x for k, x in plain(d).items() if x is not None}


def chip_row(result: Any) -> dict:
    """A serial-test or bench result (the JSON of ``--json``, or the API's dict) as one row of the
    chip table: board, checked/passed, bit-exact, per-step count and unit, whole-firmware flash/RAM,
    accuracy. Unknown fields are kept under "other" and shown, never refused."""
    result = chip_dict(result)
    flat = _flat(result)
    command = result.get("command") or ("bench" if "instructions_per_step" in flat else "serial-test")
    board = _pick(flat, "board", "device.board") or "?"
    checked = _pick(flat, "vectors", "sequences", "vectors_checked", "checked")
    passed = _pick(flat, "passed", "vectors_passed", "sequences_passed")
    ok = _pick(flat, "ok")
    exact = _pick(flat, "bit_exact", "board_equals_simulator")
    if exact is None and ok is not None and command == "serial-test":
        exact = bool(ok)
    if exact is None and command == "bench" and isinstance(checked, int) and checked > 0:
        exact = True                     # bench refuses to report unless its vectors matched
    if passed is None and exact and isinstance(checked, int):
        passed = checked
    per_step = _pick(flat, "per_step", "instructions_per_step", "cycles_per_step", "mean_cycles_per_step")
    unit = _pick(flat, "unit", "cycle_unit", "per_step_unit") or ("instructions" if "instructions_per_step" in flat
                                                                   else "cycles")
    row = {"command": command, "board": str(board), "checked": checked, "passed": passed, "ok": ok,
           "bit_exact": exact, "per_step": per_step, "unit": str(unit),
           "flash_bytes": _firmware_size(flat, "flash"), "ram_bytes": _firmware_size(flat, "ram"),
           "accuracy": _pick(flat, "board_accuracy", "accuracy", "labels_accuracy"),
           "sha256": _pick(flat, "model_sha256", "sha256", "device.sha256")}
    used = {"command", "schema", "board", "device.board", "vectors", "sequences", "vectors_checked", "checked",
            "passed", "vectors_passed", "sequences_passed", "ok", "bit_exact", "board_equals_simulator",
            "per_step", "instructions_per_step", "cycles_per_step", "mean_cycles_per_step", "unit", "cycle_unit",
            "per_step_unit", "board_accuracy", "accuracy", "labels_accuracy"}
    row["other"] = {k: v for k, v in flat.items() if k not in used and not isinstance(v, (dict, list))
                    and v is not None and v != ""}
    return row


def load_chip_results(paths: Iterable[str | Path]) -> list[dict]:
    """Chip results from the files ``serial-test --json`` / ``bench --json`` print: one JSON object,
    a list of them, or one object per line."""
    results: list[dict] = []
    for path in paths:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise McuNnError(f"chip results {path}: cannot read it ({e.strerror or e})") from None
        try:
            docs = [json.loads(text)]
        except ValueError:
            try:
                docs = [json.loads(line) for line in text.splitlines() if line.strip()]
            except ValueError as e:
                raise McuNnError(f"chip results {path}: not JSON ({e}); save the output of "
                                 "`mcu-nn serial-test ... --json` or `mcu-nn bench ... --json`") from None
        for doc in docs:
            for d in (doc if isinstance(doc, list) else [doc]):
                if not isinstance(d, dict):
                    raise McuNnError(f"chip results {path}: expected JSON objects, found {type(d).__name__}")
                if d.get("command") == "bench" and isinstance(d.get("models"), list):   # docs/json.md#bench
                    results.extend({"command": "bench", **m} for m in d["models"] if isinstance(m, dict))
                else:
                    results.append(d)
        if not docs:
            raise McuNnError(f"chip results {path} is empty")
    return results


# ----------------------------------------------------------------------------- the verdict
def _pct(v: float) -> str:
    return f"{v:.1%}"


def verdict(m: dict, manifest: Optional[dict] = None, chip: Sequence[dict] = (),
            criteria: Optional[dict] = None) -> dict:
    """Deployable at this precision or not, and why: {"status": "ok"|"warn"|"fail", "deployable",
    "headline", "checks": [(status, text), ...]}."""
    c = {**CRITERIA, **(criteria or {}), **(m.get("criteria") or {})}
    prec = (manifest or {}).get("precision") or m.get("precision") or "this precision"
    n, on = m["sequences"], m.get("measured_on", "calibration")
    checks: list[tuple[str, str]] = []
    if "top1_agreement" in m:
        a = m["top1_agreement"]
        k = int(round(a * n))
        checks.append(("ok" if a >= c["min_top1_agreement"] - 1e-12 else "fail",
                       f"top-1 class unchanged on {k} of {n} {on} sequences ({_pct(a)}; "
                       f"needs at least {c['min_top1_agreement']:.0%})"))
    else:
        s = m["output_snr_db"]
        good = s is None or s >= c["min_output_snr_db"]
        checks.append(("ok" if good else "fail",
                       f"output SNR vs the float model {'exact' if s is None else f'{s:.1f} dB'} on {n} {on} "
                       f"sequences (threshold {c['min_output_snr_db']:g} dB)"))
    if "float_accuracy" in m:
        fa, qa = m["float_accuracy"], m["quant_accuracy"]
        drop = fa - qa
        checks.append(("ok" if drop <= c["max_accuracy_drop"] + 1e-12 else "fail",
                       f"task accuracy on {n} labelled sequences: float {_pct(fa)}, {prec} {_pct(qa)} "
                       f"({100 * (qa - fa):+.1f} points; may fall by at most {100 * c['max_accuracy_drop']:g})"))
    sat = (manifest or {}).get("saturation") or {}
    clipped_sat = [w for w in ("calibration", "test_vectors") if sat.get(w)]
    ops = _ops_of(m, manifest)
    clipped_cal = [tensor_label(k, ops) for k, v in (m.get("calibration") or {}).items()
                   if v.get("clipped_fraction", 0) > 0]
    if clipped_sat:
        for w in clipped_sat:
            where = "on the calibration data" if w == "calibration" else "on the test vectors"
            checks.append(("warn", f"clipped {where} (the chip clips the same values): "
                                   + clipped_text(sat[w], ops)))
    elif clipped_cal:
        checks.append(("warn", f"values beyond the calibrated range (clipped) at {', '.join(clipped_cal)}"))
    elif manifest is not None and "saturation" in manifest:
        checks.append(("ok", "nothing clipped on the calibration data or the test vectors"))
    else:
        checks.append(("ok", "nothing clipped within the calibrated ranges"))
    export_sha = (manifest or {}).get("sha256")
    for r in map(chip_row, chip):
        where = f"board {r['board']} ({r['command']})"
        if r["sha256"] and export_sha and isinstance(r["sha256"], str) and len(r["sha256"]) == 64 \
                and r["sha256"] != export_sha:
            checks.append(("fail", f"{where} ran another export (sha256 {r['sha256'][:12]}…, this one "
                                   f"{export_sha[:12]}…)"))
            continue
        count = (f"{r['passed']} of {r['checked']} " if r["passed"] is not None and r["checked"] is not None
                 else f"{r['checked']} " if r["checked"] is not None else "")
        if r["bit_exact"] is False or r["ok"] is False:
            checks.append(("fail", f"{where}: {count}sequences match the simulator: the chip does not compute "
                                   "what the host predicted"))
        elif r["bit_exact"]:
            checks.append(("ok", f"{where}: {count}sequences bit-exact with the simulator"))
        else:
            checks.append(("warn", f"{where}: ran, but the result does not say whether the board matched"))
    if not chip:
        checks.append(("info", "not run on a chip yet: `mcu-nn serial-test DIR --board B --json > st.json`, "
                               "then `mcu-nn report DIR -o FILE --chip st.json`"))
    status = "fail" if any(s == "fail" for s, _ in checks) else "warn" if any(s == "warn" for s, _ in checks) \
        else "ok"
    main = checks[0][1]
    if status == "ok":
        headline = f"Deployable at {prec}: {main}."
    elif status == "warn":
        caveats = "; ".join(t for s, t in checks if s == "warn")
        headline = f"Deployable at {prec}, with a caveat: {main}, but {caveats}."
    else:
        headline = f"Not deployable at {prec} as it stands: " + "; ".join(t for s, t in checks if s == "fail") + "."
    return {"status": status, "deployable": status != "fail", "headline": headline, "checks": checks,
            "criteria": c}


# ----------------------------------------------------------------------------- plots
def _plots(m: dict, title: str, ops: Sequence[dict], criteria: dict) -> dict[str, bytes]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return {}
    pngs: dict[str, bytes] = {}
    thr = criteria["min_output_snr_db"]

    def save(fig, name: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        pngs[name] = buf.getvalue()

    rows = m["tensors"]
    labels = [tensor_label(r["name"], ops) for r in rows]
    snr = [r["snr_db"] if r["snr_db"] is not None else 120.0 for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.6))
    colors = ["#c0392b" if s < thr else "#e67e22" if s < GOOD_SNR_DB else "#27ae60" for s in snr]
    ax.barh(range(len(rows)), snr, color=colors)
    for i, (s, r) in enumerate(zip(snr, rows)):
        ax.text(s + 1, i, "exact" if r["snr_db"] is None else f"{s:.1f}", va="center", fontsize=7)
    ax.axvline(thr, color="#c0392b", ls="--", lw=1)
    ax.axvline(GOOD_SNR_DB, color="#e67e22", ls=":", lw=1)
    top = ax.get_xaxis_transform()                   # x in data, y in axes: just above the plot
    ax.text(thr, 1.01, f"threshold {thr:g} dB ", color="#c0392b", fontsize=8, va="bottom", ha="right", transform=top)
    ax.text(GOOD_SNR_DB, 1.01, f" good: {GOOD_SNR_DB:g} dB", color="#b9770e", fontsize=8, va="bottom", ha="left",
            transform=top)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(snr + [GOOD_SNR_DB]) * 1.12)
    ax.set_xlabel("SNR float vs integer (dB, higher is better; 120 = exact)")
    ax.set_title(f"{title}: where quantisation error enters", pad=14)
    save(fig, "snr_per_tensor")

    steps = [(lab, r) for lab, r in zip(labels, rows) if "snr_per_step_db" in r]
    if steps:
        fig, ax = plt.subplots(figsize=(9, 3.5))
        lo, hi = thr, thr
        for lab, r in steps:
            ys = [v if v is not None else 120.0 for v in r["snr_per_step_db"]]
            ax.plot(range(1, len(ys) + 1), ys, marker="." if len(ys) <= 60 else None, label=lab)
            lo, hi = min(lo, *ys), max(hi, *ys)
        ax.axhline(thr, color="#c0392b", ls="--", lw=1, label=f"threshold {thr:g} dB")
        ax.set_ylim(max(0.0, lo - 5), hi + 5)      # the threshold is always in view: no zoomed-in drama
        from matplotlib.ticker import MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("time step (1 = first)")
        ax.set_ylabel("SNR of h vs float (dB)")
        ax.set_title("does the error accumulate along the sequence?")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        ax.grid(alpha=0.3)
        save(fig, "snr_per_step")

    cal = [(k, v) for k, v in m["calibration"].items() if v.get("scale", 0) > 0]
    if cal:
        fig, ax = plt.subplots(figsize=(9, 0.32 * len(cal) + 1.8))
        rng = [v["scale"] * 32767 for _, v in cal]
        seen = [max(abs(v["min"]), abs(v["max"])) for _, v in cal]
        y = np.arange(len(cal))
        ax.barh(y, rng, color="#bdc3c7", label="range the int16 code covers (scale x 32767)")
        clipped = [v["clipped_fraction"] > 0 for _, v in cal]
        ax.scatter([s for s, c in zip(seen, clipped) if not c], y[[not c for c in clipped]], color="#2c3e50",
                   zorder=3, label="largest |value| seen in calibration")
        if any(clipped):
            ax.scatter([s for s, c in zip(seen, clipped) if c], y[clipped], color="#c0392b", marker="X", s=60,
                       zorder=3, label="largest |value|: some values clipped")
        ax.set_xscale("log")
        from matplotlib.ticker import LogLocator
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.grid(axis="x", which="major", alpha=0.3)
        ax.set_yticks(y, [tensor_label(k, ops) for k, _ in cal], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("|value| (log scale)")
        ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
        save(fig, "calibration_ranges")
    return pngs


# ----------------------------------------------------------------------------- tables
def _fmt(v, spec: str = ".1f", none: str = "exact") -> str:
    return none if v is None else format(v, spec)


def _bytes(v) -> str:
    return "-" if v is None else f"{v:,} B" if isinstance(v, int) else str(v)


def _summary_rows(m: dict, manifest: Optional[dict]) -> list[tuple[str, str]]:
    on = m.get("measured_on", "calibration")
    rows = [("output SNR vs float", f"{_fmt(m['output_snr_db'])} dB on {m['sequences']} {on} sequences"),
            ("output max |error|", f"{m['output_max_abs_error']:.4g}")]
    if "top1_agreement" in m:
        rows.append(("top class agrees with float", _pct(m["top1_agreement"])))
    if "float_accuracy" in m:
        rows.append(("accuracy (labels): float / integer",
                     f"{_pct(m['float_accuracy'])} / {_pct(m['quant_accuracy'])}"))
    if manifest:
        rows.append(("precision", str(manifest.get("precision"))))
        rows.append(("model constants (flash)", _bytes(manifest.get("flash_bytes", 0))))
        rows.append(("model state + scratch (RAM)", _bytes(manifest.get("ram_bytes", 0))))
        rows.append(("MACs per step", f"{manifest.get('macs_per_step', 0):,}"))
    return rows


PROVENANCE_ROWS = (("mcu-nn version", "mcu_nn_version"), ("model file", "model_file"),
                   ("model sha256", "model_sha256"), ("export sha256", "export_sha256"),
                   ("date", "date_utc"), ("command", "command"), ("re-rendered", "rerendered"))


def _provenance_rows(p: dict) -> list[tuple[str, str]]:
    return [(label, str(p[key])) for label, key in PROVENANCE_ROWS if p.get(key)]


def layer_rows(m: dict, manifest: Optional[dict]) -> list[list[str]]:
    """Per layer: name, what, MACs/step, model constants (flash), state (RAM); then the totals."""
    if not manifest or not manifest.get("layers"):
        return []
    ops = _ops_of(m, manifest)
    names = layer_names(ops)
    per_value = 4 if manifest.get("precision") == "float32" else 2
    state: dict[int, int] = {}
    for s in (manifest.get("state") or {}).get("slots", []):
        state[s["op"]] = state.get(s["op"], 0) + s["size"] * per_value
    rows = []
    for layer in manifest["layers"]:
        i = layer.get("index", len(rows))
        what = layer.get("kind", "").removeprefix("Q")
        if layer.get("cell"):
            what = _KIND_NAMES.get(layer["cell"], layer["cell"]) + (" x2" if layer.get("bidirectional") else "")
        if layer.get("input_size") is not None and layer.get("output_size") is not None:
            what += f" {layer['input_size']}->{layer.get('hidden_size', layer['output_size'])}"
        rows.append([names[i] if i < len(names) else f"op {i}", what, f"{layer.get('macs_per_step', 0):,}",
                     f"{layer.get('flash_bytes', 0):,}", f"{state.get(i, 0):,}" if state.get(i) else "-"])
    ram = manifest.get("ram_bytes", 0)
    scratch = ram - sum(state.values())
    if scratch > 0:
        rows.append(["(shared scratch)", "", "", "", f"{scratch:,}"])
    rows.append(["total", "", f"{manifest.get('macs_per_step', 0):,}", f"{manifest.get('flash_bytes', 0):,}",
                 f"{ram:,}"])
    return rows


LAYER_HEADER = ["layer", "what", "MACs / step", "model constants (flash B)", "state (RAM B)"]
CHIP_HEADER = ["board", "run", "sequences passed", "bit-exact", "per step", "whole firmware flash",
               "whole firmware RAM", "accuracy on board"]


def chip_table(chip: Sequence[dict]) -> list[tuple[list[str], dict]]:
    out = []
    for r in map(chip_row, chip):
        passed = ("-" if r["checked"] is None else f"{r['passed']} of {r['checked']}" if r["passed"] is not None
                  else f"{r['checked']}")
        exact = {True: "yes", False: "NO", None: "-"}[None if r["bit_exact"] is None else bool(r["bit_exact"])]
        per = "-" if r["per_step"] is None else (f"{r['per_step']:,.0f} {r['unit']}"
                                                  if isinstance(r["per_step"], (int, float)) else str(r["per_step"]))
        acc = r["accuracy"]
        acc = "-" if acc is None else _pct(acc) if isinstance(acc, float) and acc <= 1 else str(acc)
        out.append(([r["board"], r["command"], passed, exact, per, _bytes(r["flash_bytes"]),
                     _bytes(r["ram_bytes"]), acc], r["other"]))
    return out


SIZE_NOTE = ("Sizes: <i>model constants</i> are the model's const arrays (weights, biases, tables) in flash; "
             "<i>state</i> is the caller-owned RAM of the model. The <i>whole firmware</i> on a board (chip "
             "results) adds the model code, the shared runtime and the firmware around them (the serial server, or "
             "the bench harness): that is the figure that says whether it fits your part.")


# ----------------------------------------------------------------------------- writers
def _worst(m: dict, ops: Sequence[dict]) -> str:
    rows = [r for r in m["tensors"] if r["snr_db"] is not None and r["name"] != "input"]
    if not rows:
        return "nowhere: every traced tensor matches the float model exactly"
    # the first tensor (in trace order, which is data-flow order) within 1 dB of the lowest SNR: the
    # tensors after it (a selection, a copy) inherit its error rather than add their own
    low = min(r["snr_db"] for r in rows)
    w = next(r for r in rows if r["snr_db"] <= low + 1.0)
    return f"mostly at {tensor_label(w['name'], ops)} (SNR {w['snr_db']:.1f} dB)"


_MARK = {"ok": "✔", "warn": "!", "fail": "✘", "info": "·"}
_CSS = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
        "font-size:13px;text-align:right;vertical-align:top}td:first-child,th:first-child{text-align:left}"
        "th{background:#f4f4f4}.bad{background:#fadbd8}.warn{background:#fdebd0}img{max-width:100%}"
        ".verdict{border-left:8px solid;padding:.6em 1em;margin:1em 0}.verdict p{margin:.3em 0;font-size:17px}"
        ".v-ok{border-color:#27ae60;background:#eafaf1}.v-warn{border-color:#e67e22;background:#fef5e7}"
        ".v-fail{border-color:#c0392b;background:#fdedec}.verdict ul{list-style:none;padding-left:.2em;margin:.4em 0}"
        ".verdict li{margin:.2em 0}.m-ok{color:#1e8449}.m-warn{color:#b9770e}.m-fail{color:#c0392b}"
        ".m-info{color:#777}.prov td{font-size:12px;color:#444}.prov td:last-child{text-align:left;"
        "font-family:monospace;word-break:break-all}code{background:#f4f4f4;padding:0 3px}"
        ".note{font-size:13px;color:#555}details{font-size:12px;color:#444}")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    e = html.escape
    attr = f" class='{cls}'" if cls else ""
    return (f"<table{attr}><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>" + "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
            + "</table>")


def render_html(data: dict, pngs: dict[str, bytes], manifest: Optional[dict] = None,
                chip: Sequence[dict] = ()) -> str:
    e = html.escape
    m, title = data, data.get("title") or "model"
    v = verdict(m, manifest, chip)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}: quantisation report</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}: quantisation report</h1>",
             f"<div class='verdict v-{v['status']}'><p><b>Verdict:</b> {e(v['headline'])}</p><ul>"
             + "".join(f"<li><span class='m-{s}'>{_MARK[s]}</span> {e(t)}</li>" for s, t in v["checks"])
             + "</ul></div>",
             f"<p><b>Where the error enters:</b> {e(_worst(m, _ops_of(m, manifest)))}.</p>",
             "<table>" + "".join(f"<tr><td>{e(k)}</td><td>{e(val)}</td></tr>" for k, val in _summary_rows(m, manifest))
             + "</table>"]
    prov = _provenance_rows(m.get("provenance") or {})
    if prov:
        parts.append("<h2>Provenance</h2><table class='prov'>"
                     + "".join(f"<tr><td>{e(k)}</td><td>{e(val)}</td></tr>" for k, val in prov) + "</table>")
    if chip:
        parts.append("<h2>On the chip</h2>" + _table(CHIP_HEADER, [row for row, _ in chip_table(chip)]))
        for (row, other) in chip_table(chip):
            if other:
                parts.append(f"<details><summary>all fields of {e(row[1])} on {e(row[0])}</summary>"
                             + _table(["field", "value"], sorted((k, str(val)) for k, val in other.items()))
                             + "</details>")
    lrows = layer_rows(m, manifest)
    if lrows:
        parts.append("<h2>Per layer: flash and RAM</h2>" + _table(LAYER_HEADER, lrows)
                     + f"<p class='note'>{SIZE_NOTE}</p>")
    for name, caption in (("snr_per_tensor", "SNR per tensor (red below the threshold, orange below "
                                             f"{GOOD_SNR_DB:g} dB)"),
                          ("snr_per_step", "SNR of each recurrent layer's h along the sequence"),
                          ("calibration_ranges", "Calibration ranges and clipping")):
        if name in pngs:
            b64 = base64.b64encode(pngs[name]).decode()
            parts.append(f"<h2>{e(caption)}</h2><img alt='{name}' src='data:image/png;base64,{b64}'>")
    if not pngs:
        parts.append("<p><i>plots need matplotlib: pip install 'mcu-nn[examples]'</i></p>")
    thr = v["criteria"]["min_output_snr_db"]
    parts.append("<h2>Per tensor: float vs integer</h2><table><tr><th>tensor</th><th>SNR dB</th>"
                 "<th>max |error|</th><th>per gate SNR dB</th></tr>")
    for r in m["tensors"]:
        s = r["snr_db"]
        cls = "" if s is None or s >= GOOD_SNR_DB else (" class='warn'" if s >= thr else " class='bad'")
        gates = ", ".join(f"{g}: {_fmt(val)}" for g, val in r.get("per_gate_snr_db", {}).items())
        parts.append(f"<tr{cls}><td>{e(tensor_label(r['name'], _ops_of(m, manifest)))}</td><td>{_fmt(s)}</td>"
                     f"<td>{r['max_abs_error']:.3g}</td><td>{e(gates)}</td></tr>")
    parts.append("</table><h2>Calibration ranges</h2><table><tr><th>tensor</th><th>min</th><th>max</th>"
                 "<th>int16 covers ±</th><th>scale</th><th>clipped</th></tr>")
    for k, c in m["calibration"].items():
        cls = " class='bad'" if c["clipped_fraction"] > 0 else ""
        parts.append(f"<tr{cls}><td>{e(tensor_label(k, _ops_of(m, manifest)))}</td><td>{c['min']:.4g}</td>"
                     f"<td>{c['max']:.4g}</td><td>{c['scale'] * 32767:.4g}</td><td>{c['scale']:.3g}</td>"
                     f"<td>{c['clipped_fraction']:.3%}</td></tr>")
    parts.append("</table><p class='note'>Gate pre-activations are Q3.12 (±8, where sigmoid/tanh are flat), h of "
                 "tanh cells Q15; their 'clipped' counts values past those fixed formats. Re-render this page "
                 "with chip results: <code>mcu-nn report EXPORT_DIR -o FILE --chip results.json</code>.</p>"
                 "</body></html>")
    return "\n".join(parts)


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    esc = lambda s: str(s).replace("|", "\\|")   # noqa: E731
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(esc(c) for c in row) + " |" for row in rows]


def render_md(data: dict, images: dict[str, str], manifest: Optional[dict] = None,
              chip: Sequence[dict] = ()) -> str:
    m, title = data, data.get("title") or "model"
    v = verdict(m, manifest, chip)
    ops = _ops_of(m, manifest)
    lines = [f"# {title}: quantisation report", "", f"**Verdict:** {v['headline']}", ""]
    lines += [f"- {_MARK[s]} {t}" for s, t in v["checks"]]
    lines += ["", f"Where the error enters: {_worst(m, ops)}.", ""]
    lines += _md_table(["", ""], _summary_rows(m, manifest))
    prov = _provenance_rows(m.get("provenance") or {})
    if prov:
        lines += ["", "## Provenance", ""] + _md_table(["", ""], [(k, f"`{val}`") for k, val in prov])
    if chip:
        lines += ["", "## On the chip", ""] + _md_table(CHIP_HEADER, [row for row, _ in chip_table(chip)])
    lrows = layer_rows(m, manifest)
    if lrows:
        lines += ["", "## Per layer: flash and RAM", ""] + _md_table(LAYER_HEADER, lrows)
        lines += ["", SIZE_NOTE.replace("<i>", "*").replace("</i>", "*")]
    for name, rel in images.items():
        lines += ["", f"![{name}]({rel})"]
    lines += ["", "## Per tensor: float vs integer", ""]
    lines += _md_table(["tensor", "SNR dB", "max abs error", "per gate SNR dB"],
                       [(tensor_label(r["name"], ops), _fmt(r["snr_db"]), f"{r['max_abs_error']:.3g}",
                         ", ".join(f"{g}: {_fmt(val)}" for g, val in r.get("per_gate_snr_db", {}).items()))
                        for r in m["tensors"]])
    lines += ["", "## Calibration ranges", ""]
    lines += _md_table(["calibrated tensor", "min", "max", "int16 covers ±", "clipped"],
                       [(tensor_label(k, ops), f"{c['min']:.4g}", f"{c['max']:.4g}", f"{c['scale'] * 32767:.4g}",
                         f"{c['clipped_fraction']:.3%}") for k, c in m["calibration"].items()])
    return "\n".join(lines) + "\n"


def render_report(path: str | Path, data: dict, *, manifest: Optional[dict] = None,
                  chip: Sequence[dict] = ()) -> Path:
    """Write the report of saved ``data`` (measure() + "title", "provenance", "measured_on") to
    ``path``: .html (one self-contained file, plots embedded) or .md (PNGs in ``<stem>_files/``).
    A pure function of JSON-able data: the export's model.json holds all of it."""
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm", ".md"):
        raise McuNnError(f"report {path}: unknown type {path.suffix or '(none)'}; name it .html or .md")
    crit = {**CRITERIA, **(data.get("criteria") or {})}
    pngs = _plots(data, data.get("title") or "model", _ops_of(data, manifest), crit)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".md":
        files = path.parent / f"{path.stem}_files"
        images = {}
        if pngs:
            files.mkdir(exist_ok=True)
            for name, png in pngs.items():
                (files / f"{name}.png").write_bytes(png)
                images[name] = f"{files.name}/{name}.png"
        path.write_text(render_md(data, images, manifest, chip), encoding="utf-8")
    else:
        path.write_text(render_html(data, pngs, manifest, chip), encoding="utf-8")
    return path


def write_report(path: str | Path, graph: Graph, q: QModel, *, calib: np.ndarray,
                 test: Optional[tuple[np.ndarray, np.ndarray]] = None, manifest: Optional[dict] = None,
                 export_dir: Optional[Path] = None, labels: Optional[np.ndarray] = None, model: Any = None,
                 command: Optional[str] = None, chip: Sequence[Any] = (),
                 criteria: Optional[dict] = None, chip_results: Sequence[Any] = (),
                 lengths: Optional[np.ndarray] = None) -> Path:
    """Measure and write the report to ``path`` (.html or .md). Measures on ``test`` (inputs,
    labels) when given, else on ``calib`` (with ``labels`` for task accuracy). ``model`` (a path,
    or the module itself) and ``command`` go into the provenance (default: sys.argv); ``chip``:
    serial-test / bench results (dicts as ``--json`` prints them, or the result objects;
    ``chip_results`` is the same). With ``export_dir``, everything the page shows is saved
    in its model.json under "quantisation_report", for ``mcu-nn report`` to re-render."""
    if q.precision == "float32":
        raise McuNnError("--report compares integer arithmetic with float; export int8 or int16 to get one")
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm", ".md"):
        raise McuNnError(f"report {path}: unknown type {path.suffix or '(none)'}; name it .html or .md")
    x, lab, on = (test[0], test[1], "test") if test is not None else (calib, labels, "calibration")
    if lab is not None and np.asarray(lab).reshape(-1).shape[0] != x.shape[0]:
        raise McuNnError(f"report labels: {np.asarray(lab).reshape(-1).shape[0]} labels for {x.shape[0]} "
                         f"{on} sequences; give one label per sequence")
    if labels is not None and test is None and (graph.output_per_step or q.output_size < 2):
        raise McuNnError("report labels: task accuracy needs a classifier (one vector of class scores per "
                         "sequence); this model's outputs are " + ("per step" if graph.output_per_step
                                                                   else "a single value"))
    m = measure(graph, q, x, lab, lengths=None if test is not None else lengths)
    data = {**m, "title": q.name or "model", "measured_on": on,
            "criteria": {**CRITERIA, **(criteria or {})},
            "provenance": provenance(model=model, manifest=manifest, command=command)}
    data["verdict"] = {k: v for k, v in verdict(data, manifest).items() if k != "criteria"}
    render_report(path, data, manifest=manifest, chip=[chip_dict(r) for r in [*chip, *chip_results]])
    if export_dir is not None and (Path(export_dir) / "model.json").is_file():
        from .exportdir import update_manifest
        update_manifest(export_dir, {"quantisation_report": data})
    return path


def measure_export(export_dir: str | Path, path: str | Path, *, calib: Any, labels: Any = None,
                   chip: Sequence[dict] = (), command: Optional[str] = None) -> Path:
    """``mcu-nn report DIR --calib FILE``: measure again, on any inputs, from the float and the
    quantised model the export keeps (float_model.npz, qmodel.npz); no model file needed."""
    from .exportdir import open_export, read_float_model, read_qmodel
    from .quant.calibrate import calibration_set_from
    ex = open_export(Path(export_dir), vectors=False)
    graph, q = read_float_model(ex), read_qmodel(ex)
    if graph is None or q is None:
        raise McuNnError(f"{ex.dir} keeps no float model (float_model.npz) to measure against; export it "
                         "again with this mcu-nn, or with --report")
    data = calibration_set_from(calib, graph, where=f"report inputs {calib}" if isinstance(calib, (str, Path))
                                else "report inputs")
    if isinstance(labels, str) and isinstance(calib, (str, Path)):
        labels = report_labels_arg(str(path), labels, str(calib))
    return write_report(path, graph, q, calib=data.x, lengths=data.lengths, labels=labels, manifest=ex.manifest,
                        export_dir=ex.dir, command=command, chip=chip)


def rerender(export_dir: str | Path, path: str | Path, *, chip: Sequence[dict] = (),
             command: Optional[str] = None, calib: Any = None, labels: Any = None) -> Path:
    """``mcu-nn report DIR -o FILE``: the report of an export, from its model.json alone (no model
    needed), with chip results added."""
    from .exportdir import load_manifest
    manifest = load_manifest(Path(export_dir))
    data = manifest.get("quantisation_report")
    if calib is not None:
        return measure_export(export_dir, path, calib=calib, labels=labels, chip=chip, command=command)
    if not isinstance(data, dict) or "tensors" not in data or "calibration" not in data:
        raise McuNnError(f"{Path(export_dir) / 'model.json'} holds no saved report data; pass --calib FILE "
                         "(inputs to measure on, with the float model the export keeps) or export with --report")
    data = {**data, "title": data.get("title") or manifest.get("name"), "provenance": {
        **(data.get("provenance") or {}),
        "rerendered": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC by mcu-nn "
                      f"{__version__}: {command if command is not None else command_line()}"}}
    return render_report(path, data, manifest=manifest, chip=chip)


# ----------------------------------------------------------------------------- labels
def report_labels_arg(report: Optional[str], spec: Optional[str], calib: Optional[str]) -> Optional[np.ndarray]:
    """The CLI's ``--report-labels`` (checked before the export runs, so a typo costs no time)."""
    if spec is None:
        return None
    if not report:
        raise McuNnError("--report-labels needs --report FILE (the labels give the report's task accuracy)")
    return load_report_labels(spec, calib)


LABEL_KEYS = ("y", "labels", "label", "targets", "target")


def load_report_labels(spec: str, calib: Optional[str] = None) -> np.ndarray:
    """``--report-labels``: an .npy of integer labels, an .npz (its only array, or y/labels, or
    FILE.npz:KEY), or the name of an array in the calibration .npz. One clear error otherwise."""
    where = f"--report-labels {spec}"
    file, key = Path(spec), None
    if not file.is_file() and ":" in spec:
        head, _, tail = spec.rpartition(":")
        if Path(head).is_file():
            file, key = Path(head), tail
    if not file.is_file():
        if calib and str(calib).lower().endswith(".npz") and Path(calib).is_file():
            file, key = Path(calib), spec
        else:
            raise McuNnError(f"{where}: no such file (give an .npy/.npz of integer labels, one per calibration "
                             "sequence, or the name of an array in the --calib .npz)")
    try:
        z = np.load(file, allow_pickle=False)
    except Exception as e:       # not an array file, an object array, a truncated zip: one line
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise McuNnError(f"{where}: not a numpy .npy/.npz file ({msg[:100]})") from None
    if isinstance(z, np.ndarray):
        if key is not None:
            raise McuNnError(f"{where}: {file} is an .npy with one array, not an .npz with {key!r}")
        arr = z
    else:
        with z:
            names = list(z.files)
            if key is None:
                key = names[0] if len(names) == 1 else next((k for k in LABEL_KEYS if k in names), None)
                if key is None:
                    raise McuNnError(f"{where}: {file} holds {', '.join(names)}; say which: {file}:KEY")
            if key not in names:
                raise McuNnError(f"{where}: {file} has no array {key!r} (it holds {', '.join(names)})")
            try:
                arr = z[key]
            except Exception as e:   # an object array (needs pickle), a truncated member
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise McuNnError(f"{where}: array {key!r} of {file} is unreadable ({msg[:100]})") from None
    arr = np.asarray(arr)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or
                             (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)))):
        raise McuNnError(f"{where}: expected one integer class label per sequence (shape (N,)), got "
                         f"{arr.dtype} of shape {arr.shape}")
    return arr.astype(np.int64)
