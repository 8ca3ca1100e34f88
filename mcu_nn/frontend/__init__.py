"""PyTorch model files -> the float ``ir.Graph``.

All formats become a ``torch.export.ExportedProgram`` (``loading.py``) and one walker reads
its ATen graph (``walker.py``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .. import ir
from ..cells import cell_of
from ..errors import McuNnError, McuNnWarning
from .loops import fold_loops
from .loading import first_line, load_exported, quiet, sniff
from .walker import Relayout, Walker

__all__ = ["load_model", "c_identifier", "model_prefix", "prefix_problem", "ModelSource"]


ModelSource = Union[str, Path, torch.nn.Module, torch.export.ExportedProgram]


def load_model(source: ModelSource, *, allow_pickle: bool = False, input_shape: Optional[tuple[int, ...]] = None,
               name: Optional[str] = None, example_input: Any = None, check_prefix: bool = True) -> ir.Graph:
    """Load a PyTorch model into a float ``ir.Graph``.

    ``source`` is a file or, from the Python API, the model itself:
    - a ``torch.export.save`` archive (.pt2), a TorchScript file (``torch.jit.save`` of a
      scripted or traced module; needs ``input_shape``) and, only with ``allow_pickle=True``, a
      whole pickled module (``torch.save(model)``; needs ``input_shape``: unpickling runs code);
    - an ``nn.Module`` with ``example_input`` (a tensor or array, or a tuple of them for
      ``forward(x, state)``) or ``input_shape``;
    - a ``torch.export.ExportedProgram``.

    ``input_shape`` is (T, F) for float inputs or (T,) for token ids, without the batch axis;
    for a .pt2 archive it only overrides the recorded sequence length. Whatever the model's
    ``batch_first``, mcu-nn's data layout is always (N, T, F) (token ids: (N, T)): the Graph
    records F (or the vocabulary size) and T, never the model's own axis order.

    Raises ``McuNnError`` (one line) for missing, corrupt or foreign files, bare state_dicts,
    pickles without ``allow_pickle`` and ops mcu-nn cannot run, and for a C prefix (``name``, or
    the file name) that the build uses itself (see model_prefix; ``check_prefix=False``, for
    inspect, which writes nothing: such a file name becomes my_<prefix>).
    """
    if isinstance(source, (torch.nn.Module, torch.export.ExportedProgram)):
        return _load_in_memory(source, input_shape=input_shape, name=name, example_input=example_input)
    if not isinstance(source, (str, Path)):
        raise McuNnError(f"cannot read a model from a {type(source).__name__}: pass an nn.Module, a "
                         "torch.export.ExportedProgram or the path of a model file")
    p = Path(source)
    try:
        fmt = sniff(p)
        graph = _first_walk(load_exported(p, fmt, allow_pickle=allow_pickle, input_shape=input_shape), p)
    except McuNnError:
        raise
    except Exception as e:                   # the boundary: nothing from torch escapes as a traceback
        raise McuNnError(f"{p}: cannot read the model ({type(e).__name__}: {first_line(e)})") from e
    if input_shape is not None:
        _apply_input_shape(graph, input_shape, p)
    graph.name = model_prefix(name, default=p.stem, where=str(p), check=check_prefix)
    return graph


def _as_example_args(example_input: Any) -> tuple:
    """The example as forward()'s positional arguments: tensors (numpy arrays converted)."""
    items = example_input if isinstance(example_input, (tuple, list)) else (example_input,)

    def tensor(v: Any) -> Any:
        if isinstance(v, torch.Tensor) or v is None:
            return v
        if isinstance(v, (tuple, list)):
            return tuple(tensor(x) for x in v)
        import numpy as np
        a = np.asarray(v)
        if not np.issubdtype(a.dtype, np.number):
            raise McuNnError(f"example_input holds {a.dtype} values; pass a tensor or a numeric array")
        return torch.from_numpy(a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a.astype(np.int64))
    return tuple(tensor(v) for v in items)


