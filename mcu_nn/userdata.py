"""The user's own sequences (and labels) for validation on the chip: ``serial-test --inputs``.

Inputs are read as calibration data is (mcu_nn.quant.calibrate): an array or a file — .npz with
``x`` zero-padded plus ``lengths``, or one array per sequence (``np.savez(f, *seqs)``), .npy, .pt —
and sequences may differ in length. Labels, one integer class per sequence, are an array, a key
of the inputs .npz (``--labels y``) or a separate .npy/.npz file. Every bad input is one
:class:`McuNnError` line naming the file and what is wrong."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .errors import McuNnError
from .quant.calibrate import CALIB_KEYS, LABEL_KEYS, LENGTHS_KEY, CalibrationSet, _numbered, _pad, _read, \
    validate_calibration_set



@dataclass
class UserData:
    """Validated sequences: ``x`` (N, T_max, F) float32 or (N, T_max) int64 token ids, zero-padded
    after each of ``lengths`` (N,) steps; ``labels`` (N,) int64 or None; ``source`` says where
    they came from (a path, or "arrays")."""
    x: np.ndarray
    lengths: np.ndarray
    labels: Optional[np.ndarray]
    source: str


def _is_path(v: Any) -> bool:
    return isinstance(v, (str, Path))


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise McuNnError(f"inputs file {path} holds an object array (a pickle); mcu-nn does not unpickle "
                             "data: save sequences of different lengths as separate arrays (np.savez(f, *seqs)) "
                             "or padded as x=... with lengths=...") from None
        first = str(e).splitlines()[0] if str(e) else "ValueError"
        raise McuNnError(f"inputs file {path} could not be read ({first})") from None
    except Exception as e:      # noqa: BLE001 - a corrupt zip: one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise McuNnError(f"inputs file {path} could not be read ({first})") from None


def _to_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):                    # a torch tensor
        return v.detach().cpu().numpy()
    return np.asarray(v)


def _read_inputs(path: Path, label_key: Optional[str]) -> tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
    """(x, lengths or None, labels stored under ``label_key`` or None) from an inputs file."""
    if not path.is_file():
        raise McuNnError(f"inputs file {path} does not exist; pass a .npz/.npy/.pt file of sequences")
    if path.suffix.lower() != ".npz":
        try:
            return _read(path), None, None
        except McuNnError as e:                 # the calibration reader's words, for inputs
            raise McuNnError(str(e).replace("calibration file", "inputs file")) from None
    arrays = _npz_arrays(path)
    labels = None
    if label_key is not None and label_key in arrays:
        labels = arrays.pop(label_key)
    # one array per sequence, maybe beside labels the user names by file instead (np.savez(f, *seqs, y=y))
    seqs = _numbered({k: v for k, v in arrays.items() if k not in LABEL_KEYS})
    if seqs is not None:
        x, lengths = _pad(seqs, f"inputs file {path}")
        return x, lengths, labels
    lengths = arrays.pop(LENGTHS_KEY, None)
    for key in CALIB_KEYS:
        if key in arrays:
            return arrays[key], lengths, labels
    if len(arrays) == 1:
        return next(iter(arrays.values())), lengths, labels
    hint = f"; if {', '.join(k for k in arrays if k in LABEL_KEYS)} holds labels, pass --labels KEY" \
        if any(k in LABEL_KEYS for k in arrays) and label_key is None else ""
    raise McuNnError(f"inputs file {path} holds {sorted(arrays)}: store the sequences under key 'x' (plus "
                     f"'lengths' when they differ in length) or one array per sequence (np.savez(f, *seqs)){hint}")


def _read_labels_file(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except Exception as e:      # noqa: BLE001
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise McuNnError(f"labels file {path} could not be read ({first})") from None
    if suffix == ".npz":
        arrays = _npz_arrays(path)
        for key in LABEL_KEYS:
            if key in arrays:
                return arrays[key]
        if len(arrays) == 1:
            return next(iter(arrays.values()))
        raise McuNnError(f"labels file {path} holds {sorted(arrays)}; store the labels under key 'y' "
                         "(or 'labels'), or save a single array")
    raise McuNnError(f"labels file {path} has type {suffix or '(no suffix)'}; use .npy or .npz")


def validate_labels(labels: Any, n: int, classes: int, where: str) -> np.ndarray:
    """(N,) int64 class indices in [0, classes), one per sequence."""
    y = _to_numpy(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise McuNnError(f"{where} have shape {y.shape}; expected one integer label per sequence, shape ({n},)")
    if y.shape[0] != n:
        raise McuNnError(f"{where}: {y.shape[0]} labels for {n} sequences; give one integer label per sequence")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.number) or np.iscomplexobj(y):
        raise McuNnError(f"{where} have dtype {y.dtype}; expected integer class indices 0..{classes - 1}")
    if not np.issubdtype(y.dtype, np.integer):
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise McuNnError(f"{where} are not integers (sequence {i} has {float(y[i]):g}); give class indices "
                             f"0..{classes - 1}, one per sequence")
    y = y.astype(np.int64)
    out = (y < 0) | (y >= classes)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise McuNnError(f"{where}: sequence {i} has label {int(y[i])}, outside the model's {classes} classes "
                         f"(0..{classes - 1})")
    return y


def load_user_data(inputs: Any, model: Any, labels: Any = None, *, classifier: Optional[int] = None,
                   max_steps: int = 0) -> UserData:
    """The user's sequences for ``model`` (anything with ``input_kind``/``input_size``: a Graph or
    QModel), from an array ((N, T, F), (T, F), token ids (N, T)), a list of sequences of any
    lengths, a CalibrationSet or a file; ``labels`` as an array, a key of the inputs .npz or a
    .npy/.npz file. ``classifier``: the model's number of classes when it is a classifier (one
    vector per sequence), else None (labels are then refused). ``max_steps`` > 0: the longest
    sequence the board's buffers take."""
    # --labels names a key of the inputs .npz if it has one, else a file
    label_key = str(labels) if _is_path(labels) and _is_path(inputs) and Path(inputs).suffix.lower() == ".npz" \
        else None
    from_key = None
    if _is_path(inputs):
        path = Path(inputs)
        x, lengths, from_key = _read_inputs(path, label_key)
        source, where = str(path), f"inputs {path}"
    elif isinstance(inputs, CalibrationSet):
        x, lengths, source, where = inputs.x, inputs.lengths, "arrays", "inputs"
    elif isinstance(inputs, (list, tuple)):
        if not inputs:
            raise McuNnError("inputs is an empty list; give at least one sequence")
        x, lengths = _pad([_to_numpy(s) for s in inputs], "inputs")
        source, where = "arrays", "inputs"
    else:
        x, lengths, source, where = _to_numpy(inputs), None, "arrays", "inputs"
    data = validate_calibration_set(x, lengths, model, where=where)
    n = data.x.shape[0]
    lengths = data.lengths if data.lengths is not None else np.full(n, data.x.shape[1], np.int64)
    if max_steps and lengths.max() > max_steps:
        i = int(np.argmax(lengths))
        raise McuNnError(f"{where}: sequence {i} has {int(lengths[i])} steps; the board's buffers hold at most "
                         f"{max_steps} (max_steps of this export: a whole-sequence model keeps them all); "
                         f"cut the sequences or re-export with a longer --input-shape")
    y = None
    if labels is not None:
        if from_key is not None:
            raw, lwhere = from_key, f"labels {labels!r} in {source}"
        elif _is_path(labels):
            lpath = Path(labels)
            if not lpath.is_file():
                keys = ""
                if _is_path(inputs) and Path(inputs).suffix.lower() == ".npz":
                    held = sorted(_npz_arrays(Path(inputs)))
                    shown = ", ".join(held[:6]) + (f", ... ({len(held)} arrays)" if len(held) > 6 else "")
                    keys = f"is not a key of {Path(inputs).name} (it holds {shown}) and "
                raise McuNnError(f"--labels {labels} {keys}is not an existing file; pass a key of the inputs .npz "
                                 "or a .npy/.npz file with one integer label per sequence")
            raw, lwhere = _read_labels_file(lpath), f"labels in {lpath}"
        else:
            raw, lwhere = labels, "labels"
        if classifier is None:
            raise McuNnError(f"labels were given but this model is not a classifier (it gives "
                             f"{'an output per step' if model.output_per_step else 'one value per sequence'}); "
                             "accuracy needs one vector of class scores per sequence")
        y = validate_labels(raw, n, classifier, lwhere)
    return UserData(data.x, lengths, y, source)
