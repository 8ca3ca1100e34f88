"""The walker's part for ops over time (mcu_nn.ops): Conv1d (+ F.pad, BatchNorm1d folded),
MaxPool1d/AvgPool1d, (N, T, C) <-> (N, C, T) transposes, mean/max/sum over time, out[:, i],
out[:, a:b], attention pooling and repeat/expand over T.

Values in (N, C, T) layout are marked ``cf``; a transpose back makes them (N, T, C) again,
so in mcu-nn's (N, T, F) layout both transposes are no-ops. Called from ``Walker.call``
and a few of its handlers; ``w`` is the Walker.
"""
from __future__ import annotations

from typing import Any

from torch.fx import Node

from .. import ir
from ..ops.attention import AttentionPool
from ..ops.conv1d import Conv1d, fold_batchnorm
from ..ops.pooling import TimeFlatten, TimePool, TimeReduce, TimeSelect, TimeSlice
from ..ops.repeat import Repeat

SUPPORTED = ("Conv1d (+ BatchNorm1d, F.pad of time), MaxPool1d/AvgPool1d, mean/max/sum over time, out[:, i], "
             "out[:, a:b], attention pooling over time, repeat/expand over T")
PENDING = ("attw", "attwT", "attprod")     # attention parts that only the weighted sum may read
CONV = {"aten.conv1d.default", "aten.conv1d.padding", "aten.convolution.default"}   # the last: TorchScript's
PAD = {"aten.pad.default", "aten.constant_pad_nd.default"}
BN = {"aten.batch_norm.default", "aten._native_batch_norm_legit_no_training.default"}
POOL = {"aten.max_pool1d.default": "max", "aten.avg_pool1d.default": "avg"}
REDUCE = {"aten.mean.dim": "mean", "aten.sum.dim_IntList": "sum", "aten.amax.default": "max",
          "aten.max.dim": "max", "aten.adaptive_avg_pool1d.default": "mean"}
REPEAT = {"aten.repeat.default", "aten.expand.default"}


def handles(w, node: Node, name: str) -> bool:
    if name == "aten.mul.Tensor":          # only the attention product; other products are not ours
        return any(isinstance(a, Node) and a in w.vals and w.vals[a].kind == "attw" for a in node.args[:2])
    if name in BN:                         # on (N, C, T) after a Conv1d; on (N, C) features: walk_ops folds it
        x = node.args[0]
        return isinstance(x, Node) and x in w.vals and w.vals[x].cf
    return name in CONV or name in PAD or name in BN or name in POOL or name in REDUCE or name in REPEAT \
        or name == "aten.bmm.default"


def call(w, node: Node, name: str) -> None:
    from .walker import _Val, _shape
    where = w.where(node)
    if name in CONV:
        return _conv(w, node, name)
    if name in PAD:
        x = w.data(node.args[0], node)
        pads = list(node.args[1])
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", None)
        if not x.cf or len(pads) != 2 or mode != "constant" or value not in (None, 0, 0.0):
            raise w.fail(f"{name}{where}: only zero padding of the time axis of an (N, C, T) sequence is "
                         "supported (F.pad(x, (left, right)) before a Conv1d)")
        w.vals[node] = _Val("seq", x.version, time_dim=x.time_dim, cf=True, pad=(int(pads[0]), int(pads[1])))
        return
    if name in BN:
        return _batchnorm(w, node, name)
    if name in POOL:
        x = w.data(node.args[0], node)
        a = list(node.args) + [None] * 6
        kernel = _one(a[1])
        stride = _one(a[2]) if a[2] not in (None, []) else kernel
        padding = _one(a[3]) if a[3] is not None else 0
        extra = (_one(a[4]) if a[4] is not None else 1) != 1 if name.startswith("aten.max") else False
        ceil = bool(a[5] if name.startswith("aten.max") else a[4])
        if not x.cf or padding or extra or ceil:
            raise w.fail(f"{name}{where}: supported are MaxPool1d/AvgPool1d over the time axis of an (N, C, T) "
                         "sequence without padding, dilation or ceil_mode")
        w.emit(TimePool(POOL[name], kernel, stride, source=w.source(node)), x)
        w.vals[node] = _Val("seq", len(w.ops), time_dim=1, cf=True)
        return
    if name in REDUCE:
        return _reduce(w, node, name)
    if name in REPEAT:
        return _repeat(w, node)
    if name == "aten.bmm.default":
        wt, vals = w.val(node.args[0], node), w.val(node.args[1], node)
        if wt.kind != "attwT" or vals.kind != "seq" or vals.cf:
            raise w.unsupported(node, " (only the attention form torch.bmm(weights.transpose(1, 2), out))")
        return _attention(w, node, vals, wt)
    if name == "aten.mul.Tensor":
        a, b = (w.val(x, node) for x in node.args[:2])
        wt, vals = (a, b) if a.kind == "attw" else (b, a)
        if vals.kind != "seq" or vals.cf or tuple(_shape(node)) != tuple(_shape(node.args[1 if a is wt else 0])):
            raise w.unsupported(node, " (attention weights must multiply the (N, T, H) values they pool)")
        w.vals[node] = _Val("attprod", len(w.ops), refs=(_name(w, vals), wt.refs[1]))
        return
    raise w.unsupported(node)


