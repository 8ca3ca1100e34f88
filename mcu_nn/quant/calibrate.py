"""Calibration data: loading and validating it, and the float ranges quantisation needs.

Ranges come from running the float reference (:func:`mcu_nn.sim.float_sim.run_float`) over
the calibration sequences, so recurrent states are the ones the model really reaches.
"""
from __future__ import annotations

import logging
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from ..errors import McuNnError
from ..ir import FinalHidden, Graph, SelectLast, whole_sequence
from ..progress import track
from ..sim.float_sim import run_float

_log = logging.getLogger("mcu_nn")

CALIB_KEYS = ("x", "input", "calib")
RANDOM_SEQUENCES = 32
Q312_LIMIT = 32767.5 / 4096.0      # |v| above this saturates in Q3.12
Q15_LIMIT = 32767.5 / 32768.0      # |v| above this saturates in Q15


def _pick(arrays: dict, where: str) -> np.ndarray:
    for key in CALIB_KEYS:
        if key in arrays:
            return arrays[key]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise McuNnError(f"calibration file {where} holds {sorted(arrays)}; store the inputs under key "
                     f"'x' (or 'input'/'calib'), or save a single array")


def _read(path: Path) -> np.ndarray:
    if not path.exists():
        raise McuNnError(f"calibration file {path} does not exist; pass an existing .npz/.npy/.pt file "
                         f"or 'random'")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return np.asarray(_pick({k: z[k] for k in z.files}, str(path)))
        if suffix in (".pt", ".pth"):
            import torch
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                obj = _pick(obj, str(path))
            if not isinstance(obj, torch.Tensor):
                raise McuNnError(f"calibration file {path} holds a {type(obj).__name__}, not a tensor; "
                                 f"save a tensor or a dict with key 'x'")
            return obj.detach().cpu().numpy()
    except McuNnError:
        raise
    except Exception as e:  # a corrupt file: say which, in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise McuNnError(f"calibration file {path} could not be read ({first})") from None
    raise McuNnError(f"calibration file {path} has an unknown type {suffix or '(no suffix)'}; "
                     f"use .npz, .npy or .pt")


def random_calibration(graph: Graph, n: int = RANDOM_SEQUENCES, seed: int = 0) -> np.ndarray:
    """N(0,1) sequences (or uniform token ids) of length graph.seq_len."""
    rng = np.random.default_rng(seed)
    t = max(int(graph.seq_len), 1)
    if graph.input_kind == "tokens":
        return rng.integers(0, graph.input_size, size=(n, t), dtype=np.int64)
    return rng.standard_normal((n, t, graph.input_size)).astype(np.float32)


def validate_calibration(x: np.ndarray, graph: Graph, where: str = "calibration data") -> np.ndarray:
    """Check shape, emptiness, finiteness and token range; return the canonical array."""
    x = np.asarray(x)
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.number)):
        raise McuNnError(f"{where} has dtype {x.dtype}; expected numbers")
    if graph.input_kind == "tokens":
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2:
            raise McuNnError(f"{where} has shape {x.shape}; a token model takes (N, T) or (T,) integer ids")
    else:
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3:
            raise McuNnError(f"{where} has shape {x.shape}; expected (N, T, {graph.input_size}) "
                             f"or (T, {graph.input_size})")
        if x.shape[2] != graph.input_size:
            raise McuNnError(f"{where} has {x.shape[2]} features per step, the model takes {graph.input_size}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise McuNnError(f"{where} is empty (shape {x.shape}); give at least one sequence of one step")
    if np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.complexfloating):
        bad = ~np.isfinite(x)
        if bad.any():
            first = np.argwhere(bad)[0]
            at = f"sequence {first[0]}, step {first[1]}" + (f", feature {first[2]}" if x.ndim == 3 else "")
            raise McuNnError(f"{where} has {int(bad.sum())} NaN/Inf values (first at {at}); "
                             f"clean or drop those sequences")
    if graph.input_kind == "tokens":
        if not np.issubdtype(x.dtype, np.integer):
            if np.iscomplexobj(x) or np.any(x != np.round(x)):
                raise McuNnError(f"{where} holds non-integer values but the model takes token ids; "
                                 f"pass integer ids in [0, {graph.input_size})")
        ids = x.astype(np.int64)
        out = (ids < 0) | (ids >= graph.input_size)
        if out.any():
            first = np.argwhere(out)[0]
            raise McuNnError(f"{where} has {int(out.sum())} token ids outside [0, {graph.input_size}) "
                             f"(first {int(ids[tuple(first)])} at sequence {first[0]}, step {first[1]})")
        return ids
    if np.iscomplexobj(x):
        raise McuNnError(f"{where} is complex; expected real numbers")
    return x.astype(np.float32)


