"""Fold a hand-written loop over time into one recurrent op (issue 9).

torch.export unrolls ``for t in range(T): h = cell(x[:, t], h)`` into T copies of the step.
``fold_loops`` finds them (the input selected, unbound or split per step, state flowing from copy
t to copy t+1), works each copy out as affine forms (``step_forms``), asks ``cell_match`` which
cell it is, and replaces the copies by one recurrent node with PyTorch-layout weights:
``aten.lstm.input`` / ``aten.gru.input`` / ``aten.rnn_*.input`` for the fused kernels, or a
``CellOp`` named after a cell unit that PyTorch has no op for. The walker reads either like an
nn.LSTM. The saved T is only the example's: the folded op runs any number of steps. Stacked cells
fold one per pass. Anything else gets one McuNnError line.
"""
from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from torch.fx import Graph, Node

from ..errors import McuNnError
from .cell_match import Match, match_cell
from .step_forms import STEP_OPS, Aff, Eval, NotCell, full_slice, leaf, only_ones_change

# linear maps of the state alone, which torch.export places right after the state is made
PREP = {"aten.linear.default", "aten.mm.default", "aten.matmul.default", "aten.addmm.default", "aten.t.default",
        "aten.transpose.int", "aten.view.default", "aten.reshape.default", "aten.unsqueeze.default",
        "aten.squeeze.dim", "aten.clone.default", "aten.contiguous.default", "aten.chunk.default",
        "aten.unsafe_chunk.default", "aten.split.Tensor", "aten.unsafe_split.Tensor", "aten.split_with_sizes.default"}
# tensors made from nothing but a shape: a loop's initial state
FILLS = {"aten.zeros.default", "aten.zeros_like.default", "aten.new_zeros.default", "aten.full.default",
         "aten.full_like.default", "aten.new_full.default", "aten.ones.default", "aten.ones_like.default"}
KNOWN = ("mcu-nn folds steps that are an LSTM (also with peepholes or coupled gates), a GRU (also with the reset "
         "gate before the recurrent matmul, or one gate as in the MGU) or a tanh/relu RNN; write the step as one "
         "of those")


# ----------------------------------------------------------------------------- finding the loop
@dataclass
class _Loop:
    seq: Node                    # the sequence the steps are cut from
    dim: int                     # its time axis
    xs: list[list[Node]]         # x_t, t = 0..T-1 (each one or more slices of the same step)
    copies: list[list[Node]] = field(default_factory=list)   # each step's nodes, graph order
    state_in: list[list[Node]] = field(default_factory=list)  # each step's state inputs
    out_pos: list[int] = field(default_factory=list)          # positions of the state outputs in a copy
    feeds: list[int] = field(default_factory=list)            # state output j becomes state input feeds[j]
    kept: bool = False                                        # x_t is (N, 1): the input is (N, T), no feature axis


def _static(d: Any) -> Optional[int]:
    """A size as the program was made: an int, or the value a SymInt of the TorchScript converter had
    for the example (a traced loop was unrolled for exactly that many steps); None when unknown."""
    if isinstance(d, int):
        return d
    node = getattr(d, "node", None)
    value = node.maybe_as_int() if node is not None and hasattr(node, "maybe_as_int") else None
    hint = getattr(node, "hint", None)
    return value if value is not None else hint if isinstance(hint, int) else None


def _unslice(n: Node) -> Node:
    while full_slice(n):
        n = n.args[0]
    return n


