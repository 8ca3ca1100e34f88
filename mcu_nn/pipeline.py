"""The export pipeline: model -> Graph -> QModel -> simulator outputs -> C directory.

Each stage is a plain function of the previous stage's data (DESIGN.md); this module
only strings them together and measures how much accuracy quantisation costs.
"""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .errors import McuNnError, McuNnWarning
from .ir import Graph, QModel, QRecurrent, state_slots

_log = logging.getLogger("mcu_nn")
PRECISIONS = ("int8", "int16", "float32")
TEST_VECTORS = 8          # sequences written to test_vectors.npz (the serial test sends them all)


@dataclass
class Accuracy:
    """Quantised model vs the float model on the same inputs (after dequantising)."""
    max_abs_error: float
    snr_db: float
    top1_agreement: Optional[float]     # classifiers only (one vector of several logits per sequence)
    sequences: int

    def as_dict(self) -> dict:
        return {"max_abs_error": self.max_abs_error, "snr_db": self.snr_db,
                "top1_agreement": self.top1_agreement, "sequences": self.sequences}


def recurrent_weight_count(q: QModel) -> int:
    """int8 weights of the recurrent layers: the bytes the "wide" layout adds to flash."""
    return sum(int(d.wx.w.size + d.wh.w.size) for op in q.ops if isinstance(op, QRecurrent)
               for d in op.directions)


@dataclass
class ExportResult:
    out_dir: Path
    graph: Graph
    qmodel: QModel
    manifest: dict
    accuracy: Accuracy
    calibration: np.ndarray               # the inputs the ranges were chosen on (for reports)
    lengths: Optional[np.ndarray] = None  # (N,) steps of each calibration sequence; None = all T


def quantised_outputs(q: QModel, x: np.ndarray) -> np.ndarray:
    """The model's outputs as floats, computed the way the chip computes them."""
    from .fixedpoint import dequantize
    from .sim import run
    y = run(q, x)
    return np.asarray(y, dtype=np.float32) if q.precision == "float32" else dequantize(y, q.output_scale)


def measure_accuracy(graph: Graph, q: QModel, x: np.ndarray, lengths: Optional[np.ndarray] = None) -> Accuracy:
    from .quant.calibrate import CalibrationSet
    from .quant.metrics import max_abs_error, snr_db, top1_agreement
    from .progress import track
    from .sim import run_float
    refs, gots = [], []
    t0 = time.perf_counter()
    groups = list(CalibrationSet(x, lengths).sequences_by_length())     # padding is never run
    for idx, length in track(groups, desc="measuring accuracy", unit="length"):
        part = x[idx, :length]
        ref_part, got_part = run_float(graph, part), quantised_outputs(q, part)
        refs.append(ref_part.reshape(-1, ref_part.shape[-1]))
        gots.append(got_part.reshape(-1, got_part.shape[-1]))
    ref, got = np.concatenate(refs), np.concatenate(gots)
    _log.debug("accuracy: float and %s models over %d sequences in %.2f s",
                                      q.precision, x.shape[0], time.perf_counter() - t0)
    classifier = not graph.output_per_step and ref.shape[-1] > 1
    return Accuracy(
        max_abs_error=float(max_abs_error(ref, got)),
        snr_db=float(snr_db(ref, got)),
        top1_agreement=float(top1_agreement(ref, got)) if classifier else None,
        sequences=int(x.shape[0]),
    )


TREND_RATIO = 1.25     # later calibration inputs this much larger than earlier ones: a trend


def warn_if_trending(graph: Graph, data: np.ndarray, lengths: Optional[np.ndarray] = None) -> None:
    """Warn when the calibration inputs grow along the data (later sequences, or later steps,
    reach further than earlier ones): deployed inputs will likely go further still. Both the
    99th percentile and the mean of |x| must grow, so the noise of a small sample does not
    trigger it."""
    if graph.input_kind == "tokens":
        return
    a = np.abs(np.asarray(data, np.float64))
    valid = np.ones(a.shape, bool)
    if lengths is not None:                      # padding is not data
        valid &= (np.arange(a.shape[1])[None, :] < np.asarray(lengths)[:, None])[..., None]

    def level(sl) -> tuple[float, float]:
        v = a[sl][valid[sl]]
        return (float(np.percentile(v, 99)), float(v.mean())) if v.size else (0.0, 0.0)

    pairs = []
    if a.shape[0] >= 2:
        h = a.shape[0] // 2
        pairs.append(("sequences", level(np.s_[:h]), level(np.s_[h:])))
    if a.shape[1] >= 2:
        h = a.shape[1] // 2
        pairs.append(("steps", level(np.s_[:, :h]), level(np.s_[:, h:])))
    for what, (early, early_mean), (late, late_mean) in pairs:
        if early > 0 and late > TREND_RATIO * early and late_mean > TREND_RATIO * early_mean:
            warnings.warn(
                f"calibration inputs grow along the data: |x| (99th percentile) is {early:.3g} in the first half "
                f"of the {what} and {late:.3g} in the second; inputs beyond the calibrated range will saturate "
                "on the chip (verify and serial-test count them). Pass calibration data that covers the range "
                "you expect in deployment (mcu-nn keeps the headroom the trend within the data shows, see "
                "docs/numerics.md)", McuNnWarning, stacklevel=3)
            return


def load_data(graph: Graph, calib: Optional[str], precision: str) -> np.ndarray:
    """Calibration data; float32 exports may go without (random data then only feeds the
    test vectors, which compare C with the simulator)."""
    return load_data_set(graph, calib, precision).x