def _one(v: Any) -> int:
    return int(v[0]) if isinstance(v, (list, tuple)) else int(v)


def _name(w, v) -> str:
    """The IR tensor a walker value stands for (ops get their names op{i}.out when wired)."""
    return ir.INPUT if v.version == 0 else f"op{v.version - 1}.out"


def _conv(w, node: Node, name: str) -> None:
    from .walker import _Val, _shape
    x = w.data(node.args[0], node, allow_pad=True)
    where = w.where(node)
    if not x.cf:
        raise w.fail(f"Conv1d{where} reads an (N, T, C) sequence; mcu-nn follows Conv1d over time on "
                     "x.transpose(1, 2) / x.permute(0, 2, 1) of it")
    a = list(node.args) + [None] * 9
    if name == "aten.convolution.default":       # (x, w, b, stride, padding, dilation, transposed, out_pad, groups)
        if a[6] or len(_shape(node.args[1])) != 3:
            raise w.fail(f"{name}{where}: only Conv1d (not transposed, not 2-d) is supported")
        a = a[:6] + [a[8]]
    _, wt = w.param(a[1], node)
    bias = w.param(a[2], node)[1] if a[2] is not None else None
    stride, dil, groups = _one(a[3] or [1]), _one(a[5] or [1]), int(a[6] or 1)
    hist = (wt.shape[2] - 1) * dil
    pad = a[4] if a[4] is not None else [0]
    if isinstance(pad, str):
        if pad == "same":
            left, right = hist // 2, hist - hist // 2
        else:
            left = right = 0
    else:
        left = right = _one(pad)
    if x.pad:
        left, right = left + x.pad[0], right + x.pad[1]
    w.emit(Conv1d(stride=stride, pad_left=left, pad_right=right, dilation=dil, groups=groups, weight=wt,
                  bias=bias, source=w.source(node)), x)
    w.vals[node] = _Val("seq", len(w.ops), time_dim=1, cf=True)


def _batchnorm(w, node: Node, name: str) -> None:
    from .walker import _Val
    x = w.data(node.args[0], node)
    a = list(node.args)
    training = a[5] if name == "aten.batch_norm.default" else False
    eps = a[7] if name == "aten.batch_norm.default" else a[6]
    if training:
        raise w.fail(f"BatchNorm1d{w.where(node)} is in training mode: call model.eval() before saving")
    if not (x.cf and w.ops and isinstance(w.ops[-1], Conv1d) and x.version == len(w.ops)):
        raise w.fail(f"BatchNorm1d{w.where(node)} is supported right after a Conv1d (folded into its weights)")
    gamma = w.param(a[1], node)[1] if a[1] is not None else None
    beta = w.param(a[2], node)[1] if a[2] is not None else None
    fold_batchnorm(w.ops[-1], gamma, beta, w.param(a[3], node)[1], w.param(a[4], node)[1], float(eps))
    out = _Val("seq", x.version, time_dim=1, cf=True)
    if name == "aten.batch_norm.default":
        w.vals[node] = out
    else:                                       # (out, save_mean, save_rstd)
        w.vals[node] = _Val("multi", x.version, items=(out, _Val("const", 0), _Val("const", 0)))


def _reduce(w, node: Node, name: str) -> None:
    from .walker import _Val, _shape
    v = w.val(node.args[0], node)
    if v.kind == "attprod":
        d = node.args[1] if len(node.args) > 1 else None
        keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if name != "aten.sum.dim_IntList" or [int(i) % 3 for i in d] != [1] or keep:
            raise w.unsupported(node, " (attention: the weighted values must be summed over time, dim=1)")
        return _attention(w, node, None, _Val("attw", v.version, refs=v.refs))
    x = w.data(node.args[0], node)
    rank = len(_shape(node.args[0]))
    if name == "aten.adaptive_avg_pool1d.default":
        if _one(node.args[1]) != 1:
            raise w.unsupported(node, " (only output size 1: a mean over time)")
        dims = [rank - 1]
    else:
        d = node.args[1] if len(node.args) > 1 else None
        dims = [int(v) % rank for v in (d if isinstance(d, (list, tuple)) else [d])] if d is not None else []
    time_axis = 2 if x.cf else x.time_dim
    if x.kind != "seq" or dims != [time_axis]:
        raise w.unsupported(node, f" (a {REDUCE[name]} is supported over the time axis of a sequence only)")
    w.emit(TimeReduce(REDUCE[name], source=w.source(node)), x)
    out = _Val("vec", len(w.ops))
    w.vals[node] = _Val("multi", len(w.ops), items=(out, _Val("int", 0))) if name == "aten.max.dim" else out