# ----------------------------------------------------------------------------- sequences of different lengths
LENGTHS_KEY = "lengths"
LABEL_KEYS = ("y", "labels", "label", "targets")     # beside the sequences in a .npz: not inputs
_NUMBERED = re.compile(r"^(?:x|input|calib|arr_)(\d+)$")     # x0, x1, ... or np.savez(f, *list)'s arr_0, ...


@dataclass
class CalibrationSet:
    """Calibration (or test) sequences of possibly different lengths, in mcu-nn's layout.

    ``x``: (N, T_max, F) float32 or (N, T_max) int64 token ids, each sequence zero-padded after its
    length. ``lengths``: (N,) int64 steps of each sequence, or None when all have T_max steps. The
    chip runs one sequence at a time, so sequence n is ``x[n, :lengths[n]]`` and the padding is
    never run (pack_padded_sequence semantics)."""
    x: np.ndarray
    lengths: Optional[np.ndarray] = None

    def sequences_by_length(self) -> Iterator[tuple[np.ndarray, int]]:
        """(indices, length) of each group of equally long sequences, shortest first."""
        if self.lengths is None:
            yield np.arange(self.x.shape[0]), int(self.x.shape[1])
            return
        for length in np.unique(self.lengths):
            yield np.flatnonzero(self.lengths == length), int(length)


def _numbered(arrays: dict) -> Optional[list[np.ndarray]]:
    """Sequences saved one array each (x0, x1, ... or arr_0, arr_1, ...), in numeric order; None otherwise."""
    keys = [k for k in arrays if _NUMBERED.match(k)]
    if not keys or len(keys) != len(arrays):
        return None
    return [np.asarray(arrays[k]) for k in sorted(keys, key=lambda k: int(_NUMBERED.match(k).group(1)))]


def _pad(seqs: list[np.ndarray], where: str) -> tuple[np.ndarray, np.ndarray]:
    """One array per sequence ((T_i, F) or (T_i,) ids) -> zero-padded (N, T_max[, F]) and lengths."""
    if any(s.ndim not in (1, 2) for s in seqs) or len({s.shape[1:] for s in seqs}) != 1:
        raise McuNnError(f"{where}: the per-sequence arrays must all be (T_i, F) floats or (T_i,) token ids; "
                         f"got shapes {sorted({s.shape for s in seqs})[:4]}")
    lengths = np.array([s.shape[0] for s in seqs], np.int64)
    out = np.zeros((len(seqs), int(lengths.max(initial=0)), *seqs[0].shape[1:]), np.result_type(*seqs))
    for i, s in enumerate(seqs):
        out[i, :s.shape[0]] = s
    return out, lengths


def _read_set(path: Path) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """A .npz with several sequences of different lengths, or any file _read takes."""
    if path.suffix.lower() != ".npz" or not path.exists():
        return _read(path), None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        if "allow_pickle" in str(e):     # an object array: refused, unpickling runs code from the file
            raise McuNnError(f"calibration file {path} holds an object array (a pickle); mcu-nn does not "
                             "unpickle data: save sequences of different lengths as separate arrays "
                             "(np.savez(f, *sequences) or x0=..., x1=...) or padded as x=... with lengths=...") from None
        return _read(path), None
    except Exception:
        return _read(path), None      # _read says what is wrong with the file
    seqs = _numbered({k: v for k, v in arrays.items() if k not in LABEL_KEYS})   # np.savez(f, *seqs, y=y)
    if seqs is not None:
        return _pad(seqs, f"calibration file {path}")
    lengths = arrays.pop(LENGTHS_KEY, None)
    x = np.asarray(_pick(arrays, str(path)))
    return x, (None if lengths is None else np.asarray(lengths))


def validate_lengths(lengths, x: np.ndarray, where: str) -> np.ndarray:
    """(N,) integers in [1, T_max]."""
    n, t_max = x.shape[0], x.shape[1]
    arr = np.asarray(lengths)
    if arr.ndim != 1 or arr.shape[0] != n or not np.issubdtype(arr.dtype, np.integer):
        raise McuNnError(f"{where}: lengths must be {n} integers, one per sequence; got shape {arr.shape} "
                         f"dtype {arr.dtype}")
    bad = (arr < 1) | (arr > t_max)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise McuNnError(f"{where}: sequence {i} has length {int(arr[i])}, outside [1, {t_max}] "
                         f"(the padded time axis)")
    return arr.astype(np.int64)


