"""Calibration data: loading and validating it, and the float ranges quantisation needs.

Ranges come from running the float reference (:func:`mcu_nn.sim.float_sim.run_float`) over
the calibration sequences, so recurrent states are the ones the model really reaches.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Union

import numpy as np

from ..errors import McuNnError
from ..ir import FinalHidden, Graph, SelectLast, whole_sequence
from ..sim.float_sim import run_float

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
SEARCH_FACTORS = tuple(2.0 ** (k / 4) for k in range(0, 9))   # 1x .. 4x the fold's max
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


def _add(s: dict, arr: np.ndarray, rng: np.random.Generator, first_seq: int) -> None:
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
    # two folds by sequence parity: a range fitted on one is judged on the other
    fold = (np.arange(a.shape[0]) + first_seq) % 2
    for k in (0, 1):
        v = a[fold == k].ravel()
        if not v.size:
            continue
        s["fold_absmax"][k] = max(s["fold_absmax"][k], float(v.max()))
        if v.size > SAMPLE_PER_FOLD:
            v = rng.choice(v, SAMPLE_PER_FOLD, replace=False)
        s["samples"][k].append(v.astype(np.float32))


def collect_ranges(graph: Graph, calib: np.ndarray, chunk: int = 256, *,
                   method: str = DEFAULT_RANGE_METHOD, head_all_steps: bool = True) -> dict[str, dict]:
    """Run the float model over ``calib`` and summarise every traced tensor:
    {name: {"min", "max", "absmax", "count", "over_q312", "over_q15", "range", "method",
    "clipped"}}. "over_q312"/"over_q15" count values that would saturate in Q3.12 / Q15;
    "range" is the |value| the tensor's int16 scale will cover (see :func:`choose_range`)
    and "clipped" the fraction of calibration values past it.

    With ``head_all_steps`` the ops after out[:, -1] / h_n of a streaming model are also
    run on every step's h (the chip's ``_step`` does that), and their ranges cover both."""
    if method not in RANGE_METHODS:
        raise McuNnError(f"unknown range method {method!r}; choose one of {', '.join(RANGE_METHODS)}")
    stats: dict[str, dict] = {}
    rng = np.random.default_rng(0)
    sel, head = _head_ops(graph) if head_all_steps else (-1, [])
    for start in range(0, calib.shape[0], chunk):
        trace: dict = {}
        run_float(graph, calib[start:start + chunk], trace=trace)
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
            _add(stats.setdefault(name, _stat()), arr, rng, start)
    for s in stats.values():
        samples = [np.concatenate(f) if f else np.zeros(0, np.float32) for f in s.pop("samples")]
        s["range"] = choose_range(s, samples, method)
        s["method"] = method
        both = np.concatenate(samples)
        s["clipped"] = float((both > s["range"]).mean()) if both.size else 0.0
        s.pop("fold_absmax")
    return stats


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
    the other half for factors 1x..4x of the fitted max, both ways round; the factor with
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
        return absmax                                 # one sequence: nothing held out
    errors = [sum(_fold_error(fold_max[k], samples[1 - k], f) for k in (0, 1)) for f in SEARCH_FACTORS]
    return absmax * SEARCH_FACTORS[int(np.argmin(errors))]