def _candidates(graph: Graph) -> list[tuple[Node, int, list[list[Node]], bool]]:
    """(sequence, axis, [x_0 .. x_{T-1}], whether x_t keeps the axis as a feature of size 1) for every
    full set of per-step slices of one tensor."""
    found = []
    sel: dict[tuple, dict[int, Node]] = {}
    aliases: dict[Node, list[Node]] = {}          # x[:, t] written twice in one step: two selects
    kept: set[tuple] = set()                      # steps that keep the time axis as their one feature
    for n in graph.nodes:
        name = str(n.target)
        if name == "aten.select.int" and isinstance(n.args[0], Node):
            src = _unslice(n.args[0])
            shape = src.meta["val"].shape
            dim = n.args[1] % len(shape)
            steps = _static(shape[dim])
            if steps is None:                        # a dynamic time axis cannot be unrolled
                continue
            sel.setdefault((src, dim), {}).setdefault(n.args[2] % steps, n)
            aliases.setdefault(sel[(src, dim)][n.args[2] % steps], []).append(n)
        elif name == "aten.unbind.int":
            dim = (n.args[1] if len(n.args) > 1 else 0) % n.args[0].meta["val"].dim()
            items = {u.args[1]: u for u in n.users if u.target is operator.getitem}
            sel[(n.args[0], dim)] = items
        elif _one_step_slice(n):                     # x[:, t:t+1]: step t with its time axis kept
            dim = n.args[1] % n.args[0].meta["val"].dim()
            sel.setdefault((n.args[0], dim), {}).setdefault(n.args[2], n)
            aliases.setdefault(sel[(n.args[0], dim)][n.args[2]], []).append(n)
        elif _splits_into_ones(n):                   # (N, T).split(1, dim=1): steps of one feature each
            items = {u.args[1]: u for u in n.users if u.target is operator.getitem}
            sel[(n.args[0], n.args[2] % 2)] = items
            kept.add((n.args[0], n.args[2] % 2))
    for (src, dim), items in sel.items():
        steps = _static(src.meta["val"].shape[dim])
        if steps is not None and steps >= 3 and sorted(items) == list(range(steps)):
            found.append((src, dim, [aliases.get(items[t], [items[t]]) for t in range(steps)], (src, dim) in kept))
    return found


def _one_step_slice(n: Node) -> bool:
    """``x[:, t:t+1]`` of an (N, T, F) or (T, N, F) sequence along a leading axis."""
    if str(n.target) != "aten.slice.Tensor" or not isinstance(n.args[0], Node) or len(n.args) < 4:
        return False
    rank = n.args[0].meta["val"].dim()
    args = list(n.args) + [1]
    return rank == 3 and n.args[1] % rank < 2 and isinstance(args[2], int) and args[2] >= 0 \
        and args[3] == args[2] + 1 and args[4] == 1


def _splits_into_ones(n: Node) -> bool:
    """``x.split(1, dim)`` of a 2-D (N, T) input (pytorch/examples' sine model)."""
    name = str(n.target)
    if name not in ("aten.split.Tensor", "aten.unsafe_split.Tensor", "aten.split_with_sizes.default") \
            or not isinstance(n.args[0], Node) or n.args[0].meta["val"].dim() != 2 or len(n.args) < 3:
        return False
    sizes = n.args[1]
    return sizes == 1 if isinstance(sizes, int) else bool(sizes) and all(s == 1 for s in sizes)


def _outer_consts(graph: Graph, params: dict[Node, torch.Tensor]) -> dict[Node, torch.Tensor]:
    """Values computed from parameters alone (``self.weight_ih.t()``), evaluated."""
    consts = dict(params)
    for n in graph.nodes:
        if n.op != "call_function" or n in consts:
            continue
        deps = [a for a in n.all_input_nodes]
        if deps and all(a in consts for a in deps):
            args = torch.fx.node.map_arg(n.args, lambda a: consts[a])
            kwargs = torch.fx.node.map_arg(n.kwargs, lambda a: consts[a])
            with torch.no_grad():
                consts[n] = n.target(*args, **kwargs)
    return consts