def validate_calibration_set(x: np.ndarray, lengths, graph: Graph, where: str = "calibration data") -> CalibrationSet:
    """As validate_calibration, for padded sequences: only the steps before each length are checked
    (padding may hold anything, e.g. a pad id); the padding is zeroed in the result."""
    if lengths is None:
        return CalibrationSet(validate_calibration(x, graph, where))
    x = np.array(x)
    if graph.input_kind != "tokens" and x.ndim == 2:
        x = x[None]
    lengths = validate_lengths(lengths, x, where)
    steps = np.arange(x.shape[1])[None, :] < lengths[:, None]          # (N, T_max): real steps
    pad = (~steps)[..., None] if x.ndim == 3 else ~steps
    if np.issubdtype(x.dtype, np.number):
        x = np.where(pad, np.zeros((), x.dtype), x)
    return CalibrationSet(validate_calibration(x, graph, where), lengths)


def load_calibration_set(source: Union[str, Path], graph: Graph) -> CalibrationSet:
    """Calibration inputs with the length of each sequence (see :class:`CalibrationSet`).

    Besides what :func:`load_calibration` reads, a .npz may hold sequences of different lengths:
    ``x`` zero-padded to (N, T_max[, F]) plus ``lengths`` (N,), or one array per sequence
    (``x0, x1, ...`` or ``np.savez(f, *sequences)``). Object arrays are refused (no unpickling)."""
    if str(source) == "random":
        return CalibrationSet(load_calibration(source, graph))
    path = Path(source)
    x, lengths = _read_set(path)
    return validate_calibration_set(x, lengths, graph, where=f"calibration data {path}")


def calibration_set_from(data: object, graph: Graph, where: str = "calibration data") -> CalibrationSet:
    """Sequences for ``graph`` from whatever a notebook holds: a path (as load_calibration_set),
    an array or tensor ((N, T, F) / (N, T) ids, or one sequence), a list of sequences (ragged:
    padded, with lengths), a (x, lengths) pair, a dict with "x" (and "lengths"), or a CalibrationSet."""
    if isinstance(data, CalibrationSet):
        return validate_calibration_set(data.x, data.lengths, graph, where)
    if isinstance(data, (str, Path)):
        return load_calibration_set(data, graph)
    if isinstance(data, dict):
        arrays = {k: _as_array(v, where) for k, v in data.items()}
        lengths = arrays.pop(LENGTHS_KEY, None)
        return validate_calibration_set(_pick(arrays, where), lengths, graph, where)
    if isinstance(data, tuple) and len(data) == 2 and _is_padded_pair(data, graph, where):
        return validate_calibration_set(_as_array(data[0], where), _as_array(data[1], where), graph, where)
    if isinstance(data, (list, tuple)):
        seqs = [_as_array(v, where) for v in data]
        if not seqs:
            raise McuNnError(f"{where} is an empty list; give at least one sequence")
        if len({s.shape for s in seqs}) == 1 and seqs[0].ndim == (1 if graph.input_kind == "tokens" else 2):
            return validate_calibration_set(np.stack(seqs), None, graph, where)
        x, lengths = _pad(seqs, where)
        return validate_calibration_set(x, lengths, graph, where)
    return validate_calibration_set(_as_array(data, where), None, graph, where)


def _as_array(v: object, where: str) -> np.ndarray:
    if hasattr(v, "detach") and hasattr(v, "cpu"):          # a torch tensor, without importing torch
        v = v.detach().cpu().numpy()
    a = np.asarray(v)
    if a.dtype == object:
        raise McuNnError(f"{where} holds Python objects (a ragged array?); pass a list of arrays, one per "
                         "sequence, or a padded array with lengths")
    return a


def _is_padded_pair(pair: tuple, graph: Graph, where: str) -> bool:
    """(x, lengths): a padded batch and one integer length per sequence (not two sequences)."""
    x, lengths = _as_array(pair[0], where), _as_array(pair[1], where)
    return (x.ndim == (2 if graph.input_kind == "tokens" else 3) and lengths.ndim == 1
            and np.issubdtype(lengths.dtype, np.integer) and lengths.shape[0] == x.shape[0])


