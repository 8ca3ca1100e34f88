"""A loop step worked out symbolically: each value of one step copy as an affine form over the step's
inputs (x, the states s0, s1, ...) and its nonlinear atoms (sigmoid/tanh/relu of a form, products of
two forms), so that frontend.cell_match can read the cell's equations off them."""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch.fx import Node

def full_slice(n: Any) -> bool:
    """x[:, :] written out: aten.slice.Tensor from 0 to the end in steps of 1 (the converters make these)."""
    if not isinstance(n, Node) or str(n.target) != "aten.slice.Tensor":
        return False
    args = list(n.args) + [None] * 5
    return args[2] in (None, 0) and (args[3] is None or args[3] >= 2 ** 62) and args[4] in (None, 1)


class NotCell(Exception):
    """The step is a recurrence but not a known cell; the message says what was found."""


# ----------------------------------------------------------------------------- affine forms
@dataclass
class Aff:
    """sum_k terms[k] @ atom_k + bias, per batch row. Atoms are the step's inputs ("x", "s0", ...)
    and nonlinear results (sigmoid/tanh/relu of a form, products of two forms), by key."""
    terms: dict
    bias: np.ndarray

    @property
    def size(self) -> int:
        return int(self.bias.shape[0])

    def sig(self) -> tuple:
        return tuple(sorted(((repr(k), m.shape, m.tobytes()) for k, m in self.terms.items()))) + (self.bias.tobytes(),)


def leaf(key: Any, size: int) -> Aff:
    return Aff({key: np.eye(size)}, np.zeros(size))


def functional(name: str) -> str:
    """aten.add_.Tensor -> aten.add.Tensor: the TorchScript converter keeps in-place ops, whose results
    its graph then uses like the functional op's."""
    ns, _, rest = name.partition(".")
    op, _, overload = rest.partition(".")
    return f"{ns}.{op[:-1]}.{overload}" if ns == "aten" and op.endswith("_") and not op.startswith("_") else name


def single(a: Aff) -> Optional[Any]:
    """The key of a form that is exactly one atom (identity, no bias), else None."""
    if len(a.terms) != 1 or a.bias.any():
        return None
    (k, m), = a.terms.items()
    return k if m.shape[0] == m.shape[1] and np.array_equal(m, np.eye(m.shape[0])) else None


def diag(m: np.ndarray) -> Optional[np.ndarray]:
    return np.diag(m).copy() if m.shape[0] == m.shape[1] and not (m - np.diag(np.diag(m))).any() else None