def load_data_set(graph: Graph, calib: Any, precision: str):
    """As load_data, with each sequence's length (quant.CalibrationSet: ``x`` padded, ``lengths``).
    ``calib``: a path, "random", or data in memory (quant.calibrate.calibration_set_from)."""
    from .quant import load_calibration_set
    from .quant.calibrate import calibration_set_from
    if calib is None:
        if precision != "float32":
            raise McuNnError(
                f"an {precision} export needs calibration data to choose its number ranges: "
                "pass --calib FILE (N×T×F array in .npz/.npy/.pt, real inputs of the model) "
                "or --calib random to use random data (not recommended)")
        calib = "random"
    if isinstance(calib, (str, Path)):
        return load_calibration_set(calib, graph)
    return calibration_set_from(calib, graph)


def state_manifest(q: QModel) -> dict:
    """What <name>_get_state / <name>_set_state copy: the flat layout with each slot's scale, and
    which model inputs / outputs (forward(x, state) -> (y, state)) are states."""
    slots = [{"op": s.op_index, "direction": s.direction, "what": s.what, "size": s.size, "scale": s.scale}
             for s in state_slots(q)]
    return {"size": sum(s["size"] for s in slots), "slots": slots, "inputs": list(q.input_names[1:]),
            "outputs": list(q.output_names[1:])}


def _float_model_file(graph: Graph) -> dict[str, bytes]:
    """{float_model.npz: bytes}: the float Graph, the reference `serial-test --inputs` measures the
    board's SNR and top-1 agreement against. A graph holding a value the file cannot keep gets
    a warning and no file (the export stays usable; only those float metrics need it)."""
    from .qmodel_file import FLOAT_FILE, graph_bytes
    try:
        return {FLOAT_FILE: graph_bytes(graph)}
    except TypeError as e:
        warnings.warn(f"{FLOAT_FILE} not written ({e}): serial-test --inputs will not measure the board "
                      "against the float model", McuNnWarning, stacklevel=3)
        return {}


def source_provenance(model: Any) -> dict:
    """Where the model came from, for the manifest and the report: a file's name and sha256, or
    the class of an in-memory module / ExportedProgram."""
    if isinstance(model, (str, Path)):
        import hashlib
        p = Path(model)
        digest = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return {"source_model": p.name, "source_sha256": digest.hexdigest()}
    return {"source_model": f"<{type(model).__name__} in memory>", "source_sha256": None}


def export_model(model_path: Any, out_dir: str | Path, *, precision: str = "int8",
                 calib: Any = None, name: Optional[str] = None,
                 input_shape: Optional[tuple[int, ...]] = None, allow_pickle: bool = False,
                 weight_layout: str = "packed", log: Callable[[str], None] = print,
                 vocab: Optional[list[str]] = None, example_input: Any = None) -> ExportResult:
    """Export ``model_path`` into ``out_dir`` and return what was written and measured.
    ``model_path`` may also be an nn.Module (with ``example_input`` or ``input_shape``) or an
    ExportedProgram, and ``calib`` data in memory (see load_data_set).
    ``weight_layout="wide"`` stores int8 weights as int16: more flash, faster on DSP cores.
    ``vocab`` (a language model's tokens, in id order) is stored as vocab.json for `mcu-nn generate`."""
    from .codegen import write_export
    from .codegen.export import run_padded, saturation_counts
    from .frontend import load_model
    from .quant import quantize
    from .sim import run

    if precision not in PRECISIONS:
        raise McuNnError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    graph = load_model(model_path, allow_pickle=allow_pickle, input_shape=input_shape, name=name,
                       example_input=example_input)
    from .codegen.export import check_target
    check_target(Path(out_dir), graph.name)          # an -o it cannot write: refused before any work
    from .report import check_size
    check_size(graph, precision)                      # no board can hold it: refused before any work
    extra_files = {}
    if vocab is not None:
        from .generate import VOCAB_FILE, check_language_model, vocab_bytes
        check_language_model(graph, len(vocab))
        extra_files[VOCAB_FILE] = vocab_bytes(vocab)
    extra_files.update(_float_model_file(graph))
    data_set = load_data_set(graph, calib, precision)
    data, lengths = data_set.x, data_set.lengths
    steps = f"{data.shape[1]} steps" if lengths is None else f"{lengths.min()}..{lengths.max()} steps"
    log(f"calibrating {graph.name} ({precision}) on {data.shape[0]} sequences of {steps}")
    q = quantize(graph, data, precision, lengths=lengths)
    accuracy = measure_accuracy(graph, q, data, lengths)
    vectors = data[:TEST_VECTORS]
    vec_lengths = None if lengths is None else lengths[:TEST_VECTORS]
    expected = run_padded(lambda xs: run(q, xs), vectors, vec_lengths, q.output_per_step)
    warn_if_trending(graph, data, lengths)
    extra = {**source_provenance(model_path), "accuracy": accuracy.as_dict(),
             "calibration_sequences": int(data.shape[0]),
             "state": state_manifest(q),
             "saturation": {"calibration": saturation_counts(q, data, lengths)}}
    manifest = write_export(q, Path(out_dir), vectors, expected, extra=extra, weight_layout=weight_layout,
                            lengths=vec_lengths, extra_files=extra_files)
    return ExportResult(Path(out_dir), graph, q, manifest, accuracy, data, lengths)
