"""Text reports: what `inspect` and `export` print (per layer: parameters, MACs per step,
flash; totals; how far the quantised model is from the float one)."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .ir import Graph, param_count
from .results import Shown

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
    import logging
    import time
    from .codegen import write_export
    from .progress import track
    from .quant import quantize
    from .quant.calibrate import random_calibration
    from .sim import run
    data = random_calibration(graph, n=4)
    manifests = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in track(PRECISIONS, desc="sizing each precision", unit="precision"):
            t0 = time.perf_counter()
            q = quantize(graph, data, precision)
            manifests[precision] = write_export(q, Path(tmp) / precision, data[:1], run(q, data[:1]))
            logging.getLogger("mcu_nn").debug("inspect: %s quantised and generated in %.2f s",
                                              precision, time.perf_counter() - t0)
    return manifests


# ----------------------------------------------------------------------------- sizes by arithmetic
# A model no board can hold (an LSTM with H=4096: 67M parameters) would cost minutes and gigabytes
# in the code generator (a 312 MB model.c) before anyone learns it cannot be flashed. Its size is
# known from the Graph alone: every weight matrix is stored at least at the precision's weight
# width, so  sum(matrix elements) x width  is a lower bound of its model constants.
WEIGHT_BYTES = {"int8": 1, "int16": 2, "float32": 4}
STATE_BYTES = {"int8": 2, "int16": 2, "float32": 4}


def _matrices(op) -> list:
    from .ir import Embedding, Linear, Recurrent
    if isinstance(op, Recurrent):
        return [a for d in op.directions for a in (d.w_ih, d.w_hh, d.w_hr) if a is not None]
    if isinstance(op, (Linear, Embedding)):
        return [op.weight]
    w = getattr(op, "weight", None)
    return [w] if w is not None else []


def constants_lower_bound(op, precision: str) -> int:
    """Bytes of model constants ``op`` takes at least at ``precision`` (its weight matrices
    at the weight width; biases, tables and layout padding come on top)."""
    return WEIGHT_BYTES[precision] * int(sum(int(a.size) for a in _matrices(op) if getattr(a, "ndim", 0) >= 2))


def largest_board():
    """The board of `mcu-nn boards` with the most flash."""
    from .boards import BOARDS
    return max((b for b in BOARDS.values() if b.flash is not None), key=lambda b: b.flash.size)


def size_problem(graph: Graph, precision: str) -> Optional[str]:
    """Why no board mcu-nn knows can hold ``graph`` at ``precision`` (by arithmetic, before any
    code is generated), or None."""
    need = sum(constants_lower_bound(op, precision) for op in graph.ops)
    big = largest_board()
    if need <= big.flash.size:
        return None
    params = sum(param_count(o) for o in graph.ops)
    hint = ("export a smaller model" if precision == "int8" or
            sum(constants_lower_bound(op, "int8") for op in graph.ops) > big.flash.size
            else "export at --precision int8 or a smaller model")
    return (f"model {graph.name} ({params:,} parameters) needs at least {need:,} B of model constants at "
            f"{precision}; the largest board mcu-nn knows, {big.name}, has {big.flash.size:,} B of flash: "
            f"{hint} (or add a board row with more flash, docs/boards.md)")


def check_size(graph: Graph, precision: str) -> None:
    """Refuse (one line) an export no board can hold, before calibrating or generating code."""
    from .errors import McuNnError
    problem = size_problem(graph, precision)
    if problem:
        raise McuNnError(problem)


def _estimated_manifests(graph: Graph) -> dict[str, dict]:
    """What inspect shows for a model no board can hold at any precision: each layer's lower
    bound and MACs, computed arithmetically (the code generator is not run)."""
    from .ir import Embedding, Linear, Recurrent, macs_per_step, whole_sequence
    manifests = {}
    streams = not whole_sequence(graph)
    for precision in PRECISIONS:
        layers, state = [], 0
        for i, op in enumerate(graph.ops):
            layer = {"index": i, "kind": type(op).__name__, "source": getattr(op, "source", ""),
                     "macs_per_step": macs_per_step(op), "flash_bytes": constants_lower_bound(op, precision)}
            if isinstance(op, Recurrent):
                layer.update(cell=op.kind, input_size=op.input_size, hidden_size=op.hidden_size,
                             proj_size=op.proj_size, bidirectional=op.bidirectional)
                from .cells import cell_of
                per_dir = sum(op.state_size if st == "h" else op.hidden_size for st in cell_of(op.kind).states)
                state += STATE_BYTES[precision] * per_dir * len(op.directions)
            elif isinstance(op, Linear):
                layer.update(input_size=int(op.weight.shape[1]), output_size=int(op.weight.shape[0]))
            elif isinstance(op, Embedding):
                layer.update(vocab=int(op.weight.shape[0]), dim=int(op.weight.shape[1]))
            layers.append(layer)
        fp32, tokens = precision == "float32", graph.input_kind == "tokens"
        manifests[precision] = {
            "name": graph.name, "precision": precision, "estimated": True, "layers": layers,
            "flash_bytes": sum(la["flash_bytes"] for la in layers), "ram_bytes": state,
            "macs_per_step": sum(la["macs_per_step"] for la in layers),
            "input_kind": graph.input_kind, "input_size": graph.input_size, "output_size": graph.output_size,
            "output_per_step": graph.output_per_step, "has_step": streams,
            "max_steps": 0 if streams else graph.seq_len,
            "in_ctype": "float" if fp32 else ("int32_t" if tokens else "int16_t"),
            "out_ctype": "float" if fp32 else "int16_t"}
    return manifests


def fit_line(m: dict) -> str:
    from .build import fit_line as line       # build stands on the board table; report only prints
    return line(m)


def _misfits(m: dict) -> list[str]:
    from .build import misfit_boards
    return misfit_boards(m)


def _model_dict(graph: Graph) -> dict:
    return {"name": graph.name, "source_file": str(graph.source_file) if graph.source_file else None,
            "input_kind": graph.input_kind, "input_size": graph.input_size, "seq_len": graph.seq_len,
            "output_size": graph.output_size, "output_per_step": bool(graph.output_per_step),
            "postprocess": graph.postprocess or None}


def _layer_rows(graph: Graph, layers: list[dict]) -> list[dict]:
    out = []
    for layer in layers:
        op = graph.ops[layer["index"]] if layer["index"] < len(graph.ops) else None
        out.append({"label": _layer_label(layer), "kind": layer["kind"], "source": layer.get("source") or None,
                    "params": param_count(op) if op is not None else 0,
                    "macs_per_step": int(layer["macs_per_step"])})
    return out


CONSTANTS_NOTE = ("model constants = the weights and tables in the model's .c; the shared runtime "
                  "(mcunn_fixedpoint.c: code + 2 KiB of activation tables) comes once per firmware however "
                  "many models it links; model code: see verify or bench (docs/sizes.md)")


@dataclass(repr=False)
class InspectResult(Shown):
    """What `mcu-nn inspect` found: ``text()`` is its table, ``as_dict()`` its --json."""
    graph: Graph
    manifests: dict                       # precision -> the manifest an export would write

    def text(self) -> str:
        graph, manifests = self.graph, self.manifests
        rows = []
        for i, layer in enumerate(_layer_rows(graph, manifests["int8"]["layers"])):
            rows.append([layer["label"], layer["source"] or "-", layer["params"], layer["macs_per_step"],
                         *(manifests[p]["layers"][i]["flash_bytes"] for p in PRECISIONS)])
        rows.append(["total", "", sum(param_count(o) for o in graph.ops),
                     manifests["int8"]["macs_per_step"], *(manifests[p]["flash_bytes"] for p in PRECISIONS)])
        ram = ", ".join(f"{p} {manifests[p]['ram_bytes']} B" for p in PRECISIONS)
        if manifests["int8"].get("estimated"):   # too big for every board: arithmetic, not the code generator
            big = largest_board()
            return "\n".join([
                _describe(graph), "",
                _table(["layer", "from module", "params", "MACs/step",
                        *(f"{p} model constants B (at least)" for p in PRECISIONS)], rows),
                "", f"model state (RAM, at least): {ram}",
                f"too big for every board in `mcu-nn boards`: even at int8 its weights alone are "
                f"{manifests['int8']['flash_bytes']:,} B, and the largest board, {big.name}, has "
                f"{big.flash.size:,} B of flash (sizes computed from the parameters; the code generator was not run)"])
        return "\n".join([
            _describe(graph), "",
            _table(["layer", "from module", "params", "MACs/step", *(f"{p} model constants B" for p in PRECISIONS)],
                   rows),
            "", f"model state (RAM, caller-owned {manifests['int8']['name']}_state_t): {ram}",
            CONSTANTS_NOTE, *(fit_line(manifests[p]) for p in PRECISIONS)])

    def __str__(self) -> str:
        return self.text()

    def as_dict(self) -> dict:
        """The --json payload (docs/json.md, inspect)."""
        graph, manifests = self.graph, self.manifests
        layers = _layer_rows(graph, manifests["int8"]["layers"])
        for i, layer in enumerate(layers):
            layer["model_constants_bytes"] = {p: int(manifests[p]["layers"][i]["flash_bytes"]) for p in PRECISIONS}
        return {"model": _model_dict(graph), "params": int(sum(param_count(o) for o in graph.ops)),
                "macs_per_step": int(manifests["int8"]["macs_per_step"]), "layers": layers,
                "precisions": {p: {"model_constants_bytes": int(manifests[p]["flash_bytes"]),
                                   "model_state_bytes": int(manifests[p]["ram_bytes"]),
                                   "too_big_for": _misfits(manifests[p])} for p in PRECISIONS}}


def inspect_model(path: str | Path, *, allow_pickle: bool = False,
                  input_shape: Optional[tuple[int, ...]] = None) -> InspectResult:
    """Load a model file and size it at every precision (nothing written); ``str()`` of the
    result is the table `mcu-nn inspect` prints."""
    import logging
    import time
    from .frontend import load_model
    t0 = time.perf_counter()
    graph = load_model(path, allow_pickle=allow_pickle, input_shape=input_shape, check_prefix=False)
    logging.getLogger("mcu_nn").debug("inspect: %s loaded in %.2f s", path, time.perf_counter() - t0)
    if size_problem(graph, "int8"):              # no board holds it even at int8: arithmetic only
        return InspectResult(graph, _estimated_manifests(graph))
    return InspectResult(graph, _manifests_per_precision(graph))


def export_summary(result) -> str:
    """What `export` prints after writing the directory (result: pipeline.ExportResult)."""
    from .compare import saturation_line
    m, graph, acc = result.manifest, result.graph, result.accuracy
    rows = []
    for layer in _layer_rows(graph, m["layers"]):
        rows.append([layer["label"], layer["source"] or "-", layer["params"], layer["macs_per_step"]])
    for row, layer in zip(rows, m["layers"]):
        row.append(layer["flash_bytes"])
    rows.append(["total", "", sum(param_count(o) for o in graph.ops), m["macs_per_step"], m["flash_bytes"]])
    lines = [_describe(graph), "",
             _table(["layer", "from module", "params", "MACs/step", "model constants B"], rows), "",
             f"model state (RAM): {m['ram_bytes']} B of state and scratch in {m['name']}_state_t (caller-owned)"]
    if m["precision"] == "int8":
        from .pipeline import recurrent_weight_count
        extra = recurrent_weight_count(result.qmodel)
        if m.get("weight_layout", "packed") == "packed" and extra:
            lines.append(f"(--weight-layout wide would store the recurrent weights as int16: +{extra:,} B "
                         "of model constants; whether it is faster depends on the shape: compare both with "
                         "mcu-nn bench, docs/performance.md)")
        elif extra:
            lines.append(f"weights stored as int16 (--weight-layout wide): {extra:,} B more model constants "
                         "than packed")
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


def export_dict(result) -> dict:
    """The --json payload of `mcu-nn export` (docs/json.md, export)."""
    m, graph, acc = result.manifest, result.graph, result.accuracy
    layers = _layer_rows(graph, m["layers"])
    for layer, ml in zip(layers, m["layers"]):
        layer["model_constants_bytes"] = int(ml["flash_bytes"])
    fp32 = m["precision"] == "float32"
    return {"out_dir": str(result.out_dir), "manifest": str(Path(result.out_dir) / "model.json"),
            "manifest_schema_version": int(m["schema_version"]), "name": m["name"], "precision": m["precision"],
            "weight_layout": m.get("weight_layout", "packed"), "model": _model_dict(graph),
            "params": int(sum(param_count(o) for o in graph.ops)), "macs_per_step": int(m["macs_per_step"]),
            "model_constants_bytes": int(m["flash_bytes"]), "model_state_bytes": int(m["ram_bytes"]),
            "layers": layers,
            "accuracy": {"sequences": int(acc.sequences), "max_abs_error": float(acc.max_abs_error),
                         "snr_db": float(acc.snr_db),
                         "top1_agreement": None if acc.top1_agreement is None else float(acc.top1_agreement)},
            "saturation": None if fp32 else dict(m.get("saturation", {}).get("calibration") or {}),
            "too_big_for": _misfits(m), "files": sorted(m["files"]), "sha256": m["sha256"]}