class Eval:
    """Evaluates one step copy's nodes into ``Aff`` forms; ``atoms`` defines the nonlinear keys."""

    def __init__(self, consts: dict[Node, torch.Tensor]):
        self.consts = consts
        self.atoms: dict = {}
        self.vals: dict[Node, Any] = {}

    def atom(self, op: str, *args: Aff) -> Aff:
        key = (op,) + tuple(sorted((a.sig() for a in args), key=repr)) if op == "mul" else (op, args[0].sig())
        self.atoms.setdefault(key, (op, args))
        return leaf(key, args[0].size)

    def arg(self, a: Any) -> Any:
        if isinstance(a, Node):
            if a in self.vals:
                return self.vals[a]
            if a in self.consts:
                return self.consts[a].detach().double().numpy()
            raise NotCell(f"it reads {a.name}, which is neither the step's input, its state nor a parameter")
        if isinstance(a, (list, tuple)):
            return [self.arg(b) for b in a]
        return a

    # -- algebra
    def add(self, a: Any, b: Any, alpha: float = 1.0) -> Aff:
        size = a.size if isinstance(a, Aff) else b.size
        a, b = self.form(a, size), self.scale(self.form(b, size), alpha)
        terms = dict(a.terms)
        for k, m in b.terms.items():
            terms[k] = terms[k] + m if k in terms else m
        return Aff({k: m for k, m in terms.items() if m.any()}, a.bias + b.bias)   # x - x cancels

    def form(self, v: Any, size: int = 0) -> Aff:
        if isinstance(v, Aff):
            return v
        c = np.asarray(v, dtype=np.float64)
        if c.ndim > 1 and c.shape[0] != 1:
            raise NotCell(f"it adds a constant of shape {list(c.shape)} that varies over the batch")
        return Aff({}, np.broadcast_to(c.reshape(-1), (max(size, c.size),)).copy())

    def scale(self, a: Aff, c: Any) -> Aff:
        c = np.asarray(c, dtype=np.float64).reshape(-1)
        return Aff({k: m * c[:, None] for k, m in a.terms.items()}, a.bias * c)

    def mul(self, a: Any, b: Any) -> Aff:
        if not isinstance(a, Aff):
            a, b = b, a
        if not isinstance(b, Aff):
            return self.scale(a, np.broadcast_to(np.asarray(b, dtype=np.float64).reshape(-1), (a.size,)))
        da = {k: diag(m) for k, m in a.terms.items()}
        db = {k: diag(m) for k, m in b.terms.items()}
        if any(d is None for d in (*da.values(), *db.values())):
            return self.atom("mul", a, b)           # a matrix on either side: keep the product whole
        out = self.add(self.scale(Aff(dict(a.terms), np.zeros(a.size)), b.bias),
                       self.scale(Aff(dict(b.terms), b.bias.copy()), a.bias))   # + a.bias * b.bias
        for ka, va in da.items():                 # elementwise: distribute over the atoms
            for kb, vb in db.items():
                prod = self.atom("mul", leaf(ka, a.size), leaf(kb, a.size))
                out = self.add(out, self.scale(prod, va * vb))
        return out

    def linear(self, a: Any, w: np.ndarray, b: Any = None) -> Aff:
        a = self.form(a)
        out = Aff({k: w @ m for k, m in a.terms.items()}, w @ a.bias)
        return out if b is None else self.add(out, b)

    def cat(self, parts: list) -> Aff:
        parts = [self.form(p) for p in parts]
        sizes = [p.size for p in parts]
        terms: dict = {}
        at = 0
        for p in parts:
            for k, m in p.terms.items():
                if k not in terms:
                    terms[k] = np.zeros((sum(sizes), m.shape[1]))
                terms[k][at:at + p.size] = m
            at += p.size
        return Aff(terms, np.concatenate([p.bias for p in parts]))

    def rows(self, a: Aff, start: int, end: int) -> Aff:
        return Aff({k: m[start:end] for k, m in a.terms.items()}, a.bias[start:end])

    def chunks(self, a: Aff, sizes: list[int]) -> list[Aff]:
        bounds = np.cumsum([0] + sizes)
        return [self.rows(a, int(s), int(e)) for s, e in zip(bounds[:-1], bounds[1:])]

    # -- nodes
    def node(self, n: Node) -> None:
        name, a = functional(str(n.target)), [self.arg(x) for x in n.args]
        kw = {k: self.arg(v) for k, v in n.kwargs.items()}
        if n.target is operator.getitem:
            v = a[0][a[1]]
        elif name in ("aten.add.Tensor", "aten.sub.Tensor"):
            v = self.add(a[0], a[1], kw.get("alpha", 1) * (-1 if name.endswith("sub.Tensor") else 1))
        elif name == "aten.rsub.Scalar":
            v = self.add(a[1], a[0], -kw.get("alpha", 1))          # other - alpha * x
        elif name == "aten.mul.Tensor":
            v = self.mul(a[0], a[1])
        elif name == "aten.neg.default":
            v = self.scale(a[0], -1.0)
        elif name in ("aten.sigmoid.default", "aten.tanh.default", "aten.relu.default"):
            v = self.atom(name.split(".")[1], self.form(a[0]))
        elif name == "aten.linear.default":
            v = self.linear(a[0], a[1], a[2] if len(a) > 2 else kw.get("bias"))
        elif name in ("aten.matmul.default", "aten.mm.default") and not isinstance(a[1], Aff):
            v = self.linear(a[0], np.asarray(a[1]).T)
        elif name == "aten.addmm.default":
            v = self.linear(a[1], np.asarray(a[2]).T, a[0])
        elif name == "aten.cat.default" and (a[1] if len(a) > 1 else 0) in (1, -1):
            v = self.cat(a[0])
        elif name in ("aten.chunk.default", "aten.unsafe_chunk.default") and a[2] in (1, -1):
            size = -(-a[0].size // a[1])
            v = self.chunks(a[0], [min(size, a[0].size - i * size) for i in range(a[1]) if i * size < a[0].size])
        elif name in ("aten.split.Tensor", "aten.unsafe_split.Tensor") and a[2] in (1, -1):
            v = self.chunks(a[0], [min(a[1], a[0].size - s) for s in range(0, a[0].size, a[1])])
        elif name == "aten.split_with_sizes.default" and a[2] in (1, -1):
            v = self.chunks(a[0], list(a[1]))
        elif name in ("aten.clone.default", "aten.contiguous.default", "aten.alias.default", "aten.detach.default") \
                or full_slice(n):
            v = a[0]
        elif name in RESHAPES and only_ones_change(n):
            v = a[0]                            # (N, 1, H) <-> (N, H): the same numbers per batch row
        elif name in CELL_OPS:
            v = CELL_OPS[name](self, *a)
        elif name in STEP_OPS:
            v = STEP_OPS[name](self, *a)
        else:
            raise NotCell(f"it uses {name}")
        self.vals[n] = v


def _gates(e: Eval, x: Any, h: Any, w_ih, w_hh, b_ih, b_hh, n: int) -> tuple[list[Aff], list[Aff]]:
    gi, gh = e.linear(x, w_ih, b_ih), e.linear(h, w_hh, b_hh)
    size = gi.size // n
    return e.chunks(gi, [size] * n), e.chunks(gh, [size] * n)


def _lstm_cell(e: Eval, x, hc, w_ih, w_hh, b_ih=None, b_hh=None):
    (gi, gh), c = _gates(e, x, hc[0], w_ih, w_hh, b_ih, b_hh, 4), hc[1]
    i, f, g, o = (e.atom(op, e.add(a, b)) for op, a, b in zip(("sigmoid", "sigmoid", "tanh", "sigmoid"), gi, gh))
    c2 = e.add(e.mul(f, c), e.mul(i, g))
    return [e.mul(o, e.atom("tanh", c2)), c2]


def _gru_cell(e: Eval, x, h, w_ih, w_hh, b_ih=None, b_hh=None):
    gi, gh = _gates(e, x, h, w_ih, w_hh, b_ih, b_hh, 3)
    r, z = (e.atom("sigmoid", e.add(a, b)) for a, b in zip(gi[:2], gh[:2]))
    n = e.atom("tanh", e.add(gi[2], e.mul(r, gh[2])))
    return e.add(e.add(n, e.mul(z, n), -1.0), e.mul(z, h))


def _rnn_cell(act: str):
    def cell(e: Eval, x, h, w_ih, w_hh, b_ih=None, b_hh=None):
        return e.atom(act, e.add(e.linear(x, w_ih, b_ih), e.linear(h, w_hh, b_hh)))
    return cell


CELL_OPS = {"aten.lstm_cell.default": _lstm_cell, "aten.gru_cell.default": _gru_cell,
            "aten.rnn_tanh_cell.default": _rnn_cell("tanh"), "aten.rnn_relu_cell.default": _rnn_cell("relu")}


def _one_step(cell, lstm: bool):
    """nn.LSTM/GRU/RNN called on one step (``self.lstm(x[:, t:t+1], (h, c))`` in a loop): its cell,
    when it has one layer and one direction; out, h_n (and c_n) are all the new state."""
    def step(e: Eval, x, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first=False):
        if num_layers != 1 or bidirectional or len(params) not in (2, 4):
            raise NotCell("it steps a multi-layer or bidirectional nn module one step at a time")
        new = cell(e, x, hx if lstm else hx, *params)
        return [new[0], new[0], new[1]] if lstm else [new, new]
    return step


STEP_OPS = {"aten.lstm.input": _one_step(_lstm_cell, True), "aten.gru.input": _one_step(_gru_cell, False),
            "aten.rnn_tanh.input": _one_step(_rnn_cell("tanh"), False),
            "aten.rnn_relu.input": _one_step(_rnn_cell("relu"), False)}
RESHAPES = {"aten.view.default", "aten.reshape.default", "aten._unsafe_view.default", "aten.squeeze.dim",
            "aten.squeeze.dims", "aten.squeeze.default", "aten.unsqueeze.default"}


def only_ones_change(n: Node) -> bool:
    """A reshape that only adds or drops axes of size 1."""
    src = n.args[0].meta.get("val") if isinstance(n.args[0], Node) else None
    out = n.meta.get("val")
    if src is None or out is None:
        return False
    return [d for d in src.shape if d != 1] == [d for d in out.shape if d != 1]
