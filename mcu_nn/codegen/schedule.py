"""The call sequence of the generated C: which op runs when, and where each tensor lives.

Two schedules (DESIGN.md, "The IR"):

- **streaming** (every op causal): ``_advance`` runs one time step of every op whose output
  is per step, plus the updates of the accumulating ops (per-step input, per-sequence output:
  out[:, -1], out[:, i], mean/max/sum over time, attention pooling), whose state lives in the
  state struct; ``_head`` finalises the accumulators and runs the per-sequence ops. ``_step``
  is advance + head, ``_run`` advances over the steps and runs the head once, so they agree.
- **whole sequence** (a bidirectional layer, a non-causal or strided conv, a pool window, a
  time slice or a repeat over T): each op runs over all steps of its input into buffers of
  max_steps steps before the next starts; tensors may have their own lengths (a stride-s op
  gives ~n/s steps). Buffers are reused once no later op reads them. No ``_step``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..cells import cell_of
from ..errors import McuNnError
from ..ir import (Activation, Embedding, FinalHidden, Linear, QActivation, QEmbedding, QLinear, QRecurrent,
                  Recurrent, SelectLast, producers, tensors, whole_sequence)
from ..ops import unit_of
from ..ops.attention import AttentionPool
from ..ops.conv1d import Conv1d, QConv1d
from ..ops.pooling import TimeFlatten, TimePool, TimeReduce, TimeSelect, TimeSlice
from ..ops.repeat import Repeat

MAPS = (QEmbedding, Embedding, QLinear, Linear, QActivation, Activation)
CONVS = (Conv1d, QConv1d)


def is_map(op) -> bool:
    """A step-wise op: each output step from the same step of its inputs (one or several: add,
    cat, ...); an op unit of mcu_nn.ops (activations, element-wise, cat, LayerNorm) is one."""
    return isinstance(op, MAPS) or unit_of(op) is not None


def is_rec(op) -> bool:
    return isinstance(op, (QRecurrent, Recurrent))


@dataclass
class Schedule:
    advance: list[str] = field(default_factory=list)   # streaming: body of _advance
    head: list[str] = field(default_factory=list)      # streaming: body of _head
    seq: list[str] = field(default_factory=list)       # whole sequence: body of _run
    reset: list[str] = field(default_factory=list)     # after zeroing the state struct
    whole: bool = False
    why_whole: str = ""


class _Pool:
    """Scratch buffers made on demand; ``get`` returns one holding nothing still to be read."""
    def __init__(self, make: Callable[[int], str]):
        self.make, self.bufs = make, []

    def get(self, busy: set) -> str:
        for b in self.bufs:
            if b not in busy:
                return b
        self.bufs.append(self.make(len(self.bufs)))
        return self.bufs[-1]


def _why(q) -> str:
    for op in q.ops:
        if getattr(op, "bidirectional", False):
            if is_rec(op):
                return "a bidirectional layer needs the whole sequence before its reverse direction can start"
            what = {TimePool: "a pooling window reads later steps", TimeSlice: "a time slice counts from the end",
                    TimeFlatten: "steps flattened into one vector are all needed at once",
                    TimeSelect: "out[:, i] with i < -1 counts from the end",
                    Repeat: "a vector repeated over the steps exists only after the whole input"}
            for cls, text in what.items():
                if isinstance(op, cls):
                    return text
            if isinstance(op, CONVS):
                return ("a strided Conv1d changes the rate" if op.stride > 1 else
                        "a Conv1d with right or symmetric padding reads later steps")
    return ""


def build(q, p: str, vt: str, fp_: bool, member: Callable[..., str], in_size: int, hnew: str,
          maxdim: int) -> Schedule:
    """The schedule of ``q`` (prefix ``p``); ``member(name, n, ctype=vt)`` adds a state-struct array."""
    sch = Schedule(whole=whole_sequence(q), why_whole=_why(q))
    shapes, made = tensors(q), producers(q)
    (_whole if sch.whole else _stream)(q, p, vt, fp_, member, in_size, hnew, maxdim, shapes, made, sch)
    return sch


def _rec_call(p: str, k: int, op, d: int, x: str, hnew: str) -> str:
    states = "".join(f"s->op{k}_{s}{d}, " for s in cell_of(op.kind).states)   # h, then c of an LSTM
    if getattr(op, "input_ids", False):            # one-hot input: the kernel takes the token id
        x = f"(int32_t)*({x})"
    return f"{p}_op{k}_d{d}({states}{x}, {hnew});"


def _acc_members(p, k, op, vt, fp_, member, n, sch: Schedule) -> dict:
    """State of an accumulating op (reset values included) and its update / final calls."""
    a = {}
    if isinstance(op, TimeReduce):
        at = vt if fp_ or op.kind == "max" else "int32_t"
        a["acc"] = member(f"op{k}_acc", n, at)
        a["count"] = member(f"op{k}_count", 1, "int32_t")
        if op.kind == "max" and not fp_:
            sch.reset.append(f"{{ int j; for (j = 0; j < {n}; ++j) {a['acc']}[j] = -32768; }}")
        a["update"] = lambda x: f"{p}_op{k}_update({a['acc']}, {a['count']}, {x});"
        a["final"] = lambda y: f"{p}_op{k}_final({a['acc']}, {a['count']}[0], {y});"
    elif isinstance(op, AttentionPool):
        a["m"] = member(f"op{k}_m", 1, "float" if fp_ else "int32_t")
        a["s"] = member(f"op{k}_s", 1, "float" if fp_ else "int64_t")
        a["acc"] = member(f"op{k}_acc", n, "float" if fp_ else "int64_t")
        a["count"] = member(f"op{k}_count", 1, "int32_t")
        if not fp_:
            sch.reset.append(f"{a['m']}[0] = -32768;")
        a["update"] = lambda v, x: f"{p}_op{k}_update({a['m']}, {a['s']}, {a['acc']}, {a['count']}, {v}, {x});"
        a["final"] = lambda y: f"{p}_op{k}_final({a['acc']}, {a['s']}[0], {y});"
    return a


def _copy(dst: str, src: str, n: int) -> str:
    return f"{{ int j; for (j = 0; j < {n}; ++j) {dst}[j] = {src}[j]; }}"


def _stream(q, p, vt, fp_, member, in_size, hnew, maxdim, shapes, made, sch: Schedule) -> None:
    per = {name: t.per_step for name, t in shapes.items()}
    ops = q.ops
    main = q.output_names[0]
    step_ks = [k for k, op in enumerate(ops) if per[op.outputs[0]]]
    acc_ks = [k for k, op in enumerate(ops) if not per[op.outputs[0]] and any(per[n] for n in op.inputs if n)]
    head_ks = [k for k, op in enumerate(ops) if not per[op.outputs[0]]]        # accumulators finalise here
    for k in step_ks:
        if not per[ops[k].inputs[0]]:
            raise McuNnError(f"codegen: {type(ops[k]).__name__} ({ops[k].source or f'op {k}'}) after a readout "
                             "(SelectLast/FinalHidden) is not supported")
    pool = _Pool(lambda i: member(f"v{chr(ord('a') + i)}", maxdim))
    loc: dict[str, str] = {q.input_names[0]: "x"}
    adv_ks = sorted(step_ks + acc_ks)
    result = q.input_names[0]
    last_step = ops[step_ks[-1]].outputs[0] if step_ks else result

    def busy(section, k, alias=None):
        alias = alias or {}
        return {alias.get(loc[n], loc[n]) for j in section if j >= k for n in ops[j].inputs if n in loc}

    accs: dict[int, dict] = {}
    for k in adv_ks:
        op = ops[k]
        name, x_in = op.outputs[0], loc.get(op.inputs[0], "")
        if isinstance(op, (QEmbedding, Embedding)):
            loc[name] = pool.get(busy(adv_ks, k))
            sch.advance.append(f"{p}_op{k}(x[0], {loc[name]});")
        elif is_rec(op):
            sch.advance.append(_rec_call(p, k, op, 0, x_in, hnew))
            loc[name] = f"s->op{k}_h0"
        elif is_map(op):
            loc[name] = pool.get(busy(adv_ks, k))
            sch.advance.append(f"{p}_op{k}({', '.join(loc[n] for n in op.inputs)}, {loc[name]});")
        elif isinstance(op, CONVS):           # causal: the last `history` input steps live in the state
            hist, i_sz = op.history, op.in_size
            win = member(f"op{k}_win", (hist + 1) * i_sz)
            keep = member(f"op{k}_hist", hist * i_sz) if hist else ""
            loc[name] = pool.get(busy(adv_ks, k))
            if hist:
                sch.advance.append(_copy(win, keep, hist * i_sz))
            sch.advance.append(_copy(f"({win} + {hist * i_sz})", x_in, i_sz))
            sch.advance.append(f"{p}_op{k}({win}, {hist + 1}, 0, {loc[name]});")
            if hist:
                sch.advance.append(_copy(keep, f"({win} + {i_sz})", hist * i_sz))
        elif isinstance(op, (TimeReduce, AttentionPool)):
            a = accs[k] = _acc_members(p, k, op, vt, fp_, member, shapes[op.inputs[0]].size, sch)
            args = [loc[n] for n in op.inputs]
            sch.advance.append(a["update"](*args))
        elif isinstance(op, TimeSelect):
            n = shapes[name].size
            keep, count = member(f"op{k}_keep", n), member(f"op{k}_count", 1, "int32_t")
            sch.advance.append(f"if ({count}[0] <= {op.index}) {{")
            sch.advance.append(f"    if ({count}[0] == {op.index}) {_copy(keep, x_in, n)}")
            sch.advance.append(f"    ++{count}[0];")
            sch.advance.append("}")
            loc[name] = keep
        elif isinstance(op, SelectLast):
            if op.inputs[0] == last_step:
                loc[name] = "cur"
            else:                              # its input is overwritten later in the step: keep a copy
                loc[name] = member(f"op{k}_last", shapes[name].size)
                sch.advance.append(_copy(loc[name], x_in, shapes[name].size))
        else:
            raise McuNnError(f"codegen: {type(op).__name__} ({op.source or f'op {k}'}) cannot run per step")
        if per[name]:
            result = name
    sch.advance.append(f"return {loc[result]};")

    sch.head += ["(void)s;", "(void)cur;"]
    alias = {"cur": loc[result]}
    for k in head_ks:
        op, name = ops[k], ops[k].outputs[0]
        if k in accs:
            loc[name] = pool.get(busy(head_ks, k, alias) | {alias["cur"]})
            sch.head.append(accs[k]["final"](loc[name]))
        elif isinstance(op, FinalHidden):
            rk, rop = made[op.inputs[0]]
            dst, off = pool.get(busy(head_ks, k, alias) | {alias["cur"]}), 0
            for d in op.directions:
                sch.head.append(_copy(f"({dst} + {off})", f"s->op{rk}_h{d}", rop.state_size))
                off += rop.state_size
            loc[name] = dst
        elif isinstance(op, (SelectLast, TimeSelect)):
            pass                               # located during the step
        elif is_map(op):
            loc[name] = pool.get(busy(head_ks, k, alias) | {alias["cur"]})
            sch.head.append(f"{p}_op{k}({', '.join(loc[n] for n in op.inputs)}, {loc[name]});")
        else:
            raise McuNnError(f"codegen: {type(op).__name__} ({op.source or f'op {k}'}) cannot run on a "
                             "per-sequence vector")
    if not per[main]:
        sch.head.append(_copy("y", loc[main], shapes[main].size))


def _whole(q, p, vt, fp_, member, in_size, hnew, maxdim, shapes, made, sch: Schedule) -> None:
    ops, main = q.ops, q.output_names[0]
    per = {name: t.per_step for name, t in shapes.items()}
    x0 = q.input_names[0]
    # lengths: C expression, largest value (for the buffers) and whether it always equals steps
    nexpr, nmax, same = {x0: "(long)steps"}, {x0: q.max_steps}, {x0: True}
    for k, op in enumerate(ops):
        name = op.outputs[0]
        if not per[name]:
            continue
        src = op.inputs[0]
        if isinstance(op, Repeat):
            src = op.inputs[1]
        if hasattr(op, "out_len") and not isinstance(op, Repeat):
            nmax[name], same[name] = op.out_len(nmax[src]), same[src] and op.same_rate()
            nexpr[name] = f"n{k}"
        else:
            nmax[name], same[name], nexpr[name] = nmax[src], same[src], nexpr[src]
    if per[main] and not same[main]:
        raise McuNnError(f"model {q.name!r}: its per-step output has a different number of steps than the input "
                         "(a strided or padded Conv1d/pool or a time slice on the way); unsupported: read out "
                         "one vector (out[:, -1], a mean over time) or keep the rate")
    bufsize = max([nmax[n] * shapes[n].size for n in shapes if per[n] and n != x0] + [1])
    big = _Pool(lambda i: member(f"b{chr(ord('a') + i)}", bufsize))
    vec = _Pool(lambda i: member(f"v{chr(ord('a') + i)}", maxdim))
    base: dict[str, str] = {x0: "x"}          # tensor -> the buffer holding it (liveness)
    loc: dict[str, str] = {x0: "x"}           # tensor -> C pointer expression to its first step
    stride = {x0: in_size}
    readers = {n: max([j for j, o in enumerate(ops) if n in o.inputs] + [-1]) for n in shapes}
    readers[main] = len(ops)

    def free(k: int) -> set:
        return {base[n] for n in base if readers.get(n, -1) >= k}

    seq = sch.seq
    for k, op in enumerate(ops):
        name = op.outputs[0]
        ins = [n for n in op.inputs if n]
        cur = loc.get(ins[0], "")
        n_in = nexpr.get(ins[0], "")
        od = shapes[name].size
        if per[name] and not isinstance(op, TimeSlice):
            base[name] = loc[name] = big.get(free(k))
            stride[name] = od
        elif not per[name] and not isinstance(op, FinalHidden):
            base[name] = loc[name] = vec.get(free(k))
        if isinstance(op, (QEmbedding, Embedding)):
            seq.append(f"for (t = 0; t < (size_t){n_in}; ++t) {p}_op{k}(x[t], {loc[name]} + t * {od});")
        elif is_rec(op):
            S = op.state_size
            for d in range(len(op.directions)):
                loop = f"for (t = 0; t < (size_t){n_in}; ++t)" if d == 0 else f"for (t = (size_t){n_in}; t-- > 0;)"
                seq += [f"{loop} {{", f"    {_rec_call(p, k, op, d, f'{cur} + t * {stride[ins[0]]}', hnew)}",
                        f"    {_copy(f'({loc[name]} + t * {od} + {d * S})', f's->op{k}_h{d}', S)}", "}"]
        elif is_map(op) and per[name]:
            args = ", ".join(f"{loc[n]} + t * {stride[n]}" for n in ins)
            seq.append(f"for (t = 0; t < (size_t){n_in}; ++t) {p}_op{k}({args}, {loc[name]} + t * {od});")
        elif is_map(op):
            seq.append(f"{p}_op{k}({', '.join(loc[n] for n in ins)}, {loc[name]});")
        elif isinstance(op, (CONVS, TimePool)):
            kern, st, dil = (op.kernel, op.stride, getattr(op, "dilation", 1))
            pl, pr = getattr(op, "pad_left", 0), getattr(op, "pad_right", 0)
            span = n_in + f" + {pl + pr - dil * (kern - 1)}"
            seq.append(f"const long n{k} = ({span}) <= 0 ? 0 : ({span} - 1) / {st} + 1;")
            seq.append(f"for (t = 0; t < (size_t)n{k}; ++t) "
                       f"{p}_op{k}({cur}, {n_in}, (long)t * {st} - {pl}, {loc[name]} + t * {od});")
        elif isinstance(op, TimeSlice):
            def edge(v, dflt):
                if v is None:
                    return dflt
                return f"({v} < 0 ? ({n_in} + {v} < 0 ? 0 : {n_in} + {v}) : ({v} > {n_in} ? {n_in} : {v}))" \
                    if v < 0 else f"({v} > {n_in} ? {n_in} : {v})"
            seq.append(f"const long a{k} = {edge(op.start, '0')}, e{k} = {edge(op.stop, n_in)};")
            seq.append(f"const long n{k} = e{k} > a{k} ? e{k} - a{k} : 0;")
            base[name], stride[name] = base[ins[0]], stride[ins[0]]
            loc[name] = f"({cur} + a{k} * {stride[ins[0]]})"
        elif isinstance(op, TimeFlatten):
            isz = shapes[ins[0]].size
            seq.append(f"{{ long i; int j; for (i = 0; i < {op.steps}; ++i) for (j = 0; j < {isz}; ++j) "
                       f"{loc[name]}[i * {isz} + j] = i < {n_in} ? {cur}[i * {stride[ins[0]]} + j] : 0; }}")
        elif isinstance(op, Repeat):
            seq.append(f"for (t = 0; t < (size_t){nexpr[ins[1]]}; ++t) "
                       f"{_copy(f'({loc[name]} + t * {od})', cur, od)}")
        elif isinstance(op, (TimeReduce, AttentionPool)):
            a = _acc_members(p, k, op, vt, fp_, member, od, sch)
            args = [f"{loc[n]} + t * {stride[n]}" for n in ins]
            seq.append(f"for (t = 0; t < (size_t){n_in}; ++t) {a['update'](*args)}")
            seq.append(a["final"](loc[name]))
        elif isinstance(op, (SelectLast, TimeSelect)):
            i = -1 if isinstance(op, SelectLast) else op.index
            at = f"{n_in} - {-i}" if i < 0 else str(i)
            seq.append(f"{{ const long i = {at}; int j; for (j = 0; j < {od}; ++j) "
                       f"{loc[name]}[j] = (i >= 0 && i < {n_in}) ? {cur}[i * {stride[ins[0]]} + j] : 0; }}")
        elif isinstance(op, FinalHidden):
            rk, rop = made[op.inputs[0]]
            base[name] = loc[name] = vec.get(free(k))
            off = 0
            for d in op.directions:
                seq.append(_copy(f"({loc[name]} + {off})", f"s->op{rk}_h{d}", rop.state_size))
                off += rop.state_size
        else:
            raise McuNnError(f"codegen: unsupported op {type(op).__name__} in model {q.name!r}")
    size = shapes[main].size
    if per[main]:
        seq.append(f"{_copy('y', loc[main], f'(int)steps * {size}')}")
    else:
        seq.append(_copy("y", loc[main], size))
