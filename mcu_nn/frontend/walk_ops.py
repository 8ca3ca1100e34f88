"""The walker's side of the op units in mcu_nn/ops: which ATen nodes become which IR op.

Each function takes the ``Walker`` and an FX node and either handles the node (returns True) or
leaves it to the walker's "unsupported" message (returns False)."""
from __future__ import annotations

from typing import Any

import numpy as np
from torch.fx import Node

from .. import ir
from ..ops.activations import Pointwise
from ..ops.concat import Concat
from ..ops.elementwise import Elementwise
from ..ops.layernorm import LayerNorm

POINTWISE = {"leaky_relu", "hardtanh", "relu6", "hardsigmoid", "gelu", "silu"}
ELEMENTWISE = {"add", "sub", "mul"}
PATTERN_KINDS = ("abs", "abs1")       # softsign's |x| and 1 + |x|: values only a division may read


def _base(name: str) -> str:
    """"aten.leaky_relu_.default" -> "leaky_relu" (in-place variants compute the same)."""
    parts = name.split(".")
    return parts[1].rstrip("_") if len(parts) == 3 and parts[0] == "aten" else ""


def _arg(node: Node, i: int, key: str, default: Any) -> Any:
    return node.args[i] if len(node.args) > i else node.kwargs.get(key, default)


def _shape(node: Any) -> tuple:
    val = node.meta.get("val") if isinstance(node, Node) else None
    return tuple(val.shape) if val is not None and hasattr(val, "shape") else ()


def call(w, node: Node, name: str) -> bool:
    base = _base(name)
    if base in POINTWISE and len(node.args) >= 1:
        return _pointwise(w, node, base)
    if base == "abs" and name.endswith(".default"):
        x = w.data(node.args[0], node)
        w.vals[node] = type(x)("abs", x.version, time_dim=x.time_dim, src=node.args[0])
        return True
    if base in ELEMENTWISE and name.endswith(".Tensor"):
        return _elementwise(w, node, base)
    if base == "div" and name.endswith(".Tensor"):
        return _softsign(w, node)
    if name == "aten.layer_norm.default":
        return _layer_norm(w, node)
    if name == "aten.batch_norm.default":
        return _batch_norm(w, node)
    return False


def _emit_same(w, node: Node, op, x) -> bool:
    w.emit(op, x)
    w.vals[node] = type(x)(x.kind, len(w.ops), time_dim=x.time_dim)
    return True


def _pointwise(w, node: Node, base: str) -> bool:
    x = w.data(node.args[0], node)
    w.no_tokens(x, node)
    src = w.source(node)
    if base == "leaky_relu":
        op = Pointwise("leaky_relu", slope=float(_arg(node, 1, "negative_slope", 0.01)), source=src)
    elif base in ("hardtanh", "relu6"):
        lo, hi = (0.0, 6.0) if base == "relu6" else (float(_arg(node, 1, "min_val", -1.0)),
                                                     float(_arg(node, 2, "max_val", 1.0)))
        if lo > hi:
            raise w.fail(f"hardtanh{w.where(node)} has min_val {lo} > max_val {hi}")
        op = Pointwise("hardtanh", lo=lo, hi=hi, source=src)
    elif base == "gelu":
        approximate = str(_arg(node, 1, "approximate", "none"))
        if approximate not in ("none", "tanh"):
            raise w.unsupported(node, f" (approximate={approximate!r})")
        op = Pointwise("gelu", approximate=approximate, source=src)
    else:
        op = Pointwise(base, source=src)
    return _emit_same(w, node, op, x)


def _scalar(a: Any) -> bool:
    return isinstance(a, (int, float)) and not isinstance(a, bool)


def _lifted_scalar(w, a: Any) -> Any:
    """A one-element tensor constant (TorchScript lifts the 1 of 1 + |x| into one) as a number."""
    v = w.vals.get(a) if isinstance(a, Node) else None
    if v is not None and v.kind == "param" and v.tensor is not None and v.tensor.numel() == 1:
        return float(v.tensor.reshape(-1)[0])
    return a


def _elementwise(w, node: Node, kind: str) -> bool:
    a_node, b_node = node.args[:2]
    if kind == "add":
        a_node, b_node = _lifted_scalar(w, a_node), _lifted_scalar(w, b_node)
    if kind == "add" and (_scalar(a_node) or _scalar(b_node)):      # 1 + |x| of softsign
        t, c = (b_node, a_node) if _scalar(a_node) else (a_node, b_node)
        v = w.val(t, node)
        if v.kind == "abs" and c == 1 and _arg(node, 2, "alpha", 1) == 1:
            w.vals[node] = type(v)("abs1", v.version, time_dim=v.time_dim, src=v.src)
            return True
    if _scalar(a_node) or _scalar(b_node):
        raise w.unsupported(node, " (with a constant: only tensor-tensor add/sub/mul are supported)")
    a, b = w.data(a_node, node), w.data(b_node, node)
    for v in (a, b):
        w.no_tokens(v, node)
    if _shape(a_node) != _shape(b_node) or a.kind != b.kind or a.time_dim != b.time_dim:
        raise w.fail(f"{kind}{w.where(node)} combines tensors of shapes {list(_shape(a_node))} and "
                     f"{list(_shape(b_node))}; supported: two tensors of the same shape (no broadcasting)")
    alpha = float(_arg(node, 2, "alpha", 1)) if kind != "mul" else 1.0
    w.emit(Elementwise(kind, alpha=alpha, source=w.source(node)), a, b)
    w.vals[node] = type(a)(a.kind, len(w.ops), time_dim=a.time_dim)
    return True