def _shape_from_example(args: tuple) -> Optional[tuple[int, ...]]:
    """(T, F) or (T,) from a batch-first (N, T, F) / (N, T) ids example, or an unbatched (T, F)."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor):
        return None
    if x.is_floating_point():
        return tuple(int(d) for d in x.shape[1:]) if x.dim() == 3 else (tuple(int(d) for d in x.shape)
                                                                         if x.dim() == 2 else None)
    return (int(x.shape[-1]),) if x.dim() in (1, 2) else None


def _load_in_memory(source: Any, *, input_shape: Optional[tuple[int, ...]], name: Optional[str],
                    example_input: Any) -> ir.Graph:
    """An nn.Module or ExportedProgram from the Python API: the user's own example first (exactly
    what ``torch.export.export(model, (example,))`` gives), then mcu-nn's layouts (as for pickles)."""
    from .loading import from_module
    label = f"<{type(source).__name__} in memory>"
    try:
        if isinstance(source, torch.export.ExportedProgram):
            graph = _first_walk(iter([source]), Path(label))
        else:
            if example_input is None and input_shape is None:
                raise McuNnError(f"{label}: pass example_input (e.g. torch.zeros(1, T, F), or token ids "
                                 "(1, T)) or input_shape=(T, F), so mcu-nn can trace the model")
            args = _as_example_args(example_input) if example_input is not None else ()
            candidates = []
            if args:
                try:
                    with quiet():
                        candidates.append(torch.export.export(source.eval(), args))
                except Exception as e:       # tried again below in mcu-nn's layouts
                    candidates.append(McuNnError(f"{label}: torch.export cannot trace {type(source).__name__}."
                                                 f"forward with the example input ({type(e).__name__}: "
                                                 f"{first_line(e)})"))
            shape = input_shape or _shape_from_example(args)
            if shape is not None:
                candidates = [*candidates, *from_module(source, label, shape)]
            graph = _first_walk(iter(candidates), Path(label))
    except McuNnError:
        raise
    except Exception as e:                   # the boundary: nothing from torch escapes as a traceback
        raise McuNnError(f"{label}: cannot read the model ({type(e).__name__}: {first_line(e)})") from e
    if input_shape is not None:
        _apply_input_shape(graph, input_shape, Path(label))
    graph.name = model_prefix(name, default="model", where=label)
    return graph


def _first_walk(candidates, path: Path) -> ir.Graph:
    """The Graph of the first candidate program that converts and walks (see load_exported);
    when none does, the first candidate's error (the batched form is the usual one)."""
    errors = []
    for ep in candidates:
        if isinstance(ep, McuNnError):
            errors.append(ep)
            continue
        try:
            return _walk(ep, path)
        except McuNnError as e:
            errors.append(e)
    raise errors[0]


def _walk(ep: torch.export.ExportedProgram, path: Path) -> ir.Graph:
    with quiet():
        fold_loops(ep, str(path))            # hand-written loops over time -> one recurrent op
        try:
            res = Walker(ep, str(path), input_time_dim=1).run()
        except Relayout:                     # first RNN is not batch_first: input is (T, N, F)
            res = Walker(ep, str(path), input_time_dim=0).run()
    if not isinstance(res.seq_len, int):     # exported with a dynamic time axis
        res.seq_len = 0
    graph = ir.Graph(name="", input_kind=res.input_kind, input_size=int(res.input_size), seq_len=int(res.seq_len),
                     ops=res.ops, postprocess=res.postprocess, source_file=str(path), layout=dict(res.layout))
    _wire_state(graph, res)
    return graph


def _wire_state(graph: ir.Graph, res) -> None:
    """State passed in and returned: the extra inputs become a recurrent op's h0/c0 tensors, the
    extra outputs its h_n/c_n (names given once the chain is wired)."""
    if not res.state_inputs and not res.state_outputs:
        return
    for op, what, name in res.state_inputs:
        states = cell_of(op.kind).states
        slots = op.inputs[:1] + (op.inputs[1:] + [""] * len(states))[:len(states)]
        slots[states.index(what) + 1] = name
        op.inputs = slots
    graph.inputs = [ir.INPUT] + [name for _, _, name in res.state_inputs]
    main = graph.ops[-1].outputs[0]
    graph.outputs = [main] + [op.outputs[1 if what == "h" else 2] for op, what in res.state_outputs]