def _structure(graph: Graph, seq: Node, dim: int, xs: list[list[Node]], consts: dict) -> _Loop:
    """Cut the graph into the T step copies and find the state each copy hands to the next."""
    T = len(xs)
    slice_step = {n: t for t, ns in enumerate(xs) for n in ns}
    step: dict[Node, int] = {}
    for n in graph.nodes:
        if n in slice_step:
            step[n] = slice_step[n]
        elif n in consts:
            step[n] = -1
        else:
            step[n] = max((step[a] for a in n.all_input_nodes), default=-1)
    collector = {n for n in graph.nodes if len({step[a] for a in n.all_input_nodes if step[a] >= 0}) > 2}
    for n in reversed(list(graph.nodes)):   # ops on h alone belong to the step that reads them
        if set(n.users) & collector:        # ... not a per-step output read by torch.stack/cat after the loop
            continue
        users = {step[u] for u in n.users}
        scaled = str(n.target) == "aten.mul.Tensor" and sum(a not in consts for a in n.all_input_nodes) == 1
        piece = n.target is operator.getitem and str(n.args[0].target) in PREP   # a chunk of U h, not a cell's output
        if (str(n.target) in PREP or scaled or piece) and n not in slice_step and n not in consts \
                and users == {step[n] + 1} \
                and step[n] + 1 < T:
            step[n] += 1
    loop = _Loop(seq, dim, xs)
    loop.copies = [[n for n in graph.nodes if step[n] == t and n not in collector] for t in range(T)]
    for t, copy in enumerate(loop.copies):
        ins: list[Node] = []
        for n in copy:
            for a in n.all_input_nodes:
                if a in consts or step[a] == t or n in slice_step:
                    continue
                if step[a] != t - 1 or (t > 0 and step[a] < 0):
                    raise McuNnError(f"step {t} of the loop reads a value of step {step[a]}, not of the step "
                                     "before: the loop's steps differ")
                if a not in ins:
                    ins.append(a)
        loop.state_in.append(ins)
    targets = [[n.target for n in c] for c in loop.copies]
    L = len(targets[0])
    if any(tg != targets[0] for tg in targets[1:-1]) or targets[-1][:L] != targets[0]:
        raise McuNnError("the loop's steps differ (the copies of its step do different computations)")
    loop.state_in[0] = _initial_state(graph, loop)
    for t in range(T - 1):
        pos = sorted(loop.copies[t].index(n) for n in loop.state_in[t + 1])
        if t and pos != loop.out_pos:
            raise McuNnError("the loop's steps differ (each step hands a different state to the next)")
        loop.out_pos = pos
    if not loop.out_pos:
        raise McuNnError("the loop carries no state from one step to the next: it is not a recurrence")
    loop.copies[-1] = loop.copies[-1][:L]          # what follows is after the loop
    loop.feeds = [loop.state_in[1].index(loop.copies[0][p]) for p in loop.out_pos]
    return loop


def _reads(n: Node) -> list[Node]:
    """The nodes ``n`` reads, one entry per argument slot (a node read twice appears twice)."""
    out: list[Node] = []
    torch.fx.node.map_arg((n.args, n.kwargs), lambda a: out.append(a) or a)
    return out


def _initial_state(graph: Graph, loop: _Loop) -> list[Node]:
    """Step 0's state inputs, one per state of step 1, found by reading step 0 where step 1 reads its
    state. One zeros tensor made once for two states (a traced ``h = c = zeros``) gets a copy per
    state, so that each state of the loop starts from a node of its own."""
    if len(loop.copies) < 2 or len(loop.copies[0]) != len(loop.copies[1]):
        return loop.state_in[0]
    first, second = loop.copies[0], loop.copies[1]
    init: list[Node] = []
    for s in loop.state_in[1]:
        slots = [(i, k) for i, n in enumerate(second) for k, a in enumerate(_reads(n)) if a is s]
        starts = {_reads(first[i])[k] for i, k in slots}
        if len(starts) != 1:
            return loop.state_in[0]                  # the steps differ; _structure's checks say so
        start = starts.pop()
        if start in init:
            if str(start.target) not in FILLS:
                raise McuNnError(f"the loop starts two of its states from the same tensor ({start.name})")
            with graph.inserting_after(start):
                twin = graph.call_function(start.target, start.args, dict(start.kwargs))
            twin.meta = dict(start.meta)
            for i, k in slots:
                count = iter(range(10 ** 6))
                first[i].args, first[i].kwargs = torch.fx.node.map_arg(
                    (first[i].args, first[i].kwargs), lambda a: twin if next(count) == k else a)
            start = twin
        init.append(start)
    return init