def _softsign(w, node: Node) -> bool:
    """x / (1 + |x|): F.softsign and nn.Softsign as PyTorch records them."""
    num, den = node.args[:2]
    d = w.vals.get(den) if isinstance(den, Node) else None
    if d is None or d.kind != "abs1" or w.vals.get(d.src) is not w.vals.get(num):
        raise w.unsupported(node, " (division is supported only as softsign x / (1 + |x|))")
    x = w.data(num, node)
    return _emit_same(w, node, Pointwise("softsign", source=w.source(node)), x)


def cat(w, node: Node, dim: int) -> bool:
    """torch.cat of data tensors along the feature (last) axis."""
    rank = len(_shape(node))
    parts = [w.val(p, node) for p in node.args[0]]
    if not rank or dim % rank != rank - 1 or any(p.kind not in ("seq", "vec") for p in parts):
        return False
    vals = [w.data(p, node) for p in node.args[0]]
    if len({(v.kind, v.time_dim if v.kind == "seq" else 0) for v in vals}) != 1:
        raise w.fail(f"cat{w.where(node)} joins per-step sequences with per-sequence vectors (or sequences "
                     "with different time axes); unsupported")
    if len(vals) == 1:
        w.vals[node] = vals[0]
        return True
    w.emit(Concat(source=w.source(node)), *vals)
    w.vals[node] = type(vals[0])(vals[0].kind, len(w.ops), time_dim=vals[0].time_dim)
    return True


def _layer_norm(w, node: Node) -> bool:
    x = w.data(node.args[0], node)
    w.no_tokens(x, node)
    shape = list(_arg(node, 1, "normalized_shape", []))
    feats = _shape(node.args[0])[-1:]
    if len(shape) != 1 or tuple(shape) != tuple(feats):
        raise w.fail(f"LayerNorm{w.where(node)} normalises over {shape}; supported: the feature axis only "
                     f"(normalized_shape={list(feats)})")
    weight, bias = _arg(node, 2, "weight", None), _arg(node, 3, "bias", None)
    gamma = w.param(weight, node)[1] if weight is not None else None
    beta = w.param(bias, node)[1] if bias is not None else None
    op = LayerNorm(int(shape[0]), float(_arg(node, 4, "eps", 1e-5)), gamma, beta, source=w.source(node))
    return _emit_same(w, node, op, x)


def _batch_norm(w, node: Node) -> bool:
    """Eval-mode BatchNorm1d on (N, C) right after a Linear: folded into that Linear's weights, so
    nothing new runs on the chip: W' = W * a, b' = (b - mean) * a + beta, a = gamma / sqrt(var + eps)."""
    x = w.data(node.args[0], node)
    where = w.where(node)
    if _arg(node, 5, "training", False):
        raise w.fail(f"BatchNorm{where} is in training mode: call model.eval() before saving")
    if len(_shape(node.args[0])) != 2:
        raise w.fail(f"BatchNorm{where} normalises a {len(_shape(node.args[0]))}-d tensor; supported: "
                     "BatchNorm1d on (N, C) features right after a Linear (folded into it)")
    src: Any = node.args[0]
    for _ in range(16):                   # back through no-op nodes to the Linear; nothing else may read it
        if not isinstance(src, Node) or len(src.users) != 1:
            break
        if str(src.target) == "aten.linear.default":
            break
        src = src.args[0] if src.args else None
    lin = w.ops[-1] if w.ops else None
    if not (isinstance(src, Node) and str(src.target) == "aten.linear.default" and len(src.users) == 1
            and x.version == len(w.ops) and isinstance(lin, ir.Linear)):
        raise w.fail(f"BatchNorm{where} is supported only right after a Linear whose output nothing else reads "
                     "(it is folded into that Linear)")
    n = lin.weight.shape[0]
    gamma = w.param(node.args[1], node)[1] if node.args[1] is not None else np.ones(n)
    beta = w.param(node.args[2], node)[1] if node.args[2] is not None else np.zeros(n)
    mean, var = (w.param(node.args[i], node)[1] if node.args[i] is not None else None for i in (3, 4))
    if mean is None or var is None:
        raise w.fail(f"BatchNorm{where} has no running statistics (track_running_stats=False); unsupported")
    eps = float(_arg(node, 7, "eps", 1e-5))
    a = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    b = np.zeros(n) if lin.bias is None else np.asarray(lin.bias, np.float64)
    lin.weight = (np.asarray(lin.weight, np.float64) * a[:, None]).astype(np.float32)
    lin.bias = ((b - np.asarray(mean, np.float64)) * a + np.asarray(beta, np.float64)).astype(np.float32)
    lin.source = f"{lin.source} + {w.source(node) or 'batchnorm'}".strip(" +")
    w.vals[node] = x
    return True
