"""Model files -> ``torch.export.ExportedProgram``.

Every supported format ends up as an ExportedProgram so that one walker (``walker.py``)
understands all of them. The file's kind is sniffed from its bytes, not its extension, and
every failure becomes one ``McuNnError`` line: this is the boundary where untrusted files
meet torch, so exceptions are caught broadly here.
"""
from __future__ import annotations

import contextlib
import io
import logging
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Iterator, Optional, Union

import torch

from ..cells import from_aten, from_torch_module
from ..errors import McuNnError

SAVE_HINT = ("torch.export.save(torch.export.export(model.eval(), (example_input,)), \"model.pt2\")")
SHAPE_HINT = "pass --input-shape T,F (sequence length, features; T for token-id models), e.g. --input-shape 50,6"

# Formats we recognise only to refuse them politely: magic bytes / extension -> name.
_FOREIGN_EXT = {".onnx": "an ONNX model", ".h5": "a Keras/HDF5 model", ".keras": "a Keras model",
                ".tflite": "a TensorFlow Lite model", ".safetensors": "a safetensors weight file",
                ".npz": "a numpy .npz archive", ".npy": "a numpy array", ".pb": "a TensorFlow graph"}


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """torch.export and the TorchScript converter log and warn about internals the user cannot act on."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):   # converters print graphs
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.CRITICAL)            # torch logs tracebacks at ERROR while it retries
        try:
            yield
        finally:
            logging.disable(previous)


def first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    line = text[0].strip() if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit] + "..."


def sniff(path: Path) -> str:
    """'pt2' | 'torchscript' | 'pickle' (torch.save, zip or legacy), or raise naming what the file is."""
    if not path.exists():
        raise McuNnError(f"{path}: no such file; check the model path")
    if path.is_dir():
        raise McuNnError(f"{path} is a directory; pass the model file (.pt2, TorchScript .pt, or a pickled module)")
    size = path.stat().st_size
    if size == 0:
        raise McuNnError(f"{path} is empty (0 bytes): not a model file; save the model again with {SAVE_HINT}")
    with open(path, "rb") as f:
        head = f.read(4096)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise McuNnError(f"{path} is a corrupt zip archive ({first_line(e)}); save the model again") from None
        base = {n.split("/", 1)[-1] for n in names}
        if "archive_format" in base or "models/model.json" in base:
            return "pt2"
        if "constants.pkl" in base or any(n.startswith("code/") for n in base):
            return "torchscript"
        if "data.pkl" in base:
            return "pickle"
        if any(n.endswith(".npy") for n in names):
            raise McuNnError(f"{path} is a numpy .npz archive, not a model; pass the PyTorch model file")
        raise McuNnError(f"{path} is a zip archive but not a PyTorch model (no torch.export, TorchScript or "
                         f"torch.save layout); save the model with {SAVE_HINT}")
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK"):
        raise McuNnError(f"{path} is a truncated or corrupt zip archive ({size} bytes; "
                         "its directory is missing); copy or save the model again")
    if head[:1] == b"\x80":
        return "pickle"                      # pickle protocol >= 2: legacy torch.save
    foreign = _foreign_kind(path, head)
    if foreign:
        raise McuNnError(f"{path} is {foreign}, not a PyTorch model; mcu-nn reads PyTorch files: "
                         f"export from the PyTorch model with {SAVE_HINT}")
    if _looks_like_text(head):
        raise McuNnError(f"{path} is a text file, not a PyTorch model; expected a torch.export .pt2, "
                         "a TorchScript file or a pickled module")
    raise McuNnError(f"{path} is not a PyTorch model file (neither a zip archive nor a pickle: unknown "
                     f"binary format); save the model with {SAVE_HINT}")


def _foreign_kind(path: Path, head: bytes) -> Optional[str]:
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (Keras?)"
    if head[4:8] == b"TFL3":
        return "a TensorFlow Lite model"
    if head.startswith(b"\x93NUMPY"):
        return "a numpy array"
    return _FOREIGN_EXT.get(path.suffix.lower())


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t\f" for c in text)


# ----------------------------------------------------------------------------- formats
Candidate = Union[torch.export.ExportedProgram, McuNnError]


def load_exported(path: Path, fmt: str, *, allow_pickle: bool,
                  input_shape: Optional[tuple[int, ...]]) -> Iterator[Candidate]:
    """The model as ExportedPrograms to try in order, or the error that stopped one: a .pt2 is one
    program; a TorchScript file or pickle is converted with a batched example first and, should
    that fail to convert or to walk, with an unbatched one (models written for one sequence)."""
    if fmt == "pt2":
        from .safe_archive import read_checked_pt2
        checked = read_checked_pt2(str(path), path.read_bytes())   # refuses members that would run code
        try:
            with quiet():
                ep = torch.export.load(checked)
        except Exception as e:
            raise McuNnError(f"{path}: cannot read the torch.export archive ({first_line(e)}); "
                             "it may be corrupt or from an incompatible torch version: save it again") from None
        yield ep
    elif fmt == "torchscript":
        yield from _from_torchscript(path, input_shape)
    else:
        yield from _from_pickle(path, allow_pickle, input_shape)


def _examples(path: Path, input_shape: Optional[tuple[int, ...]], batch_first: bool,
              batched: bool = True) -> torch.Tensor:
    """A zero example input of ``input_shape`` ((T, F) float or (T,) token ids) with batch 1,
    or without the batch axis when not ``batched``."""
    if input_shape is None:
        raise McuNnError(f"{path} stores no example input, so its input shape is unknown: {SHAPE_HINT}")
    if len(input_shape) not in (1, 2) or any(int(d) < 1 for d in input_shape):
        raise McuNnError(f"input shape {tuple(input_shape)} is invalid: {SHAPE_HINT}")
    if len(input_shape) == 1:                      # token ids
        t = torch.zeros((1, input_shape[0]), dtype=torch.int64)
    else:
        t = torch.zeros((1, *input_shape), dtype=torch.float32)
    if not batched:
        return t[0]
    return t if batch_first else t.transpose(0, 1).contiguous()


def first_rnn_batch_first(ep: torch.export.ExportedProgram) -> Optional[bool]:
    """batch_first of the first recurrent op in the program (None when there is none)."""
    for node in ep.graph.nodes:
        if node.op == "call_function" and from_aten(str(node.target)) is not None:
            return bool(node.args[8]) if len(node.args) > 8 else False
    return None


def _with_layout(path: Path, input_shape: Optional[tuple[int, ...]], convert, state: bool) -> Iterator[Candidate]:
    """Convert with a (1, T, F) example; if the model's first RNN is not batch_first, the example
    was read as T=1, N=T, so convert again with (T, 1, F). A model with ``state`` inputs may fail
    on (1, T, F) already (its state's batch of 1 disagrees with T): then (T, 1, F) is tried, kept
    when it feeds a time-major RNN. Last, for models that take one unbatched sequence, (T, F)
    (``convert(example, batched)``)."""
    try:
        ep = convert(_examples(path, input_shape, True), True)
        if first_rnn_batch_first(ep) is False and _rnn_read_one_step(ep, input_shape):
            ep = convert(_examples(path, input_shape, False), True)
        yield ep
        if state and first_rnn_batch_first(ep) is None:   # a hand-written loop may step a (T, N, F) input
            yield _time_major(path, input_shape, convert)
    except McuNnError as e:
        other = _time_major(path, input_shape, convert) if state else e
        yield e if isinstance(other, McuNnError) else other
    try:
        yield convert(_examples(path, input_shape, True, batched=False), False)
    except McuNnError as e:
        yield e
    if input_shape is not None and len(input_shape) == 2 and int(input_shape[1]) == 1:
        try:                                     # one feature without its axis: (N, T), pytorch/examples' sine
            yield convert(torch.zeros((1, int(input_shape[0])), dtype=torch.float32), True)
        except McuNnError as e:
            yield e


def _rnn_read_one_step(ep: torch.export.ExportedProgram, input_shape: Optional[tuple[int, ...]]) -> bool:
    """The first (time-major) RNN saw the (1, T, F) example as one step of T sequences. Not so
    when the model turns its input time-major itself (d2l.ai's ``inputs.T``)."""
    steps = input_shape[0] if input_shape else None
    for node in ep.graph.nodes:
        if node.op == "call_function" and from_aten(str(node.target)) is not None:
            val = node.args[0].meta.get("val") if hasattr(node.args[0], "meta") else None
            shape = tuple(val.shape) if isinstance(val, torch.Tensor) else ()
            return not (len(shape) == 3 and shape[0] == steps and steps != 1)
    return True


def _time_major(path: Path, input_shape: Optional[tuple[int, ...]], convert) -> Candidate:
    try:
        ep = convert(_examples(path, input_shape, False), True)
    except McuNnError as e:
        return e
    if first_rnn_batch_first(ep) in (False, None):     # None: no nn.RNN, a hand-written loop over axis 0
        return ep
    return McuNnError(f"{path}: the model converts with a (T, 1, F) example only, but its first recurrent "
                      "module is batch_first; check --input-shape")


def _from_torchscript(path: Path, input_shape: Optional[tuple[int, ...]]) -> torch.export.ExportedProgram:
    from torch._export.converter import TS2EPConverter

    try:
        with quiet():
            ts = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise McuNnError(f"{path}: cannot load the TorchScript file ({first_line(e)}); "
                         "it may be corrupt: save it again") from None
    ts.eval()
    args = [(a.name, len(a.type.elements()) if isinstance(a.type, torch.TupleType) else False)
            for a in ts.forward.schema.arguments if a.name != "self"]
    rnn = next(((n, m, m.original_name) for n, m in ts.named_modules()
                if from_torch_module(getattr(m, "original_name", ""))), None) \
        or _hand_written_cell(ts, lambda m: getattr(m, "original_name", ""))
    seen = ", ".join(f"{a.name}: {a.type}" for a in ts.forward.schema.arguments if a.name != "self")
    extras, said = _extra_examples(args, seen, rnn, path, input_shape)

    def convert(example: torch.Tensor, batched: bool) -> torch.export.ExportedProgram:
        try:
            with quiet():
                return TS2EPConverter(ts, (example, *_unbatch(extras, batched))).convert()
        except Exception as e:
            hint = ""
            if "_pack_padded_sequence" in str(ts.inlined_graph):
                hint = PACKED
            elif "prim::Loop" in str(e):           # torch 2.13's converter cannot unroll a scripted loop
                hint = (" (a Python loop compiled by torch.jit.script; save with torch.jit.trace, which unrolls it, "
                        "or with torch.export.save)")
            elif "prim::If" in str(e):             # torch 2.13: scripted nn.LSTM with h_n/c_n or hx used
                hint = " (known for scripted nn.LSTM models that use h_n, c_n or an initial state; torch.jit.trace avoids it)"
            raise McuNnError(
                f"{path}: {said}the TorchScript-to-torch.export converter cannot handle this model "
                f"({_torch_reason(e)}){hint}; check --input-shape, or save the model with {SAVE_HINT}"
            ) from None

    return _with_layout(path, input_shape, convert, bool(extras))


def _torch_reason(e: BaseException) -> str:
    """The first line of a converter error, without PyTorch's internal-assert text (it asks the
    user to report a bug to PyTorch, which is not what they should do)."""
    line = first_line(e)
    if "INTERNAL ASSERT" in line or "report a bug to PyTorch" in line:
        return f"{type(e).__name__} inside torch"
    return f"{type(e).__name__}: {line}"


PACKED = ("; forward packs its input (pack_padded_sequence), whose data-dependent sizes torch cannot convert "
          "from TorchScript: save the whole module with torch.save(model) and pass --allow-pickle (mcu-nn folds "
          "packing away there), or call the recurrent module on the padded sequence")


@contextlib.contextmanager
def _packing_folded(model: torch.nn.Module) -> Iterator[None]:
    """While tracing a pickled module, pack_padded_sequence passes the padded tensor through and
    pad_packed_sequence hands it back: the chip runs one sequence at a time for its own number of
    steps, which is what packing a batch of one full-length sequence computes. (torch.export
    cannot trace packing itself: its sizes depend on the data.) Names are patched where forward
    looks them up: the model modules' globals and torch.nn.utils.rnn."""
    import sys
    import torch.nn.utils.rnn as rnn_utils
    pack, pad = rnn_utils.pack_padded_sequence, rnn_utils.pad_packed_sequence

    def pack_through(input, lengths, batch_first=False, enforce_sorted=True):  # noqa: A002 (torch's names)
        return input

    def pad_back(sequence, batch_first=False, padding_value=0.0, total_length=None):
        if isinstance(sequence, rnn_utils.PackedSequence):
            return pad(sequence, batch_first, padding_value, total_length)
        steps = sequence.shape[1 if batch_first else 0]
        batch = sequence.shape[0 if batch_first else 1]
        if total_length is not None and total_length != steps:
            raise McuNnError(f"pad_packed_sequence(total_length={total_length}) of a {steps}-step example: pass "
                             f"--input-shape {total_length},... so the example has total_length steps")
        return sequence, torch.full((batch,), steps, dtype=torch.int64)

    spaces = {id(rnn_utils.__dict__): rnn_utils.__dict__}
    for m in model.modules():
        mod = sys.modules.get(type(m).__module__)
        if mod is not None:
            spaces[id(mod.__dict__)] = mod.__dict__
    saved = []
    for ns in spaces.values():
        for key, fn in list(ns.items()):
            if fn is pack or fn is pad:
                saved.append((ns, key, fn))
                ns[key] = pack_through if fn is pack else pad_back
    try:
        yield
    finally:
        for ns, key, fn in saved:
            ns[key] = fn


def _packs(model: torch.nn.Module) -> bool:
    """forward() calls pack_padded_sequence (read from its source; a pickle has no graph to look at)."""
    import inspect
    try:
        return "pack_padded_sequence" in inspect.getsource(type(model).forward)
    except (OSError, TypeError):
        return False


def _extra_examples(args: list[tuple[str, Optional[bool]]], seen: str, rnn: Optional[tuple], path: Path,
                    input_shape: Optional[tuple[int, ...]]) -> tuple[list, str]:
    """Zero examples for the inputs of ``forward`` after the sequence (``args``: (name, is a tuple?
    None = unknown)), read as the initial state of the first recurrent module ``rnn`` = (path,
    module, class name): h0 (L*D, 1, H), c0 for an LSTM, a tuple argument (or an LSTM's only state
    argument) is (h0, c0); an argument named like ``lengths`` is the sequence length, (1,) int64.
    Returns them and the one-line account of it for messages ("" when forward takes only the sequence)."""
    if len(args) <= 1:
        return [], ""
    if rnn is None:
        raise McuNnError(f"{path}: forward takes {len(args)} inputs ({seen}) and has no LSTM/GRU/RNN whose "
                         "initial state they could be; mcu-nn takes one sequence input (plus initial state)")
    name, mod, cls = rnn
    if isinstance(mod, int):                     # a hand-written cell: (1, H) states, as LSTMCell takes them
        h, c = torch.zeros(1, mod), torch.zeros(1, mod)
    else:
        weights = dict(mod.named_parameters())
        layers = sum(1 for k in weights if k.startswith("weight_hh_l") and not k.endswith("_reverse"))
        dirs = 2 if "weight_hh_l0_reverse" in weights else 1
        hidden = weights["weight_hh_l0"].shape[0] // from_torch_module(cls).n_gates
        h = torch.zeros(layers * dirs, 1, weights["weight_hh_l0"].shape[1])
        c = torch.zeros(layers * dirs, 1, hidden)
    pool = [h, c] if cls in ("LSTM", "LSTMCell") else [h]
    states = [a for a in args[1:] if not _is_lengths(a[0])]
    extras: list = []
    for arg, is_tuple in args[1:]:
        if _is_lengths(arg):
            steps = int(input_shape[0]) if input_shape else 1
            extras.append(torch.full((1,), steps, dtype=torch.int64))
        elif isinstance(is_tuple, int) and not isinstance(is_tuple, bool) and 0 < is_tuple <= len(pool):
            extras.append(tuple(pool[:is_tuple]))        # TorchScript says how many: Tuple[Tensor] is (h,)
            pool = pool[is_tuple:]
        elif (is_tuple or (is_tuple is None and len(states) == 1)) and len(pool) > 1:
            extras.append(tuple(pool))
            pool = []
        elif pool:
            extras.append(pool.pop(0))
        else:
            raise McuNnError(f"{path}: forward takes {len(args)} inputs ({seen}); mcu-nn reads those after the "
                             f"sequence as the initial state of '{name}' ({cls}) or its lengths, and has no "
                             f"room for {arg!r}")
    shapes = ", ".join(str(tuple(t.shape)) for (arg, _), e in zip(args[1:], extras) if not _is_lengths(arg)
                       for t in (e if isinstance(e, tuple) else (e,)))
    parts = [f"the initial state of '{name or 'the model'}' ({cls}, zeros of shape {shapes})"] if states else []
    parts += ["the lengths (1,)"] if len(states) < len(args) - 1 else []
    return extras, (f"forward takes {len(args)} inputs ({seen}); mcu-nn reads those after the sequence as "
                    f"{' and '.join(parts)}, but ")


CELLS = {"LSTMCell": "LSTMCell", "GRUCell": "GRU", "RNNCell": "RNN"}


def _hand_written_cell(model: torch.nn.Module, class_name) -> Optional[tuple]:
    """(path, hidden size, "LSTMCell" | "GRU" | "RNN") of a model that steps a cell by hand: an
    nn.LSTMCell/GRUCell/RNNCell, or raw recurrent weights named like ``W_hh``/``weight_hh`` whose
    rows are 1, 3 or 4 times their columns (H). None when there is neither."""
    for name, m in model.named_modules():
        if class_name(m) in CELLS and hasattr(m, "hidden_size"):
            return name, int(m.hidden_size), CELLS[class_name(m)]
    for name, w in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1].lower()
        if w.dim() == 2 and "hh" in leaf and w.shape[0] % w.shape[1] == 0 and w.shape[0] // w.shape[1] in (1, 3, 4):
            kind = {4: "LSTMCell", 3: "GRU", 1: "RNN"}[w.shape[0] // w.shape[1]]
            return name.rsplit(".", 1)[0] if "." in name else "", int(w.shape[1]), kind
    return None


def _is_lengths(arg: str) -> bool:
    """``lengths``, ``seq_lengths``, ``lens``, ``x_len``: the per-sequence length of a packed model."""
    return arg.lower().endswith(("lengths", "lens", "len", "length"))


def _unbatch(extras: list, batched: bool) -> list:
    """The extra examples for an unbatched sequence: states lose their batch axis, lengths stay."""
    if batched:
        return extras
    drop = lambda t: t[:, 0] if t.dim() == 3 else t[0] if t.dim() == 2 else t          # noqa: E731
    return [tuple(map(drop, e)) if isinstance(e, tuple) else drop(e) for e in extras]


def _from_pickle(path: Path, allow_pickle: bool, input_shape: Optional[tuple[int, ...]]) -> torch.export.ExportedProgram:
    # weights_only=True runs no code: it tells a bare state_dict from a pickled module safely.
    try:
        with quiet():
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        _refuse_data(path, obj)
    except pickle.UnpicklingError:
        pass                                          # needs arbitrary globals: a pickled object with code
    except McuNnError:
        raise
    except Exception as e:
        raise McuNnError(f"{path}: cannot read the file ({first_line(e)}); it may be truncated or corrupt") from None
    if not allow_pickle:
        raise McuNnError(f"{path} is a pickled nn.Module: loading it runs code from the file; pass --allow-pickle "
                         f"if you trust it, or save it with torch.export.save (see README)")
    try:
        with quiet():
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as e:
        raise McuNnError(f"{path}: unpickling failed ({type(e).__name__}: {first_line(e)}); the class definitions "
                         f"the pickle refers to must be importable, or save the model with {SAVE_HINT}") from None
    if not isinstance(obj, torch.nn.Module):
        _refuse_data(path, obj)
    if isinstance(obj, torch.jit.ScriptModule):
        raise McuNnError(f"{path} pickles a TorchScript module; save it with torch.jit.save or {SAVE_HINT}")
    yield from from_module(obj, path, input_shape)


def from_module(model: torch.nn.Module, path: Union[Path, str],
                input_shape: Optional[tuple[int, ...]]) -> Iterator[Candidate]:
    """An nn.Module (unpickled, or handed over by the Python API) as ExportedPrograms to try:
    exported with zero examples of ``input_shape`` in each layout (see _with_layout)."""
    model = model.eval()
    args, seen = _forward_args(model)
    rnn = next(((n, m, type(m).__name__) for n, m in model.named_modules()
                if isinstance(m, torch.nn.RNNBase) and from_torch_module(type(m).__name__)), None)
    if rnn is None:
        rnn = _hand_written_cell(model, lambda m: type(m).__name__)
        if rnn is not None:               # forward(x, state=None) makes its own initial state: call it so
            args = [a for a in args if a[0] not in _defaults_none(model)]
    extras, said = _extra_examples(args, seen, rnn, path, input_shape)

    def convert(example: torch.Tensor, batched: bool) -> torch.export.ExportedProgram:
        try:
            with quiet(), _packing_folded(model):
                return torch.export.export(model, (example, *_unbatch(extras, batched)))
        except Exception as e:
            raise McuNnError(f"{path}: {said}torch.export cannot trace {type(model).__name__}.forward "
                             f"({type(e).__name__}: {first_line(e)}){PACKED if _packs(model) else ''}; check "
                             "--input-shape, or make the forward exportable and save it with torch.export.save") from None

    yield from _with_layout(path, input_shape, convert, bool(extras))


def _forward_args(model: torch.nn.Module) -> tuple[list[tuple[str, Optional[bool]]], str]:
    """forward()'s tensor arguments as (name, None) (a Python signature does not say which are
    tuples) and their account for messages; arguments with a non-None default keep it."""
    import inspect
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return [("x", None)], "x"
    kept = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            and (p.default is inspect.Parameter.empty or p.default is None)]
    return [(p.name, None) for p in kept], ", ".join(p.name for p in kept)


def _defaults_none(model: torch.nn.Module) -> set[str]:
    import inspect
    try:
        return {p.name for p in inspect.signature(model.forward).parameters.values() if p.default is None}
    except (TypeError, ValueError):
        return set()


def _refuse_data(path: Path, obj: object) -> None:
    """A pickle that holds data, not a module: say what it is and how to save a loadable file."""
    if isinstance(obj, dict):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            what = f"a state_dict ({len(obj)} tensors)"
        elif any(k in obj for k in ("state_dict", "model_state_dict", "model")):
            what = "a training checkpoint (a dict holding a state_dict)"
        else:
            what = "a dict"
        raise McuNnError(f"{path} is {what}: it has weights but no architecture; build the model in Python, "
                         f"load the weights, and save a loadable file with {SAVE_HINT}")
    if isinstance(obj, torch.Tensor):
        raise McuNnError(f"{path} holds a single tensor, not a model; save the model with {SAVE_HINT}")
    if not isinstance(obj, torch.nn.Module):
        raise McuNnError(f"{path} holds a {type(obj).__name__}, not a model; save the model with {SAVE_HINT}")
