"""One walker over the ATen FX graph of an ExportedProgram -> ``ir.Graph``.

The graph is "embedding? -> recurrent layers -> readout? -> head" with branches between:
each FX value gets an abstract ``_Val`` saying what it is (a per-step sequence, a per-sequence
vector, an RNN's h_n, ...); ops are appended to the IR as their nodes are met. A value made
before the last IR op (``version``) is a branch or skip connection: the op reading it gets
explicit tensor names (see ``emit``); ops reading the latest value are wired as a chain.
The ops around the cells (mcu_nn/ops units) are recognised in :mod:`.walk_ops`.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from torch.fx import Node

from .. import ir
from ..cells import Cell, from_aten
from ..errors import McuNnError
from . import time_ops, walk_ops

SUPPORTED = ("LSTM, GRU, RNN (tanh/relu), Linear, Embedding, ReLU, Tanh, Sigmoid, LeakyReLU, Hardtanh, ReLU6, "
             "Hardsigmoid, GELU, SiLU, Softsign, add/sub/mul of two tensors, cat of features, LayerNorm, "
             "BatchNorm1d after Linear, Softmax/LogSoftmax (last op), Dropout, Flatten, " + time_ops.SUPPORTED)
READOUTS = "out[:, -1], h_n[-1], h_n[-2] or torch.cat([h_n[-2], h_n[-1]], dim=1) of the last recurrent layer"

ACTIVATIONS = {"aten.relu.default": "relu", "aten.relu_.default": "relu", "aten.tanh.default": "tanh",
               "aten.tanh_.default": "tanh", "aten.sigmoid.default": "sigmoid", "aten.sigmoid_.default": "sigmoid"}
SOFTMAX = {"aten.softmax.int": "softmax", "aten._softmax.default": "softmax",
           "aten.log_softmax.int": "log_softmax", "aten._log_softmax.default": "log_softmax"}
IDENTITY = {"aten.clone.default", "aten.alias.default", "aten.detach.default", "aten.detach_.default",
            "aten.lift_fresh_copy.default", "aten.contiguous.default", "aten.identity.default"}
DROPOUT = {"aten.dropout.default", "aten.feature_dropout.default", "aten.alpha_dropout.default",
           "aten.feature_alpha_dropout.default", "aten.native_dropout.default"}
RESHAPE = {"aten.flatten.using_ints", "aten.view.default", "aten.reshape.default", "aten._unsafe_view.default",
           "aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default", "aten.unsqueeze.default"}
# what may read a squeezed (N, T) sequence (a size-1 head's rows viewed as (batch, -1))
SQUEEZED_READERS = {"aten.select.int", "output", *ACTIVATIONS}
SIZE_QUERIES = {"aten.dim.default", "aten.sym_size.int", "aten.size.default", "aten.sym_numel.default"}
ZERO_MAKERS = {"aten.zeros.default", "aten.new_zeros.default", "aten.zeros_like.default"}
# uninitialised tensors: zeros only once aten.zero_ has run on them (``weight.new(...).zero_()``)
EMPTY_MAKERS = {"aten.empty.memory_format", "aten.new_empty.default", "aten.empty_like.default"}
CHECKS = {"aten._assert_tensor_metadata.default", "aten._assert_scalar.default"}   # no value, no effect
FULL_MAKERS = {"aten.full.default": 1, "aten.new_full.default": 2, "aten.full_like.default": 1}
# ops an initial state may pass through and still be the zeros torch builds
# .to(...) / .float(): nothing to compute when the dtype stays float32 (checked per node)
CONVERSIONS = {"aten._to_copy.default", "aten.to.dtype", "aten.to.device", "aten.to.dtype_layout",
               "aten.to.other", "aten.to.prim_Device", "aten.to.prim_dtype"}
STATE_PASSTHROUGH = IDENTITY | RESHAPE | CONVERSIONS | {"aten.expand.default", "aten.repeat.default"}


class Relayout(Exception):
    """Internal: the first RNN says the input's time axis is the other one; walk again."""


@dataclass
class _Rnn:
    kind: str
    layers: int
    ndir: int
    state: int                       # h size per direction
    path: str                        # module path, for messages and op sources
    top: Any = None                  # the ir.Recurrent of the top layer
    layer_ops: list = field(default_factory=list)   # the ir.Recurrent of every layer, bottom first


@dataclass
class _Val:
    kind: str                        # tokens | seq | vec | rnn | hn | cn | hn_dirs | int | param | const
    version: int                     # len(ops) when it was made
    time_dim: int = 1                # seq/tokens: which of axes 0/1 is time (features are last)
    rnn: Optional[_Rnn] = None
    dirs: tuple[int, ...] = ()       # hn_dirs: directions of the top layer, in concat order
    post: Optional[str] = None       # softmax already applied
    name: str = ""                   # param: qualified parameter name
    tensor: Optional[torch.Tensor] = None
    rows: str = ""                   # seq flattened to (rows, F) by out.reshape(-1, H): "T*N" or "N*T"
    vocab: int = 0                   # onehot: the number of classes
    cf: bool = False                 # seq in (N, C, T) layout (after transpose(1, 2)): channels first
    pad: tuple = ()                  # seq: (left, right) zero padding of time, pending for a Conv1d
    refs: tuple = ()                 # attention parts: (values tensor, scores tensor)
    items: tuple = ()                # multi: the values of a tuple-returning op
    src: Any = None                  # walk_ops patterns (softsign's |x|): the FX node of x
    squeezed: bool = False           # seq/vec of one feature whose feature axis is gone: (N, T) / (N,)