def _core(copy: list[Node], outs: list[Node], stop: tuple = ()) -> list[Node]:
    """The nodes of a copy the state outputs depend on (not looking past ``stop``), graph order."""
    members, todo, keep = set(copy), list(outs), set()
    while todo:
        n = todo.pop()
        if n in members and n not in keep:
            keep.add(n)
            todo += [] if n in stop else n.all_input_nodes
    return [n for n in copy if n in keep]


def _step_cell(loop: _Loop, t: int, consts: dict) -> tuple[Match, list[Node], list[Node]]:
    """The cell of step t: of all its state when that is one cell, else of the first stacked cell
    (the smallest group of states that reads only x and itself, e.g. lstm1 of two stacked
    LSTMCells). Returns it, the group's state outputs and its state inputs (s0, s1 in the cell)."""
    copy = loop.copies[t]
    outs = [copy[p] for p in loop.out_pos]
    if len(loop.state_in[t]) != len(outs):
        raise McuNnError(f"step {t} of the loop reads {len(loop.state_in[t])} state tensors but hands "
                         f"{len(outs)} to the next: the loop's steps differ")
    group = _first_group(_evaluate(loop, t, consts, outs, loop.state_in[t]), outs, loop.feeds)
    outs = [outs[j] for j in group]
    ins = [loop.state_in[t][loop.feeds[j]] for j in group]
    e = _evaluate(loop, t, consts, outs, ins)
    forms = [e.vals[o] for o in outs]
    if not all(isinstance(f, Aff) for f in forms):
        raise NotCell("its state is not a tensor")
    xs, hs = int(loop.xs[t][0].meta["val"].shape[-1]), int(outs[0].meta["val"].shape[-1])
    return match_cell(e, forms, xs, hs), outs, ins


def _evaluate(loop: _Loop, t: int, consts: dict, outs: list[Node], ins: list[Node]) -> Eval:
    """Step t's ``outs`` as affine forms over x and the state inputs ``ins`` (leaves s0, s1, ...)."""
    e = Eval(consts)
    for x in loop.xs[t]:
        e.vals[x] = leaf("x", int(loop.xs[t][0].meta["val"].shape[-1]))
    for j, s in enumerate(ins):
        e.vals[s] = leaf(f"s{j}", int(s.meta["val"].shape[-1]))
    for n in _core(loop.copies[t], outs):
        if n not in e.vals:
            e.node(n)
    return e


def _first_group(e: Eval, outs: list[Node], feeds: list[int]) -> list[int]:
    """Indices of the smallest set of state outputs whose forms read no state but their own."""
    memo: dict = {}

    def leaves(a: Any) -> set:
        found = set()
        for k in (a.terms if isinstance(a, Aff) else ()):
            if isinstance(k, str):
                found.add(k)
            else:
                if k not in memo:
                    memo[k] = set().union(*(leaves(arg) for arg in e.atoms[k][1]))
                found |= memo[k]
        return found

    reads = [{int(k[1:]) for k in leaves(e.vals[o]) if k != "x"} for o in outs]
    best = list(range(len(outs)))
    for j in range(len(outs)):
        group = {j}
        while True:
            more = {i for i in range(len(outs)) if feeds[i] in set().union(*(reads[g] for g in group))} - group
            if not more:
                break
            group |= more
        if len(group) < len(best):
            best = sorted(group)
    return best