def load_calibration(source: Union[str, Path], graph: Graph) -> np.ndarray:
    """Calibration inputs for ``graph``: (N,T,F) float32 or (N,T) int64 token ids.

    ``source`` is a .npz (key "x", "input", "calib" or its only array), .npy or .pt file
    (a tensor, or a dict with one of those keys), or "random" (warns: the ranges will not
    be those of real data)."""
    if str(source) == "random":
        warnings.warn(f"no calibration data: quantising {graph.name or 'the model'} with "
                      f"{RANDOM_SEQUENCES} random sequences; accuracy on real inputs may suffer, "
                      f"pass --calib FILE with real inputs", stacklevel=2)
        return random_calibration(graph)
    path = Path(source)
    return validate_calibration(_read(path), graph, where=f"calibration data {path}")


# ----------------------------------------------------------------------------- ranges
SAMPLE_PER_FOLD = 50_000           # |values| kept per tensor and fold for the range search
RANGE_METHODS = ("max", "headroom", "percentile", "search")
DEFAULT_RANGE_METHOD = "search"    # chosen by measurement on the examples (docs/examples.md)
HEADROOM = 2.0                     # "headroom": one bit above the calibration max
PERCENTILE = 99.99                 # "percentile": clip the rarest 0.01 % of |values|
# sqrt(2)x .. 4x the fold's max: held-out data routinely exceeds a calibration maximum by a few
# percent, int16 activations have resolution to spare (half a bit costs 3 dB of ~90), and a
# clipped value costs far more than that
SEARCH_FACTORS = tuple(2.0 ** (k / 4) for k in range(2, 9))
INT16_STEPS = 32767


def _head_ops(graph: Graph) -> tuple[int, list]:
    """(index of the sequence->vector op, the ops after it) for a streaming model whose
    head runs after out[:, -1] / h_n; (-1, []) otherwise. The chip's ``_step`` applies that
    head to every step's h, so its ranges must hold over all steps, not only the last."""
    for i, op in enumerate(graph.ops):
        if isinstance(op, (SelectLast, FinalHidden)):
            if whole_sequence(graph) or (isinstance(op, FinalHidden) and op.directions != [0]):
                return -1, []
            return i, list(graph.ops[i + 1:])
    return -1, []


def _stat() -> dict:
    return {"min": np.inf, "max": -np.inf, "absmax": 0.0, "count": 0, "over_q312": 0, "over_q15": 0,
            "fold_absmax": [0.0, 0.0], "samples": [[], []]}


def _add(s: dict, arr: np.ndarray, rng: np.random.Generator, first_seq: int, half: int) -> None:
    a = np.abs(arr)
    if arr.size:
        s["min"] = min(s["min"], float(arr.min()))
        s["max"] = max(s["max"], float(arr.max()))
        s["absmax"] = max(s["absmax"], float(a.max()))
    s["count"] += int(arr.size)
    s["over_q312"] += int((a > Q312_LIMIT).sum())
    s["over_q15"] += int((a > Q15_LIMIT).sum())
    if a.ndim == 0 or not a.size:
        return
    # two folds, the earlier and the later half of the sequences as given: a range fitted on
    # one is judged on the other. Data in time order (forecasting windows, logs) then shows
    # whether later inputs outgrow earlier ones, as deployed inputs will outgrow calibration.
    fold = ((np.arange(a.shape[0]) + first_seq) >= half).astype(np.int64)
    for k in (0, 1):
        v = a[fold == k].ravel()
        if not v.size:
            continue
        s["fold_absmax"][k] = max(s["fold_absmax"][k], float(v.max()))
        if v.size > SAMPLE_PER_FOLD:
            v = rng.choice(v, SAMPLE_PER_FOLD, replace=False)
        s["samples"][k].append(v.astype(np.float32))