@dataclass
class WalkResult:
    ops: list = field(default_factory=list)
    input_kind: str = "float"
    input_size: int = 0
    seq_len: Any = 0
    postprocess: Optional[str] = None
    state_inputs: list = field(default_factory=list)    # (ir.Recurrent, "h"|"c", input name), forward's order
    state_outputs: list = field(default_factory=list)   # (ir.Recurrent, "h"|"c"), returned after the output
    layout: dict = field(default_factory=dict)          # ir.Graph.layout: the model's own axes


class Walker:
    def __init__(self, ep: torch.export.ExportedProgram, label: str, input_time_dim: int):
        self.ep, self.label, self.input_time_dim = ep, label, input_time_dim
        self.ops: list = []
        self.vals: dict[Node, _Val] = {}
        self.res = WalkResult()
        self.input_shape: tuple = ()
        self.input_node: Optional[Node] = None
        self._specs = _parameter_specs(ep)
        self.inserted = False                     # a readout was moved up the chain (see select)

    # ------------------------------------------------------------------ helpers
    def fail(self, msg: str) -> McuNnError:
        return McuNnError(f"{self.label}: {msg}")

    def where(self, node: Node) -> str:
        """" (from module 'enc.rnn' (LSTM))" from nn_module_stack, else from parameter names."""
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            path, cls = list(stack.values())[-1]
            cls = str(getattr(cls, "__name__", cls)).rsplit(".", 1)[-1]
            if path and "Wrapper" not in cls:
                return f" (from module '{path}' ({cls}))"
        for a in _flat(node.args):
            if isinstance(a, Node) and a in self.vals and self.vals[a].kind == "param" and "." in self.vals[a].name:
                return f" (from module '{self.vals[a].name.rsplit('.', 1)[0]}')"
        return " (in forward)"

    def module_path(self, node: Node, param_names: list[str], fallback: str) -> str:
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            path, cls = list(stack.values())[-1]
            if path and "Wrapper" not in str(cls):
                return path
        for n in param_names:
            if "." in n:
                return n.rsplit(".", 1)[0]
        return fallback

    def val(self, node: Any, consumer: Node) -> _Val:
        if not isinstance(node, Node) or node not in self.vals:
            raise self.fail(f"{_opname(consumer)}{self.where(consumer)} takes an input mcu-nn cannot follow")
        return self.vals[node]

    def data(self, node: Any, consumer: Node, allow_pad: bool = False) -> _Val:
        """The data value ``consumer`` reads, made concrete (a pending h_n readout becomes FinalHidden)."""
        v = self.val(node, consumer)
        what = f"{_opname(consumer)}{self.where(consumer)}"
        if v.pad and not allow_pad:
            raise self.fail(f"{what} reads a zero-padded sequence; padding of the time axis is supported only "
                            "right before a Conv1d")
        if v.kind in time_ops.PENDING:
            raise self.fail(f"{what} uses attention weights (softmax over time) other than in the weighted sum "
                            "of the values (torch.sum(w * out, dim=1) or torch.bmm(w.transpose(1, 2), out))")
        if v.post:
            raise self.fail(f"{what} comes after {v.post}; Softmax/LogSoftmax is supported only as the last op")
        if v.kind == "cn":
            raise self.fail(f"{what} uses the LSTM cell state c_n; supported readouts: {READOUTS}")
        if v.kind == "hn":
            if v.rnn.layers * v.rnn.ndir != 1:
                raise self.fail(f"{what} uses the whole h_n (all layers and directions); supported readouts: {READOUTS}")
            v = _Val("hn_dirs", v.version, rnn=v.rnn, dirs=(0,))
        if v.kind == "state":
            raise self.fail(f"{what} reads model input {v.name!r}; inputs after the sequence are supported only "
                            "as the initial state (h0, c0) of a recurrent module or its lengths")
        if v.kind in walk_ops.PATTERN_KINDS:
            raise self.fail(f"{what} reads torch.abs(x) (or |x| + 1); supported only inside softsign "
                            "x / (1 + |x|)")
        if v.kind in ("rnn", "int", "param", "const"):
            raise self.fail(f"{what} reads a {v.kind} value, not the data flowing through the model; unsupported")
        if v.squeezed and v.kind == "seq" and _opname(consumer) not in SQUEEZED_READERS:
            raise self.fail(f"{what} reads per-step outputs of one feature viewed as (batch, steps); only "
                            "activations and the last step (out[:, -1]) may follow that view")
        if v.version != len(self.ops) and (v.kind == "hn_dirs" or self.inserted):
            raise self.chain_error(consumer)
        if v.kind == "hn_dirs":
            self.readout_check(consumer)
            self.emit(ir.FinalHidden(list(v.dirs), source=v.rnn.path))
            return _Val("vec", len(self.ops))
        return v

    def chain_error(self, node: Node) -> McuNnError:
        return self.fail(f"{_opname(node)}{self.where(node)} reads a tensor computed before the last layer: "
                         "branches and skip connections are unsupported (the model must be a single chain)")

    def emit(self, op: Any, *reads: _Val) -> None:
        """Append ``op`` reading ``reads``. An op reading anything but the latest value alone gets
        explicit tensor names (op indices are final once such an op exists, see ``select``)."""
        if len(reads) > 1 or any(r.version != len(self.ops) for r in reads):
            op.inputs = [self.tensor_name(r) for r in reads]
        self.ops.append(op)

    def tensor_name(self, v: _Val) -> str:
        """The IR tensor a data value is: the model input or the main output of the op that made it."""
        if v.version == 0:
            return ir.INPUT
        op = self.ops[v.version - 1]
        return (op.outputs or ir.default_outputs(op, v.version - 1))[0]

    def readout_check(self, node: Node) -> None:
        if any(isinstance(o, (ir.SelectLast, ir.FinalHidden)) for o in self.ops):
            raise self.fail(f"{_opname(node)}{self.where(node)} reads out a second time; only one readout "
                            f"(sequence -> vector) is supported")
        if not any(isinstance(o, ir.Recurrent) for o in self.ops):
            raise self.fail(f"{_opname(node)}{self.where(node)} selects a time step but there is no recurrent "
                            "layer before it; unsupported")

    def param(self, node: Any, consumer: Node) -> tuple[str, np.ndarray]:
        v = self.val(node, consumer)
        if v.kind != "param":
            raise self.fail(f"{_opname(consumer)}{self.where(consumer)}: its weights are computed in forward, "
                            "not stored parameters; unsupported")
        t = v.tensor.detach().to(torch.float32).cpu()
        if not bool(torch.isfinite(t).all()):
            raise self.fail(f"parameter {v.name} contains NaN or Inf values; fix the trained weights and save again")
        return v.name, t.numpy().copy()

    # ------------------------------------------------------------------ walk
    def run(self) -> WalkResult:
        out_node = None
        for node in self.ep.graph.nodes:
            if node.op == "placeholder":
                self.placeholder(node)
            elif node.op == "get_attr":
                t = getattr(self.ep.graph_module, str(node.target))
                self.vals[node] = _Val("param", 0, name=str(node.target), tensor=t)
            elif node.op == "call_function":
                self.call(node)
            elif node.op == "output":
                out_node = node
            else:
                raise self.fail(f"unsupported graph node {node.op} {node.target}")
        self.output(out_node)
        return self.res

    def placeholder(self, node: Node) -> None:
        spec = self._specs.get(node.name)
        if spec is not None:                      # parameter, buffer or lifted constant
            name, tensor = spec
            self.vals[node] = _Val("param", 0, name=name, tensor=tensor)
            return
        if self.input_shape:                      # after the sequence: an RNN's initial state
            self.vals[node] = _Val("state", 0, name=node.name)
            return
        fake = node.meta.get("val")
        if not isinstance(fake, torch.Tensor):
            raise self.fail(f"model input {node.name} is not a tensor; mcu-nn needs one tensor input")
        self.input_shape = tuple(fake.shape)
        tokens = not fake.dtype.is_floating_point
        rank = 2 if tokens else 3
        if not tokens and len(self.input_shape) == 2 and _gains_feature_axis(node):
            self.input_node = node
            self.one_feature_input()          # (N, T) that the model itself gives its feature axis
            return
        if len(self.input_shape) == rank - 1:     # unbatched: (T,) ids or (T, F), as nn.LSTM accepts
            self.input_time_dim = 0
        elif len(self.input_shape) != rank:
            layout = "(N, T) or (T,) token ids" if tokens else "(N, T, F) or (T, F)"
            raise self.fail(f"model input has shape {list(self.input_shape)}; mcu-nn needs a sequence {layout}")
        self.res.layout["input"] = _axes_name(len(self.input_shape) - (0 if tokens else 1), self.input_time_dim,
                                              "" if tokens else ",F")
        self.res.input_kind = "tokens" if tokens else "float"
        self.res.seq_len = self.input_shape[self.input_time_dim]
        if not isinstance(self.res.seq_len, int):        # dynamic time axis: use the stored example
            example = (self.ep.example_inputs or ((), {}))[0]
            self.res.seq_len = int(example[0].shape[self.input_time_dim]) if example else 0
        if not tokens:
            self.res.input_size = self.input_shape[-1]
        self.vals[node] = _Val("tokens" if tokens else "seq", 0, time_dim=self.input_time_dim)

    def one_feature_input(self) -> None:
        """An (N, T) float input that the model unsqueezes to (N, T, 1) (``x.unsqueeze(-1)``, or a folded
        ``x.split(1, dim=1)`` loop): one feature per step, batch first."""
        self.input_time_dim = 1
        self.res.layout["input"] = "N,T"
        self.res.input_kind = "float"
        self.res.seq_len = self.input_shape[1] if isinstance(self.input_shape[1], int) else 0
        self.res.input_size = 1
        self.vals[self.input_node] = _Val("seq", 0, time_dim=1, squeezed=True)

    def call(self, node: Node) -> None:
        name = _opname(node)
        if node.target is operator.getitem:
            return self.getitem(node)
        cell = from_aten(name)
        if cell is not None:
            return self.recurrent(node, cell)
        if name in SIZE_QUERIES:
            self.vals[node] = _Val("int", 0)
            return
        if name in CHECKS:
            self.vals[node] = _Val("int", 0)
            return
        if name in ZERO_MAKERS or name in FULL_MAKERS or name in EMPTY_MAKERS or \
                name in ("aten.ones.default", "aten.randn.default", "aten.rand.default"):
            self.vals[node] = _Val("const", 0)     # only meaningful as an RNN's initial state
            return
        if name == "aten.zero_.default":
            if self.val(node.args[0], node).kind != "const":
                raise self.unsupported(node, " (zeroing a tensor that is not built inside forward)")
            self.vals[node] = _Val("const", 0)
            return
        if name == "aten.one_hot.default":
            return self.one_hot(node)
        if name in CONVERSIONS and self.converts_ids(node):
            return
        if name in IDENTITY or name in CONVERSIONS:
            if name not in IDENTITY and not _same_dtype(node):
                raise self.fail(f"{name}{self.where(node)} changes the dtype; unsupported")
            self.vals[node] = self.val(node.args[0], node)
            return
        if name in DROPOUT:
            train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train", False)
            if train:
                raise self.fail(f"dropout{self.where(node)} is in training mode: call model.eval() before saving")
            self.vals[node] = self.val(node.args[0], node)
            return
        if name == "aten.linear.default":
            return self.linear(node)
        if name in ACTIVATIONS:
            x = self.data(node.args[0], node)
            self.no_tokens(x, node)
            self.emit(ir.Activation(ACTIVATIONS[name], source=self.source(node)), x)
            self.vals[node] = _Val(x.kind, len(self.ops), time_dim=x.time_dim, rows=x.rows, cf=x.cf,
                                   squeezed=x.squeezed)
            return
        if name == "aten.embedding.default":
            return self.embedding(node)
        if name in SOFTMAX:
            return self.softmax(node, SOFTMAX[name])
        if name == "aten.select.int":
            return self.select(node)
        if name == "aten.cat.default":
            return self.cat(node)
        if name == "aten.slice.Tensor":
            return self.slice(node)
        if name in RESHAPE:
            return self.reshape(node)
        if name in ("aten.transpose.int", "aten.permute.default", "aten.t.default", "aten.swapaxes.default",
                    "aten.numpy_T.default"):
            return self.transpose(node)
        if time_ops.handles(self, node, name):
            return time_ops.call(self, node, name)
        if walk_ops.call(self, node, name):
            return
        raise self.unsupported(node)

    def unsupported(self, node: Node, why: str = "") -> McuNnError:
        return self.fail(f"unsupported op {_opname(node)}{self.where(node)}{why}; supported: {SUPPORTED}")

    def source(self, node: Node) -> str:
        w = self.where(node)
        return w[len(" (from module '"):].split("'")[0] if w.startswith(" (from module") else ""

    def no_tokens(self, x: _Val, node: Node) -> None:
        if x.kind == "onehot":
            raise self.fail(f"{_opname(node)}{self.where(node)} reads a one-hot vector; one-hot inputs are "
                            "supported only straight into a recurrent layer (or use nn.Embedding)")
        if x.kind == "tokens":
            raise self.fail(f"{_opname(node)}{self.where(node)} reads the integer token ids; token models must "
                            "start with nn.Embedding")

    # ------------------------------------------------------------------ ops
    def recurrent(self, node: Node, cell: Cell) -> None:
        x_node, hx, params, has_biases, num_layers, _dropout, train, bidirectional, batch_first = node.args[:9]
        params = list(params)
        names = [self.val(p, node).name for p in params]
        where = self.where(node)
        module = cell.torch_module or cell.kind
        path = self.module_path(node, names, module.lower())
        if train:
            raise self.fail(f"{module}{where} was saved in training mode: call model.eval() before saving")
        x = self.data(x_node, node)
        ids = x.kind == "onehot"
        if ids and self.ops:
            raise self.fail(f"{module}{where} receives a one-hot vector computed after other layers; "
                            "one-hot inputs are supported on the model input only")
        self.features_last(x, node)
        if x.kind not in ("seq", "onehot"):
            what = "integer token ids (add an nn.Embedding first)" if x.kind == "tokens" else \
                "a single vector, not a sequence"
            raise self.fail(f"{module}{where} receives {what}; unsupported")
        want = 1 if batch_first else 0
        if x.time_dim != want:
            if not any(isinstance(o, ir.Recurrent) for o in self.ops):
                raise Relayout()            # every layout change so far is relative to the input's
            raise self.fail(f"{module}{where} (batch_first={bool(batch_first)}) receives a sequence whose "
                            f"time axis is axis {x.time_dim}; mcu-nn cannot follow that layout change")
        given = []                               # (h|c, model input name) of caller-given states
        for what, h in zip(cell.states, hx if isinstance(hx, (list, tuple)) else [hx]):
            if isinstance(h, Node) and self.vals.get(h) is not None and self.vals[h].kind == "state":
                given.append((what, h.name))
                continue
            if not self.is_zero_state(h):
                raise self.fail(f"{module}{where} is given an initial state that is not zeros; only the "
                                "default zero state is supported (call the layer without hx)")
        ndir = 2 if bidirectional else 1
        per = len(params) // (num_layers * ndir)
        base = (4 if has_biases else 2) + len(cell.extra_params)
        if per not in (base, base + 1) or per * num_layers * ndir != len(params):
            raise self.fail(f"{module or cell.kind}{where} has an unexpected parameter layout ({len(params)} tensors)")
        gates = cell.n_gates
        state = 0
        for layer in range(num_layers):
            dirs = []
            for d in range(ndir):
                chunk = params[(layer * ndir + d) * per:(layer * ndir + d + 1) * per]
                w = [self.param(p, node)[1] for p in chunk]
                first = 4 if has_biases else 2
                dirs.append(ir.DirectionWeights(
                    w_ih=w[0], w_hh=w[1], b_ih=w[2] if has_biases else None, b_hh=w[3] if has_biases else None,
                    w_hr=w[base] if per > base else None,
                    extra={k: w[first + i] for i, k in enumerate(cell.extra_params)}))
            hidden = dirs[0].w_ih.shape[0] // gates
            proj = dirs[0].w_hr.shape[0] if dirs[0].w_hr is not None else 0
            src = f"{path} (layer {layer})" if num_layers > 1 else path
            self.emit(ir.Recurrent(cell.kind, int(dirs[0].w_ih.shape[1]), int(hidden), int(proj), bool(bidirectional),
                                   dirs, source=src, input_ids=ids and layer == 0), *([x] if layer == 0 else []))
            state = proj or hidden
        layer_ops = self.ops[len(self.ops) - num_layers:]
        info = _Rnn(cell.kind, int(num_layers), ndir, int(state), path, top=self.ops[-1], layer_ops=layer_ops)
        # a state input of shape (L*D, N, H) is read per layer: rows l*D .. l*D+D-1 ("h0.l1" for layer 1)
        self.res.state_inputs += [(op, what, name if num_layers == 1 else f"{name}.l{layer}")
                                  for what, name in given for layer, op in enumerate(layer_ops)]
        self.vals[node] = _Val("rnn", len(self.ops), rnn=info, time_dim=want)

    def features_last(self, x: _Val, node: Node) -> None:
        if x.cf:
            raise self.fail(f"{_opname(node)}{self.where(node)} reads a sequence in (N, C, T) layout; mcu-nn runs "
                            "it only through Conv1d/BatchNorm1d/pools/activations: transpose it back to (N, T, C) "
                            "first (x.transpose(1, 2) or x.permute(0, 2, 1))")

    def commutes_to_rnn(self) -> bool:
        """out[:, -1] may move right after the last recurrent layer: only per-step maps follow it."""
        last = max((i for i, o in enumerate(self.ops) if isinstance(o, ir.Recurrent)), default=-1)
        return last >= 0 and all(isinstance(o, (ir.Linear, ir.Activation)) for o in self.ops[last + 1:])

    def is_zero_state(self, node: Any) -> bool:
        if not isinstance(node, Node):
            return node is None
        if node.op == "placeholder" or node.op == "get_attr":
            v = self.vals.get(node)
            return v is not None and v.kind == "param" and not bool(torch.count_nonzero(v.tensor))
        name = _opname(node)
        if name in ZERO_MAKERS or name == "aten.zero_.default":
            return True
        if name in EMPTY_MAKERS:     # new_empty(...) then .zero_() in place
            return any(_opname(u) == "aten.zero_.default" for u in node.users)
        if name in FULL_MAKERS:
            return node.args[FULL_MAKERS[name]] == 0
        if name in STATE_PASSTHROUGH or name in DROPOUT:
            return self.is_zero_state(node.args[0])
        return False

    def one_hot(self, node: Node) -> None:
        """F.one_hot(ids, V): kept as ids; the recurrent layer it feeds picks column id of W_ih."""
        x = self.val(node.args[0], node)
        vocab = node.args[1] if len(node.args) > 1 else node.kwargs.get("num_classes", -1)
        if x.kind != "tokens" or self.ops:
            raise self.fail(f"one_hot{self.where(node)} is supported only on the model's token ids")
        if not isinstance(vocab, int) or vocab < 1:
            raise self.fail(f"one_hot{self.where(node)} has no fixed number of classes; pass it "
                            "(F.one_hot(x, vocab_size)) so the model's input size is known")
        self.res.input_size = vocab
        self.vals[node] = _Val("onehot", x.version, time_dim=x.time_dim, vocab=vocab)

    def converts_ids(self, node: Node) -> bool:
        """.long() of token ids and .float() of a one-hot: dtype changes that compute nothing here."""
        v = self.vals.get(node.args[0]) if isinstance(node.args[0], Node) else None
        if v is None or v.kind not in ("tokens", "onehot"):
            return False
        out = node.meta.get("val")
        if v.kind == "tokens" and isinstance(out, torch.Tensor) and out.dtype.is_floating_point:
            raise self.fail(f"{_opname(node)}{self.where(node)} turns the token ids into floats; feed them to "
                            "nn.Embedding or F.one_hot instead")
        self.vals[node] = v
        return True

    def sequence_reshape(self, x: _Val, old: tuple, new: tuple) -> Optional[_Val]:
        """Reshapes that keep a sequence a sequence: adding or removing a batch axis of 1
        (``embeds.view(len(sentence), 1, -1)``, nn.LSTM on unbatched input) and flattening
        (T, N, H) into rows (``out.reshape(-1, H)``, d2l.ai's heads). None when it is neither."""
        feat = 0 if x.kind == "tokens" else 1
        if feat and (not new or new[-1] != old[-1]):
            return None
        lead_old, lead_new = old[:len(old) - feat], new[:len(new) - feat]
        steps = lead_old[x.time_dim]
        if [d for d in lead_old if d != 1] == [d for d in lead_new if d != 1] and steps != 1:
            at = [i for i, d in enumerate(lead_old) if d != 1].index(x.time_dim)
            t_new = [i for i, d in enumerate(lead_new) if d != 1][at]
            batched = "N" in self.res.layout.get("input", "")
            rows = ("T*N" if x.time_dim == 0 else "N*T") if batched and len(lead_new) == 1 and feat else x.rows
            return _Val(x.kind, x.version, time_dim=t_new, vocab=x.vocab, rows=rows)
        if feat and len(lead_old) == 2 and len(lead_new) == 1 and x.kind == "seq":
            rows = "T*N" if x.time_dim == 0 else "N*T"      # row t*N + n (time-major) or n*T + t
            return _Val("seq", x.version, time_dim=0, rows=rows)
        if feat and x.rows and len(lead_old) == 1 and len(lead_new) == 2 and lead_new[0] * lead_new[1] == lead_old[0]:
            # the rows folded back: fc(out.reshape(-1, H)).view(N, T, -1) is a per-step head again
            return _Val("seq", x.version, time_dim=1 if x.rows == "N*T" else 0)
        return None

    def unflatten_rows(self, x: _Val, old: tuple, new: tuple) -> Optional[_Val]:
        """Rows of a size-1 head viewed back as (batch, steps) (Udacity's ``sig_out.view(batch_size, -1)``):
        a sequence of one feature with its feature axis gone. None for any other reshape."""
        if not x.rows or old[-1] != 1 or len(old) != 2 or len(new) != 2 or "N" not in self.res.layout.get("input", ""):
            return None
        steps = self.input_shape[self.input_time_dim]
        batch = self.input_shape[1 - self.input_time_dim]
        want = (batch, steps) if x.rows == "N*T" else (steps, batch)
        if tuple(new) != want:
            return None
        return _Val("seq", x.version, time_dim=1 if x.rows == "N*T" else 0, squeezed=True)

    def getitem(self, node: Node) -> None:
        src, idx = node.args
        v = self.val(src, node)
        if v.kind == "multi":
            self.vals[node] = v.items[idx]
            return
        if v.kind != "rnn":
            raise self.unsupported(node, " (indexing a multi-output op)")
        kind = ["seq", "hn", "cn"][idx]
        self.vals[node] = _Val(kind, v.version, time_dim=v.time_dim, rnn=v.rnn)

    def linear(self, node: Node) -> None:
        x = self.data(node.args[0], node)
        self.no_tokens(x, node)
        self.features_last(x, node)
        _, w = self.param(node.args[1], node)
        b_node = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        b = self.param(b_node, node)[1] if b_node is not None else None
        self.emit(ir.Linear(w, b, source=self.source(node)), x)
        self.vals[node] = _Val(x.kind, len(self.ops), time_dim=x.time_dim, rows=x.rows)

    def embedding(self, node: Node) -> None:
        x = self.val(node.args[1], node)
        if x.kind != "tokens" or self.ops:
            raise self.fail(f"nn.Embedding{self.where(node)} is supported only as the first op, on the model input")
        name, w = self.param(node.args[0], node)
        self.emit(ir.Embedding(w, source=self.source(node) or name.rsplit(".", 1)[0]))
        self.res.input_size = int(w.shape[0])
        self.vals[node] = _Val("seq", len(self.ops), time_dim=x.time_dim)

    def softmax(self, node: Node, kind: str) -> None:
        x = self.data(node.args[0], node)
        rank = len(_shape(node))
        if time_ops.attention_softmax(self, node, x, kind):
            return
        if node.args[1] % rank != rank - 1:
            raise self.fail(f"{kind}{self.where(node)} is over axis {node.args[1]}, not the features; unsupported")
        self.res.postprocess = kind
        self.vals[node] = _Val(x.kind, x.version, time_dim=x.time_dim, post=kind, rows=x.rows)

    def select(self, node: Node) -> None:
        src, dim, index = node.args[:3]
        v = self.val(src, node)
        shape = _shape(src)
        dim = dim % len(shape)
        if v.kind == "hn":
            if v.version != len(self.ops):
                raise self.chain_error(node)
            rows = v.rnn.layers * v.rnn.ndir
            row = index % rows
            if dim != 0:
                raise self.fail(f"{_opname(node)}{self.where(node)} indexes h_n along axis {dim}; supported "
                                f"readouts: {READOUTS}")
            if row // v.rnn.ndir != v.rnn.layers - 1:
                raise self.fail(f"{_opname(node)}{self.where(node)} reads h_n[{index}], the state of a lower layer; "
                                f"supported readouts: {READOUTS}")
            self.vals[node] = _Val("hn_dirs", v.version, rnn=v.rnn, dirs=(row % v.rnn.ndir,))
            return
        x = self.data(src, node)
        if x.kind != "seq":
            raise self.fail(f"{_opname(node)}{self.where(node)} selects from a {x.kind} along axis {dim}; "
                            f"only the last time step of a sequence is supported ({READOUTS})")
        if dim != x.time_dim:
            axis = "features" if dim == len(shape) - 1 else "batch"
            raise self.fail(f"{_opname(node)}{self.where(node)} selects along the {axis} axis; supported "
                            f"readouts: {READOUTS}")
        steps = shape[dim]
        self.features_last(x, node)
        if index % steps != steps - 1 or not self.commutes_to_rnn():
            if x.squeezed:
                raise self.fail(f"{_opname(node)}{self.where(node)} selects step {index} of per-step outputs viewed "
                                "as (batch, steps); only the last step (out[:, -1]) is supported there")
            return time_ops.time_select(self, node, x, index)
        self.readout_check(node)
        if any(o.inputs for o in self.ops):       # explicitly wired ops name tensors by op index
            if x.version != len(self.ops):
                raise self.chain_error(node)
            self.emit(ir.SelectLast(source=self.source(node)), x)
            self.vals[node] = _Val("vec", len(self.ops), squeezed=x.squeezed)
            return
        last = max(i for i, o in enumerate(self.ops) if isinstance(o, ir.Recurrent))
        # per-step ops between the RNN and the selection commute with it: select right after the RNN
        self.ops.insert(last + 1, ir.SelectLast(source=self.source(node)))
        self.inserted = self.inserted or last + 2 != len(self.ops)   # an append moves nothing
        self.vals[node] = _Val("vec", len(self.ops), squeezed=x.squeezed)

    def cat(self, node: Node) -> None:
        parts = [self.val(p, node) for p in node.args[0]]
        dim = node.args[1] if len(node.args) > 1 else 0
        if parts and all(p.kind in ("hn_dirs", "hn") for p in parts):
            parts = [p if p.kind == "hn_dirs" else self.data(q, node) for p, q in zip(parts, node.args[0])]
            dirs = tuple(d for p in parts for d in p.dirs)
            same = all(p.rnn is parts[0].rnn for p in parts)
            if same and dim % 2 == 1 and len(set(dirs)) == len(dirs):
                self.vals[node] = _Val("hn_dirs", parts[0].version, rnn=parts[0].rnn, dirs=dirs)
                return
        if walk_ops.cat(self, node, dim):
            return
        raise self.unsupported(node, f" (only {READOUTS}, or data tensors along the feature axis, may be "
                                     "concatenated)")

    def slice(self, node: Node) -> None:
        src = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else 0
        start = node.args[2] if len(node.args) > 2 else None
        end = node.args[3] if len(node.args) > 3 else None
        step = node.args[4] if len(node.args) > 4 else 1
        size = _shape(src)[dim]
        if (start in (None, 0) or start <= -size) and (end is None or end >= size) and step == 1:
            self.vals[node] = self.val(src, node)
            return
        if time_ops.time_slice(self, node, dim, start, end, step):
            return
        raise self.unsupported(node, f" (slicing [{start}:{end}] of axis {dim}; only whole-axis slices are no-ops)")

    def reshape(self, node: Node) -> None:
        v = self.val(node.args[0], node)
        old, new = tuple(_shape(node.args[0])), tuple(_shape(node))
        if v.kind in ("const", "int", "param"):
            self.vals[node] = v
            return
        if v.kind in ("hn", "cn") and [d for d in old if d != 1] == [d for d in new if d != 1] \
                and len(new) >= 2 and new[0] == old[0]:
            self.vals[node] = v          # unbatched nn.LSTM squeezes the batch axis of h_n / c_n
            return
        if v.kind == "hn" and v.rnn.layers * v.rnn.ndir == 1 and new and new[-1] == old[-1] \
                and math.prod(new[:-1]) == math.prod(old[1:-1]):
            self.vals[node] = _Val("hn_dirs", v.version, rnn=v.rnn, dirs=(0,))
            return
        if node.args[0] is self.input_node and self.res.layout.get("input") == "N,T" \
                and new == old + (1,):
            self.vals[node] = _Val("seq", 0, time_dim=1)      # (N, T) -> (N, T, 1), see one_feature_input
            return
        x = self.data(node.args[0], node)
        if old == new:
            self.vals[node] = x
            return
        if x.kind in ("seq", "tokens", "onehot"):
            moved = self.sequence_reshape(x, old, new) or self.unflatten_rows(x, old, new)
            if moved is not None:
                self.vals[node] = moved
                return
        if x.kind == "vec" and new and new[-1] == old[-1] and math.prod(new[:-1]) == math.prod(old[:-1]):
            self.vals[node] = x
            return
        if x.kind == "vec" and old and new and old[0] == new[0] and \
                [d for d in old[1:] if d != 1] == [d for d in new[1:] if d != 1]:   # (N, C, 1) <-> (N, C)
            self.vals[node] = x
            return
        if x.kind == "seq" and not x.rows and len(old) == 3 and old[-1] == 1 and new == old[:-1]:
            self.vals[node] = _Val("seq", x.version, time_dim=x.time_dim, squeezed=True)   # (N, T, 1) -> (N, T)
            return
        if x.kind == "seq" and time_ops.flatten_steps(self, node, x, old, new):
            return
        if x.kind == "seq" and new and new[-1] != old[-1] and old[x.time_dim] > 1 and len(new) < len(old):
            raise self.fail(f"{_opname(node)}{self.where(node)} flattens {list(old)} into {list(new)}, mixing the "
                            "time axis with the features; unsupported: read out one step first (out[:, -1]) or "
                            "apply the layers per step")
        raise self.unsupported(node, f" (reshape {list(old)} -> {list(new)})")

    def transpose(self, node: Node) -> None:
        if time_ops.transpose(self, node):
            return
        x = self.data(node.args[0], node)
        name, rank = _opname(node), len(_shape(node.args[0]))
        if name == "aten.permute.default":
            perm = [d % rank for d in node.args[1]]
        elif name == "aten.t.default":
            perm = [1, 0] if rank == 2 else list(range(rank))
        elif name == "aten.numpy_T.default":               # x.T reverses every axis
            perm = list(range(rank))[::-1]
        else:
            perm = list(range(rank))
            a, b = node.args[1] % rank, node.args[2] % rank
            perm[a], perm[b] = perm[b], perm[a]
        if x.kind in ("seq", "tokens", "onehot") and perm[:2] == [1, 0] and perm[2:] == list(range(2, rank)):
            self.vals[node] = _Val(x.kind, x.version, time_dim=1 - x.time_dim, vocab=x.vocab)  # batch <-> time
            return
        if perm == list(range(rank)):
            self.vals[node] = x
            return
        raise self.unsupported(node, f" (permutation {perm} moves the feature axis)")

    def output(self, node: Optional[Node]) -> None:
        outs = [a for a in _flat(node.args)] if node is not None else []
        if not outs:
            raise self.fail("the model returns nothing; mcu-nn needs one output tensor")
        for extra in outs[1:]:                   # (out, state): the final states of a recurrent module
            v = self.vals.get(extra) if isinstance(extra, Node) else None
            if v is None or v.kind not in ("hn", "cn"):
                raise self.fail(f"the model returns {len(outs)} outputs; after the main output mcu-nn supports only "
                                "the final states (h_n, c_n) of a recurrent module")
            # h_n is (L*D, N, H): layer by layer, each layer's op holding its directions side by side
            self.res.state_outputs += [(op, "h" if v.kind == "hn" else "c") for op in v.rnn.layer_ops]
        v = self.val(outs[0], node)
        x = v if v.post else self.data(outs[0], node)   # softmax: data() already checked its input
        if x.kind == "tokens" or not self.ops:
            raise self.fail("the model does no computation mcu-nn can run (no layers found)")
        if x.kind not in ("seq", "vec"):
            raise self.fail(f"the model returns a {x.kind} value; mcu-nn needs one output tensor")
        self.features_last(x, node)
        if x.version != len(self.ops):
            raise self.fail("the model output does not come from its last layer: branches are unsupported")
        self.res.layout["output"] = _output_axes(x, len(_shape(outs[0])))
        self.res.ops = self.ops