def _apply_input_shape(graph: ir.Graph, input_shape: tuple[int, ...], path: Path) -> None:
    """The ops do not depend on T, so a declared T always wins; F must match the model."""
    shape = tuple(int(d) for d in input_shape)
    tokens = graph.input_kind == "tokens"
    if tokens and len(shape) != 1 and not (len(shape) == 2 and shape[1] == 1):
        raise McuNnError(f"{path} takes token ids, so --input-shape is T (sequence length), not {','.join(map(str, shape))}")
    if not tokens and (len(shape) != 2 or shape[1] != graph.input_size):
        raise McuNnError(f"--input-shape {','.join(map(str, shape))} does not match {path}: the model takes "
                         f"{graph.input_size} features per step; pass --input-shape T,{graph.input_size}")
    graph.seq_len = shape[0]


def c_identifier(text: str) -> str:
    """Sanitise to a C identifier [a-z_][a-z0-9_]*: lower case, other characters become '_'."""
    s = re.sub(r"[^a-z0-9_]", "_", text.lower())
    s = re.sub(r"_+", "_", s).strip("_") or "model"
    return s if not s[0].isdigit() else "m_" + s


# Names the firmware and runtime use around a model (mcu_nn/firmware, mcu_nn/templates, build.py's
# mcunn_glue.h): a model prefix equal to one of them, or starting with it and "_", would define or
# redefine their symbols (--name glue: GLUE_INPUT_SIZE defined as itself; the build fails).
RESERVED_PREFIXES = {
    "mcunn": "the runtime and the firmware (mcunn_fixedpoint.h, mcunn_glue.h: mcunn_*, MCUNN_*)",
    "glue": "the firmware's model glue (mcunn_glue.h: glue_*, GLUE_*)",
    "board": "the firmware's board layer (board.h: board_*)",
    "bench": "the bench firmware (bench.h: bench_*, BENCH_*)",
}
# <prefix>.h lies on the include path of verify and build ahead of the C library's headers:
# a model named after one of them hides it (--name stdint: the build includes the model as <stdint.h>).
C_HEADERS = frozenset(
    "assert complex ctype errno fenv float inttypes iso646 limits locale math setjmp signal stdalign "
    "stdarg stdatomic stdbit stdbool stdckdint stddef stdint stdio stdlib stdnoreturn string tgmath "
    "threads time uchar wchar wctype fcntl poll termios unistd".split())


def prefix_problem(prefix: str) -> Optional[str]:
    """Why ``prefix`` (already a C identifier) cannot name a model's C, or None. C keywords are
    fine: the prefix never stands alone in the generated C (int_step, INT_INPUT_SIZE, int.h)."""
    for reserved, owner in RESERVED_PREFIXES.items():
        if prefix == reserved or prefix.startswith(reserved + "_"):
            return f"the prefix {reserved}_ belongs to {owner}"
    if prefix in C_HEADERS:
        return f"its header {prefix}.h would hide the C library's <{prefix}.h> when the export is compiled"
    return None


def model_prefix(name: Optional[str], *, default: str, where: str, check: bool = True) -> str:
    """The C prefix of a model: ``name`` (--name / export(name=...)) or ``default`` (the file
    name), made a C identifier. A given name that is not one already is accepted with a warning
    naming the prefix it became; a prefix the build uses itself is refused (McuNnError, one line)."""
    if name is not None and not isinstance(name, str):
        raise McuNnError(f"name must be a string, not {type(name).__name__}")
    prefix = c_identifier(name) if name else c_identifier(default)
    problem = prefix_problem(prefix)
    if problem and not check:
        return f"my_{prefix}"
    if problem:
        alt = f"my_{prefix}"
        if name:
            raise McuNnError(f"--name {name!r}: {problem}; choose another name (e.g. --name {alt})")
        raise McuNnError(f"{where}: the C prefix {prefix!r} (from the file name) cannot be used: {problem}; "
                         f"pass --name (e.g. --name {alt})")
    if name and prefix != name:
        import warnings
        warnings.warn(f"--name {name!r} is not a C identifier; the generated C uses the prefix {prefix!r} "
                      f"({prefix}_step, {prefix.upper()}_INPUT_SIZE, {prefix}.h)", McuNnWarning, stacklevel=3)
    return prefix