def collect_ranges(graph: Graph, calib: np.ndarray, chunk: int = 256, *,
                   method: str = DEFAULT_RANGE_METHOD, head_all_steps: bool = True,
                   lengths: Optional[np.ndarray] = None) -> dict[str, dict]:
    """Run the float model over ``calib`` and summarise every traced tensor:
    {name: {"min", "max", "absmax", "count", "over_q312", "over_q15", "range", "method",
    "clipped"}}. "over_q312"/"over_q15" count values that would saturate in Q3.12 / Q15;
    "range" is the |value| the tensor's int16 scale will cover (see :func:`choose_range`)
    and "clipped" the fraction of calibration values past it.

    With ``head_all_steps`` the ops after out[:, -1] / h_n of a streaming model are also
    run on every step's h (the chip's ``_step`` does that), and their ranges cover both.
    With ``lengths`` (see :class:`CalibrationSet`) sequence n runs its first lengths[n] steps
    only: padding never reaches the ranges."""
    if method not in RANGE_METHODS:
        raise McuNnError(f"unknown range method {method!r}; choose one of {', '.join(RANGE_METHODS)}")
    stats: dict[str, dict] = {}
    rng = np.random.default_rng(0)
    sel, head = _head_ops(graph) if head_all_steps else (-1, [])
    data = CalibrationSet(calib, lengths)
    t0 = time.perf_counter()
    for first, part in track(_chunks(data, chunk), total=_chunk_count(data, chunk), desc="calibrating",
                             unit="chunk"):
        start = first
        trace: dict = {}
        run_float(graph, part, trace=trace)
        if head:
            seq = trace[f"op{sel - 1}.out"]            # h of every step (N, T, S)
            sub = Graph(name="head", input_kind="float", input_size=seq.shape[-1], seq_len=seq.shape[1],
                        ops=head, inputs=[graph.ops[sel].outputs[0]])   # the head reads the readout
            per_step: dict = {}
            run_float(sub, seq, trace=per_step)
            for name, arr in per_step.items():
                if name.startswith("op"):
                    idx, rest = name[2:].split(".", 1)
                    trace[f"op{int(idx) + sel + 1}.{rest}"] = arr   # (N,T,..) replaces (N,..)
        for name, arr in trace.items():
            if not np.issubdtype(arr.dtype, np.floating):
                continue                               # token ids
            _add(stats.setdefault(name, _stat()), arr, rng, start, (calib.shape[0] + 1) // 2)
    t1 = time.perf_counter()
    _log.debug("calibration: float model over %d sequences, %d tensors traced in %.2f s",
               calib.shape[0], len(stats), t1 - t0)
    for s in track(list(stats.values()), desc=f"choosing ranges ({method})", unit="tensor"):
        samples = [np.concatenate(f) if f else np.zeros(0, np.float32) for f in s.pop("samples")]
        s["range"] = choose_range(s, samples, method)

        s["method"] = method
        both = np.concatenate(samples)
        s["clipped"] = float((both > s["range"]).mean()) if both.size else 0.0
        s.pop("fold_absmax")
    _log.debug("calibration: %s ranges of %d tensors chosen in %.2f s", method, len(stats), time.perf_counter() - t1)
    return stats


def _chunk_count(data: CalibrationSet, chunk: int) -> int:
    return sum(-(-len(idx) // chunk) for idx, _ in data.sequences_by_length())


def _chunks(data: CalibrationSet, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
    """(index of the first sequence, up to ``chunk`` sequences cut to their common length)."""
    for idx, length in data.sequences_by_length():
        for at in range(0, len(idx), chunk):
            part = idx[at:at + chunk]
            yield int(part[0]), data.x[part, :length]


def _fold_error(fit_max: float, held: np.ndarray, factor: float) -> float:
    """Mean squared int16 error on ``held`` of a symmetric range factor * fit_max:
    saturation past the range plus uniform rounding noise (step^2 / 12)."""
    r = factor * fit_max
    over = np.maximum(held - r, 0.0)
    return float(np.mean(over.astype(np.float64) ** 2)) + (r / INT16_STEPS) ** 2 / 12.0


def choose_range(stat: dict, samples: list[np.ndarray], method: str) -> float:
    """The |value| a tensor's int16 scale covers.

    max: the calibration max. headroom: twice it (one bit; int16 has bits to spare).
    percentile: the 99.99th percentile of |value| (clips outliers).
    search: fit on one half of the sequences, measure the error (saturation + rounding) on
    the other half for factors sqrt(2)x..4x of the fitted max, both ways round; the factor with
    the least total error times the full max. It adds headroom only as far as unseen data
    has been seen to need it."""
    absmax = float(stat["absmax"])
    if absmax <= 0 or not np.isfinite(absmax) or method == "max":
        return absmax
    if method == "headroom":
        return absmax * HEADROOM
    if method == "percentile":
        both = np.concatenate(samples)
        return float(np.percentile(both, PERCENTILE)) if both.size else absmax
    fold_max = stat["fold_absmax"]
    if not all(x.size for x in samples) or min(fold_max) <= 0:
        return absmax * SEARCH_FACTORS[0]             # one sequence: nothing held out, the floor
    errors = [sum(_fold_error(fold_max[k], samples[1 - k], f) for k in (0, 1)) for f in SEARCH_FACTORS]
    return absmax * SEARCH_FACTORS[int(np.argmin(errors))]
