"""Text reports: what `inspect` and `export` print (per layer: parameters, MACs per step,
flash; totals; how far the quantised model is from the float one)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional, Sequence

from .ir import Graph, param_count

PRECISIONS = ("int8", "int16", "float32")


def _table(headers: Sequence[str], rows: list[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _layer_label(layer: dict) -> str:
    if "cell" in layer:
        bi = " x2" if layer.get("bidirectional") else ""
        proj = f", proj {layer['proj_size']}" if layer.get("proj_size") else ""
        return f"{layer['cell'].upper()}{bi} {layer['input_size']}->{layer['hidden_size']}{proj}"
    kind = layer["kind"].lstrip("Q")
    if kind == "Linear":
        return f"Linear {layer.get('input_size', '?')}->{layer['output_size']}"
    if kind == "Activation":
        return layer.get("activation", "activation")
    if kind == "Embedding":
        return f"Embedding {layer.get('vocab')}x{layer.get('dim')}"
    return {"SelectLast": "out[:, -1]", "FinalHidden": "h_n"}.get(kind, kind)


def _describe(graph: Graph) -> str:
    kind = f"token ids (vocabulary {graph.input_size})" if graph.input_kind == "tokens" \
        else f"{graph.input_size} features per step"
    out = "one output per step" if graph.output_per_step else "one output per sequence"
    post = f", then {graph.postprocess} on the host" if graph.postprocess else ""
    return (f"model {graph.name} from {graph.source_file or '?'}: input {kind}, example length "
            f"{graph.seq_len}; {graph.output_size} outputs, {out}{post}")


def _manifests_per_precision(graph: Graph) -> dict[str, dict]:
    """Sizes come from the real code generator, so inspect and export never disagree."""
    from .codegen import write_export
    from .quant import quantize
    from .quant.calibrate import random_calibration
    from .sim import run
    data = random_calibration(graph, n=4)
    manifests = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in PRECISIONS:
            q = quantize(graph, data, precision)
            manifests[precision] = write_export(q, Path(tmp) / precision, data[:1], run(q, data[:1]))
    return manifests


def fit_line(m: dict) -> str:
    from .build import fit_line as line       # build stands on the board table; report only prints
    return line(m)


def inspect_model(path: str | Path, *, allow_pickle: bool = False,
                  input_shape: Optional[tuple[int, ...]] = None) -> str:
    from .frontend import load_model
    graph = load_model(path, allow_pickle=allow_pickle, input_shape=input_shape)
    manifests = _manifests_per_precision(graph)
    layers = manifests["int8"]["layers"]
    rows = []
    for i, layer in enumerate(layers):
        op = graph.ops[layer["index"]] if layer["index"] < len(graph.ops) else None
        rows.append([_layer_label(layer), layer.get("source") or "-",
                     param_count(op) if op is not None else 0, layer["macs_per_step"],
                     *(manifests[p]["layers"][i]["flash_bytes"] for p in PRECISIONS)])
    rows.append(["total", "", sum(param_count(o) for o in graph.ops),
                 manifests["int8"]["macs_per_step"], *(manifests[p]["flash_bytes"] for p in PRECISIONS)])
    ram = ", ".join(f"{p} {manifests[p]['ram_bytes']} B" for p in PRECISIONS)
    return "\n".join([
        _describe(graph), "",
        _table(["layer", "from module", "params", "MACs/step", "int8 flash B", "int16 flash B",
                "float32 flash B"], rows),
        "", f"RAM (state + scratch, caller-owned struct): {ram}",
        "flash counts the model's constant arrays; the activation tables (2 KiB, mcunn_fixedpoint.c) "
        "are shared by all integer layers and by every model in one firmware", *(fit_line(manifests[p]) for p in PRECISIONS)])


def export_summary(result) -> str:
    from .compare import saturation_line
    """What `export` prints after writing the directory (result: export.ExportResult)."""
    m, graph, acc = result.manifest, result.graph, result.accuracy
    rows = []
    for layer in m["layers"]:
        op = graph.ops[layer["index"]] if layer["index"] < len(graph.ops) else None
        rows.append([_layer_label(layer), layer.get("source") or "-",
                     param_count(op) if op is not None else 0, layer["macs_per_step"], layer["flash_bytes"]])
    rows.append(["total", "", sum(param_count(o) for o in graph.ops), m["macs_per_step"], m["flash_bytes"]])
    lines = [_describe(graph), "",
             _table(["layer", "from module", "params", "MACs/step", "flash B"], rows), "",
             f"RAM: {m['ram_bytes']} B of state and scratch in {m['name']}_state_t (caller-owned)"]
    if m["precision"] == "int8":
        from .pipeline import recurrent_weight_count
        extra = recurrent_weight_count(result.qmodel)
        if m.get("weight_layout", "packed") == "packed" and extra:
            lines.append(f"(--weight-layout wide would store the recurrent weights as int16: +{extra:,} B "
                         "flash, 18-26% fewer instructions per step on Cortex-M4/M7)")
        elif extra:
            lines.append(f"weights stored as int16 (--weight-layout wide): {extra:,} B more flash than packed")
    if m["precision"] == "float32":
        lines.append(f"float32 vs PyTorch-equivalent float model: max abs error {acc.max_abs_error:.3g}")
    else:
        top1 = f", top class agrees on {acc.top1_agreement:.1%}" if acc.top1_agreement is not None else ""
        lines.append(f"{m['precision']} vs float on {acc.sequences} calibration sequences: "
                     f"max abs error {acc.max_abs_error:.4g}, SNR {acc.snr_db:.1f} dB{top1}")
    if m["precision"] != "float32":
        lines.append(saturation_line(m, "calibration", "on the calibration data"))
    lines.append(fit_line(m))
    lines.append(f"wrote {result.out_dir}/: " + ", ".join(m["files"]) + f"  (sha256 {m['sha256'][:16]}…)")
    lines.append(f"next: mcu-nn verify {result.out_dir}")
    return "\n".join(lines)