# ----------------------------------------------------------------------------- folding
RNN_TARGETS = {"lstm": torch.ops.aten.lstm.input, "gru": torch.ops.aten.gru.input,
               "rnn_tanh": torch.ops.aten.rnn_tanh.input, "rnn_relu": torch.ops.aten.rnn_relu.input}


class CellOp:
    """The op of a folded loop whose cell PyTorch has no op for (a peephole LSTM): named like an ATen
    op (``mcu_nn.peephole_lstm.input``, the cell's ``aten``) for the walker, which reads it as nn.LSTM's
    arguments plus the cell's extra parameters. The graph is read, never run."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.__name__ = name.replace(".", "_")

    def __str__(self) -> str:
        return self.name

    def __call__(self, *args: Any) -> Any:
        raise RuntimeError(f"{self.name} is mcu-nn's record of a folded loop; it does not run in torch")


def fold_loops(ep: torch.export.ExportedProgram, label: str) -> None:
    """Replace every unrolled loop over time of ``ep``'s graph by one recurrent op, in place.
    Raises McuNnError (one line) for a loop whose step is not an LSTM/GRU/RNN cell."""
    from .walker import _parameter_specs

    specs = _parameter_specs(ep)
    params = {n: specs[n.name] for n in ep.graph.nodes if n.op == "placeholder" and n.name in specs}
    params.update({n: (str(n.target), getattr(ep.graph_module, str(n.target)))
                   for n in ep.graph.nodes if n.op == "get_attr"})
    for _ in range(16):                       # one loop folded per pass; stacked loops fold in turn
        found = [c for c in _candidates(ep.graph) if c[0].meta["val"].dtype.is_floating_point is False
                 or c[1] != c[0].meta["val"].dim() - 1 or c[3]]
        if not found:
            return
        try:
            _fold(ep, *found[0], {n: t for n, (_, t) in params.items()}, {n: q for n, (q, _) in params.items()})
        except McuNnError as e:
            raise McuNnError(f"{label}: {e}") from None


def _module_path(core: list[Node], names: dict[Node, str]) -> str:
    for n in core:
        stack = n.meta.get("nn_module_stack") or {}
        if stack and list(stack.values())[-1][0] and "loop" not in stack:   # not an op of a folded loop
            return list(stack.values())[-1][0]
    read = [names[a] for n in core for a in n.all_input_nodes if a in names and "." in names[a]]
    return Counter(q.rsplit(".", 1)[0] for q in read).most_common(1)[0][0] if read else "loop"


def _fold(ep, seq: Node, dim: int, xs: list[list[Node]], kept: bool, params: dict, names: dict) -> None:
    graph = ep.graph
    consts = _outer_consts(graph, params)
    loop = _structure(graph, seq, dim, xs, consts)
    loop.kept = kept
    core0 = _core(loop.copies[0], [loop.copies[0][p] for p in loop.out_pos])
    path = _module_path(core0, names)
    try:
        steps = [_step_cell(loop, t, consts) for t in range(len(xs))]
    except NotCell as e:
        raise McuNnError(f"a hand-written recurrence in '{path}' whose step is not an LSTM/GRU/RNN cell ({e}); "
                         f"{KNOWN}") from None
    cell = steps[0][0]
    for t, (c, outs, ins) in enumerate(steps):
        same = c.kind == cell.kind and (c.h, c.c, c.outs) == (cell.h, cell.c, cell.outs) and all(
            np.array_equal(getattr(c, w), getattr(cell, w)) for w in ("w_ih", "w_hh", "b_ih", "b_hh"))
        if not same:
            raise McuNnError(f"the loop in '{path}' does not compute the same cell at every step (step {t} "
                             "differs); a loop whose steps differ is not a recurrence")
        if t + 1 < len(steps):
            nxt = steps[t + 1][2]
            for role, slot in (("h", c.h), ("c", c.c)):
                if slot and outs[c.outs[role]] is not nxt[int(slot[1])]:
                    raise McuNnError(f"the loop in '{path}' does not hand {role} of step {t} to step {t + 1}")
    h_nodes = [outs[cell.outs["h"]] for _, outs, _ in steps]
    c_nodes = [outs[cell.outs["c"]] for _, outs, _ in steps] if cell.c else []
    init = [steps[0][2][int(cell.h[1])]] + ([steps[0][2][int(cell.c[1])]] if cell.c else [])
    whole = len(steps[0][1]) == len(loop.out_pos)
    _rewrite(ep, loop, cell, path, h_nodes, c_nodes, init, consts,
             None if whole else [_core(copy, outs) for copy, (_, outs, _) in zip(loop.copies, steps)])


def _rewrite(ep, loop: _Loop, cell: Match, path: str, h_nodes: list[Node], c_nodes: list[Node],
             init: list[Node], consts: dict, cores: Optional[list[list[Node]]] = None) -> None:
    """Replace the loop by one recurrent op. With ``cores`` (the first of stacked cells, per step),
    only those nodes go; the rest of the loop reads h_t as out[:, t] of the new op, so that the
    next pass of fold_loops folds it as a loop over that output."""
    graph, gm = ep.graph, ep.graph_module
    order = {n: i for i, n in enumerate(graph.nodes)}
    anchor = max([loop.seq, *init], key=order.__getitem__)
    stem = path.replace(".", "_") + "_loop"
    while hasattr(gm, f"{stem}_weight_ih_l0"):       # two loops in one module (stacked cells)
        stem += "_"
    h_val = h_nodes[-1].meta["val"]
    dtype = h_val.dtype

    def attr(name: str, arr: np.ndarray) -> Node:
        nonlocal anchor
        t = torch.tensor(arr, dtype=torch.float32)
        setattr(gm, f"{stem}_{name}", t)
        with graph.inserting_after(anchor):
            anchor = graph.get_attr(f"{stem}_{name}")
        anchor.meta["val"] = t
        return anchor

    def call(target, args: tuple, val: Any) -> Node:
        nonlocal anchor
        with graph.inserting_after(anchor):
            anchor = graph.call_function(target, args)
        anchor.meta["val"] = val
        anchor.meta["nn_module_stack"] = {"loop": (path, "HandWrittenLoop")}
        return anchor

    biased = bool(cell.b_ih.any() or cell.b_hh.any())
    weights = [attr("weight_ih_l0", cell.w_ih), attr("weight_hh_l0", cell.w_hh)]
    if biased:
        weights += [attr("bias_ih_l0", cell.b_ih), attr("bias_hh_l0", cell.b_hh)]
    weights += [attr(f"{k}_l0", v) for k, v in cell.extra.items()]
    batch_first = loop.dim == 1
    seq, seq_shape = loop.seq, tuple(_static(d) for d in loop.seq.meta["val"].shape)
    if loop.kept:                              # (N, T) -> (N, T, 1)
        seq_shape += (1,)
        seq = call(torch.ops.aten.unsqueeze.default, (seq, -1), torch.zeros(seq_shape, dtype=seq.meta["val"].dtype))
    out_val = torch.zeros(seq_shape[:-1] + (cell.w_hh.shape[1],), dtype=dtype)
    hx = init if cell.c else init[0]
    target = RNN_TARGETS.get(cell.kind) or CellOp(f"mcu_nn.{cell.kind}.input")
    rnn = call(target, (seq, hx, weights, biased, 1, 0.0, False, False, batch_first),
               (out_val,) + (torch.zeros(h_val.shape, dtype=dtype),) * (2 if cell.c else 1))
    seq_out = call(operator.getitem, (rnn, 0), out_val)
    finals = [call(operator.getitem, (rnn, 1), torch.zeros(h_val.shape, dtype=dtype))]
    if cell.c:
        finals.append(call(operator.getitem, (rnn, 2), torch.zeros(h_val.shape, dtype=dtype)))
    if cores is None:
        in_loop = {n for c in loop.copies for n in c}
    else:
        in_loop = {n for c in cores for n in c} - {x for xs in loop.xs for x in xs}
        rest = {n for c in loop.copies for n in c} - in_loop
        for t, (h, c) in enumerate(zip(h_nodes, c_nodes or [None] * len(h_nodes))):
            if c is not None and set(c.users) & rest:
                raise McuNnError(f"the loop in '{path}' reads the cell state c of its first cell in the next one; "
                                 "only h may flow from one stacked cell to the next")
            readers = [u for u in h.users if u in rest]
            if readers:
                shape = list(out_val.shape)
                del shape[loop.dim]
                x_t = call(torch.ops.aten.select.int, (seq_out, loop.dim, t), torch.zeros(shape, dtype=dtype))
                for u in readers:
                    u.replace_input_with(h, x_t)
    readers = {u for n in in_loop for u in n.users} - in_loop     # torch.stack / cat after the loop
    _collect(loop, h_nodes, seq_out, call, attr, consts, in_loop)
    _last_step_readout(loop, h_nodes[-1], finals[0], in_loop, call)
    for last, final in zip([h_nodes[-1]] + c_nodes[-1:], finals):
        last.replace_all_uses_with(final, delete_user_cb=lambda u: u not in in_loop)
    # Erase only what the fold made dead: a global DCE would also drop an unused c of a later stacked
    # cell's last step, and its copy would no longer match the others. (In-place ops such as the
    # converter's add_ count as impure to FX's DCE, so that would not do either.)
    slices = {x for xs in loop.xs for x in xs}
    slices |= {x.args[0] for x in slices if x.target is operator.getitem}     # the split / unbind
    for n in reversed(list(graph.nodes)):
        if (n in in_loop or n in readers or n in slices or n in consts) and not n.users and n.op == "call_function":
            graph.erase_node(n)
    left = in_loop & set(graph.nodes)
    if left:
        raise McuNnError(f"a per-step value of the loop in '{path}' ({next(iter(left)).name}) is used other than "
                         "stacked over time (torch.stack) or as the final state; unsupported")


def _collect(loop: _Loop, h_nodes: list[Node], seq_out: Node, call, attr, consts: dict, in_loop: set) -> None:
    """torch.stack of the per-step h (or of one affine map of it, d2l's per-step output layer)
    -> the recurrent op's output sequence."""
    time_axis = 1 if loop.dim == 1 else 0
    for n in list(seq_out.graph.nodes):
        if n in in_loop or n.op == "output" or not n.args or not isinstance(n.args[0], (list, tuple)) or \
                not any(a in in_loop for a in n.args[0] if isinstance(a, Node)):
            continue
        items = [h if _step_output(i, h) else i for i, h in zip(n.args[0], h_nodes)]
        if str(n.target) not in ("aten.stack.default", "aten.cat.default") or len(items) != len(h_nodes):
            raise McuNnError(f"the loop's per-step values are combined by {n.target}; only torch.stack or "
                             "torch.cat over time is supported")
        y = seq_out
        if items != h_nodes:
            w, b = _step_map(loop, items, h_nodes, consts)
            y = call(torch.ops.aten.linear.default, (seq_out, attr(f"{n.name}_weight", w), attr(f"{n.name}_bias", b)),
                     torch.zeros(tuple(_static(d) for d in seq_out.meta["val"].shape[:-1]) + (w.shape[0],),
                                 dtype=seq_out.meta["val"].dtype))
        if str(n.target) == "aten.cat.default":
            n.replace_all_uses_with(_cat_over_time(n, y, time_axis, call))
            continue
        axis = (n.args[1] if len(n.args) > 1 else 0) % (y.meta["val"].dim())
        if axis != time_axis:
            shape = [_static(d) for d in y.meta["val"].shape]
            shape[0], shape[1] = shape[1], shape[0]
            y = call(torch.ops.aten.transpose.int, (y, 0, 1), torch.zeros(shape, dtype=y.meta["val"].dtype))
        n.replace_all_uses_with(y)


def _step_output(n: Any, h: Node) -> bool:
    """``out`` of a one-step nn.LSTM/GRU/RNN call whose new h is ``h``: the same numbers, (N, 1, H)."""
    return isinstance(n, Node) and n.target is operator.getitem and n.args[1] == 0 \
        and h.target is operator.getitem and n.args[0] is h.args[0] and str(n.args[0].target) in STEP_OPS


def _last_step_readout(loop: _Loop, h_last: Node, final: Node, in_loop: set, call) -> None:
    """``out[:, -1]`` (or ``out.squeeze(1)``) of the last one-step call, read after the loop: the final
    h (``h_n[-1]`` of the folded op)."""
    if final.meta["val"].dim() == 3:
        shape = tuple(final.meta["val"].shape[1:])
        final = call(torch.ops.aten.select.int, (final, 0, -1), torch.zeros(shape, dtype=final.meta["val"].dtype))
    for n in loop.copies[-1]:
        if not _step_output(n, h_last):
            continue
        for u in [u for u in n.users if u not in in_loop]:
            name = str(u.target)
            step_axis = loop.dim
            if (name == "aten.select.int" and u.args[1] % 3 == step_axis and u.args[2] in (0, -1)) or \
                    (name in ("aten.squeeze.dim", "aten.squeeze.dims") and only_ones_change(u)):
                u.replace_all_uses_with(final)


def _cat_over_time(cat: Node, y: Node, time_axis: int, call) -> Node:
    """torch.cat of the per-step (N, F) outputs, from y = their stack in the op's layout: on axis 1 with
    F = 1 it is (N, T) (pytorch/examples' sine model), on axis 0 the (T*N, F) rows of d2l's models."""
    shape = [_static(d) for d in y.meta["val"].shape]
    item_rank = cat.args[0][0].meta["val"].dim()
    axis = (cat.args[1] if len(cat.args) > 1 else 0) % item_rank
    dtype = y.meta["val"].dtype
    if item_rank == 3 and axis == time_axis:         # cat of per-step (N, 1, H) outs: the sequence itself
        return y
    if axis == 1 and time_axis == 1 and shape[-1] == 1:
        return call(torch.ops.aten.squeeze.dim, (y, -1), torch.zeros(shape[:-1], dtype=dtype))
    if axis == 0:
        if time_axis == 1:
            shape[0], shape[1] = shape[1], shape[0]
            y = call(torch.ops.aten.transpose.int, (y, 0, 1), torch.zeros(shape, dtype=dtype))
        return call(torch.ops.aten.reshape.default, (y, [-1, shape[-1]]),
                    torch.zeros((shape[0] * shape[1], shape[-1]), dtype=dtype))
    raise McuNnError(f"the loop's per-step outputs of {shape[-1]} features are concatenated along axis {axis}; "
                     "torch.stack them over time instead")


def _step_map(loop: _Loop, items: list[Node], h_nodes: list[Node], consts: dict) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) of y_t = W h_t + b, the same at every step, else McuNnError."""
    found = None
    for t, (y, h) in enumerate(zip(items, h_nodes)):
        e = Eval(consts)
        e.vals[h] = leaf("h", int(h.meta["val"].shape[-1]))
        try:
            for n in _core(loop.copies[t], [y], (h,)):
                if n not in e.vals:
                    e.node(n)
        except NotCell:
            e.vals[y] = None
        v = e.vals.get(y)
        if not isinstance(v, Aff) or set(v.terms) != {"h"}:
            raise McuNnError("the loop's stacked per-step outputs are neither h nor an affine map (Linear, "
                             "matmul + bias) of h; unsupported")
        if found is not None and not (np.array_equal(found[0], v.terms["h"]) and np.array_equal(found[1], v.bias)):
            raise McuNnError("the loop's per-step output layer differs between steps")
        found = (v.terms["h"], v.bias)
    return found