def time_select(w, node: Node, x, index: int) -> None:
    from .walker import _Val
    if index == -1:
        w.emit(ir.SelectLast(source=w.source(node)), x)
    else:
        w.emit(TimeSelect(int(index), source=w.source(node)), x)
    w.vals[node] = _Val("vec", len(w.ops))


def flatten_steps(w, node: Node, x, old: tuple, new: tuple) -> bool:
    """``out[:, -k:].reshape(N, -1)``: a time slice of a fixed k steps (it does not depend on the
    run's length) flattened into one vector per sequence."""
    from .walker import _Val
    src = w.ops[x.version - 1] if x.version and x.version == len(w.ops) else None
    if not isinstance(src, TimeSlice) or x.cf or x.time_dim != 1 or len(old) != 3 or len(new) != 2:
        return False
    fixed = (src.start is not None and src.start < 0 and src.stop is None) or \
        (src.start is not None and src.stop is not None and 0 <= src.start < src.stop)
    if not fixed or new != (old[0], old[1] * old[2]):
        return False
    w.emit(TimeFlatten(int(old[1]), source=w.source(node)), x)
    w.vals[node] = _Val("vec", len(w.ops))
    return True


def time_slice(w, node: Node, dim: int, start, end, step) -> bool:
    from .walker import _Val
    x = w.data(node.args[0], node)
    if x.kind != "seq" or x.cf or dim % 3 != x.time_dim or step != 1:
        return False
    big = 1 << 62
    w.emit(TimeSlice(None if start in (None, 0) else int(start), None if end is None or end >= big else int(end),
                     source=w.source(node)), x)
    w.vals[node] = _Val("seq", len(w.ops), time_dim=x.time_dim)
    return True


def transpose(w, node: Node) -> bool:
    """(N, T, C) <-> (N, C, T) of a batch-first sequence, and the attention weights' transpose."""
    from .walker import _Val, _opname, _shape
    v = w.val(node.args[0], node)
    rank = len(_shape(node.args[0]))
    name = _opname(node)
    if name == "aten.permute.default":
        perm = [d % rank for d in node.args[1]]
    elif name in ("aten.transpose.int", "aten.swapaxes.default"):
        perm = list(range(rank))
        a, b = node.args[1] % rank, node.args[2] % rank
        perm[a], perm[b] = perm[b], perm[a]
    else:
        return False
    if rank != 3 or perm != [0, 2, 1]:
        return False
    if v.kind == "attw":
        w.vals[node] = _Val("attwT", v.version, refs=v.refs)
        return True
    if v.kind == "seq" and v.time_dim == 1 and not v.pad:
        x = w.data(node.args[0], node)
        w.vals[node] = _Val("seq", x.version, time_dim=1, cf=not x.cf)
        return True
    return False


def attention_softmax(w, node: Node, x, kind: str) -> bool:
    """softmax over the time axis of one score per step: the weights of attention pooling."""
    from .walker import _Val, _shape
    shape = _shape(node)
    if kind != "softmax" or x.kind != "seq" or x.cf or len(shape) != 3 or shape[-1] != 1 or \
            node.args[1] % 3 != x.time_dim:
        return False
    w.vals[node] = _Val("attw", len(w.ops), refs=("", _name(w, x)))
    return True


def _attention(w, node: Node, vals, wt) -> None:
    from .walker import _Val
    values = _name(w, vals) if vals is not None else wt.refs[0]
    w.emit(AttentionPool(source=w.source(node), inputs=[values, wt.refs[1]]))
    w.vals[node] = _Val("vec", len(w.ops))


def _repeat(w, node: Node) -> None:
    from .walker import _Val, _shape
    v = w.val(node.args[0], node)
    if v.kind in ("const", "int", "param"):     # building a state or a constant: nothing to compute
        w.vals[node] = v
        return
    x = w.data(node.args[0], node)
    shape = _shape(node)
    steps = w.res.seq_len
    reps = list(node.args[1]) if len(node.args) > 1 and isinstance(node.args[1], (list, tuple)) else []
    if x.kind == "vec" and len(shape) == 2 and shape[0] == steps and reps == [steps, 1] \
            and _shape(node.args[0])[0] == 1:
        # one unbatched vector (1, H) repeated into (T, H): x.repeat(seq_len, 1) of curiousily's
        # LSTM autoencoder, an unbatched sequence from here on
        w.emit(Repeat(source=w.source(node), inputs=[_name(w, x), ir.INPUT]))
        w.vals[node] = _Val("seq", len(w.ops), time_dim=0)
        return
    if x.kind != "vec" or len(shape) != 3 or shape[1] != steps:
        raise w.fail(f"{node.target}{w.where(node)}: only a per-sequence vector (N, 1, H) repeated over the "
                     f"input's {steps} time steps (z.unsqueeze(1).repeat(1, T, 1)) is supported")
    w.emit(Repeat(source=w.source(node), inputs=[_name(w, x), ir.INPUT]))
    w.vals[node] = _Val("seq", len(w.ops), time_dim=1)