# ----------------------------------------------------------------------------- small helpers
def _gains_feature_axis(node: Node) -> bool:
    """Every reader of ``node`` unsqueezes it at the end: (N, T) -> (N, T, 1)."""
    return bool(node.users) and all(
        _opname(u) == "aten.unsqueeze.default" and u.args[1] in (-1, 2) for u in node.users)


def _axes_name(rank: int, time_dim: int, features: str) -> str:
    """"N,T" / "T,N" / "T" for a sequence's leading axes, then ``features`` (",F", ",O" or "")."""
    if rank == 1:
        return "T" + features
    return ("T,N" if time_dim == 0 else "N,T") + features


def _output_axes(x: _Val, rank: int) -> str:
    if x.squeezed:                                # one output feature, its axis gone
        return ("N" if x.kind == "vec" else _axes_name(2, x.time_dim, "")) if rank >= 1 + (x.kind == "seq") \
            else "O"
    if x.kind == "vec":
        return "N,O" if rank >= 2 else "O"
    if x.rows:
        return x.rows + ",O"
    return _axes_name(rank - 1, x.time_dim, ",O")


def _opname(node: Node) -> str:
    return "output" if node.op == "output" else str(node.target)


def _shape(node: Any) -> tuple:
    val = node.meta.get("val") if isinstance(node, Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else ()


def _same_dtype(node: Node) -> bool:
    a, b = node.args[0].meta.get("val"), node.meta.get("val")
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype


def _flat(args: Any) -> list:
    if isinstance(args, (list, tuple)):
        return [y for a in args for y in _flat(a)]
    return [args]


def _parameter_specs(ep: torch.export.ExportedProgram) -> dict[str, tuple[str, torch.Tensor]]:
    """placeholder name -> (qualified name, tensor) for parameters, buffers and lifted constants.
    The TorchScript converter lifts some parameters as anonymous constants (``lifted_tensor_3``);
    their qualified names are recovered by matching values against the state_dict."""
    from torch.export.graph_signature import InputKind

    specs: dict[str, tuple[str, torch.Tensor]] = {}
    named = list(ep.state_dict.items())
    for spec in ep.graph_signature.input_specs:
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
            specs[spec.arg.name] = (spec.target, ep.state_dict[spec.target])
        elif spec.kind == InputKind.CONSTANT_TENSOR:
            t = ep.constants[spec.target]
            name = next((n for n, s in named if _same_values(s, t)), spec.target)
            specs[spec.arg.name] = (name, t)
    return specs


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shape, dtype and values, NaN matching NaN (a NaN weight must still be named)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.dtype.is_floating_point:
        return torch.equal(a, b)
    return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())
