"""QModel -> C sources (<name>.h, <name>.c) through the Jinja templates.

Kernels are one template per op kind; this module decides names, types, the state
struct and the per-step / per-sequence call sequence. Never imports torch.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import jinja2
import numpy as np

from .. import __version__
from ..cells import cell_of
from ..errors import McuNnError
from ..ir import (Activation, Embedding, FinalHidden, Linear, QActivation, QEmbedding, QLinear,
                  QMatrix, QModel, QRecurrent, Recurrent, SelectLast, macs_per_step, producers, state_slots,
                  tensors, whole_sequence)
from ..ops.conv1d import Conv1d, QConv1d
from ..ops.pooling import TimeFlatten, TimePool, TimeReduce, TimeSelect, TimeSlice
from ..ops.repeat import Repeat
from ..ops.attention import AttentionPool
from . import schedule
from ..ops import unit_of
from ..ops.unit import EmitCtx
from .. import fixedpoint as fp

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
_LIMIT62 = 1 << 62


def environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), trim_blocks=True,
                              lstrip_blocks=True, keep_trailing_newline=True,
                              undefined=jinja2.StrictUndefined)


def _int_table(t: np.ndarray) -> str:
    vals = [str(int(v)) for v in t]
    return ",\n".join("    " + ", ".join(vals[i:i + 12]) for i in range(0, len(vals), 12))


# The C runtime every export ships (one copy per program, however many models): bump
# RUNTIME_VERSION when its interface or numerics change, so mixed runtimes fail to build.
RUNTIME_HEADER = "mcunn_fixedpoint.h"
RUNTIME_SOURCE = "mcunn_fixedpoint.c"
RUNTIME_VERSION = 1


def _runtime_context() -> dict:
    return dict(version=__version__, runtime_version=RUNTIME_VERSION, table_len=fp.TABLE_LEN,
                sigmoid_min=int(fp.SIGMOID_TABLE.min()), sigmoid_table=_int_table(fp.SIGMOID_TABLE),
                tanh_table=_int_table(fp.TANH_TABLE), phi_table=_int_table(fp.PHI_TABLE),
                exp2_table_len=fp.EXP2_TABLE_LEN, exp2_table=_int_table(fp.EXP2_TABLE),
                sigmoid_stable=_int_table(signed_table(fp.SIGMOID_TABLE, True)),
                tanh_stable=_int_table(signed_table(fp.TANH_TABLE, False)))


def signed_table(table: np.ndarray, sigmoid: bool) -> np.ndarray:
    """f(k / 64) for k = -512..512 from the [0, 8] table (sigmoid(-v) = 32768 - sigmoid(v),
    tanh(-v) = -tanh(v)): the DSP LSTM loop's tables (1025 entries, f(0) at index 512). Linear
    interpolation of v at (v >> 6, v & 63) with rounding 32 + (v >> 31) equals sigmoid_q15 /
    tanh_q15 on every int16 (tests/test_dsp_lstm_loop.py)."""
    t = np.asarray(table[:513], np.int64)
    neg = (32768 - t[1:][::-1]) if sigmoid else -t[1:][::-1]
    return np.concatenate([neg, t])


def render_runtime_header() -> str:
    """mcunn_fixedpoint.h: the kernels (static inline) and the tables' extern declarations."""
    return environment().get_template("mcunn_fixedpoint.h.j2").render(**_runtime_context())


def render_runtime_source() -> str:
    """mcunn_fixedpoint.c: the activation tables of fixedpoint.py and the version symbol."""
    return environment().get_template("mcunn_fixedpoint.c.j2").render(**_runtime_context())


def render_runtime() -> dict[str, str]:
    """{file name: text} of the runtime."""
    return {RUNTIME_HEADER: render_runtime_header(), RUNTIME_SOURCE: render_runtime_source()}


def f32_literal(v: float) -> str:
    """Exact C literal of float32(v) (9 significant digits round-trip a float32)."""
    return "%.9ef" % float(np.float32(v))


# requantisation record types: {int64 bias; int32 mx, mh} = 16 bytes; a GRU unit = 3 records + int64
_RQ_BYTES = {"mcunn_rq_t": 16, "mcunn_rq_gru_t": 56}
# the flash read of one element of an MCUNN_ROM array (mcunn_fixedpoint.h)
_RD = {"int8_t": "MCUNN_RD8", "int16_t": "MCUNN_RD16", "int32_t": "MCUNN_RD32", "int64_t": "MCUNN_RD64"}


@dataclass
class Array:
    ctype: str
    name: str
    values: np.ndarray
    align: bool = False                   # word-aligned (the SIMD kernels load it with LDM)
    op: int = -1                          # index of the op it belongs to (its name is "<prefix>_op<k>_...")
    rom: bool = False                     # MCUNN_ROM (AVR: PROGMEM); every read goes through MCUNN_RD*

    @property
    def dims(self) -> str:
        shape = self.values.shape[:1] if self.ctype in _RQ_BYTES else self.values.shape
        return "".join(f"[{n}]" for n in shape)

    @property
    def attrs(self) -> str:
        return " MCUNN_ALIGN4" if self.align else ""

    @property
    def storage(self) -> str:
        """Before the name (declaration parsers read "<name>[...] = {")."""
        return " MCUNN_ROM" if self.rom else ""

    @property
    def nbytes(self) -> int:
        if self.ctype in _RQ_BYTES:
            return _RQ_BYTES[self.ctype] * int(self.values.shape[0])
        size = {"int8_t": 1, "int16_t": 2, "int32_t": 4, "int64_t": 8, "float": 4}[self.ctype]
        return size * int(self.values.size)

    @property
    def init(self) -> str:
        flat = self.values.reshape(-1)
        if self.ctype == "float":
            items = [f32_literal(v) for v in flat]
        else:
            items = [str(int(v)) for v in flat]
        if self.ctype == "mcunn_rq_gru_t":   # {r, z, n records; bias_h}
            recs = [items[i:i + 10] for i in range(0, len(items), 10)]
            return "{\n    " + ",\n    ".join(
                "{{%s}, {%s}, {%s}, %s}" % (", ".join(r[0:3]), ", ".join(r[3:6]), ", ".join(r[6:9]), r[9])
                for r in recs) + "\n}"
        if self.values.ndim == 2:
            cols = self.values.shape[1]
            rows = [", ".join(items[r * cols:(r + 1) * cols]) for r in range(self.values.shape[0])]
            return "{\n    {" + "},\n    {".join(rows) + "}\n}"
        return "{" + ", ".join(items) + "}"


@dataclass
class Emitted:
    """Everything write_export needs: sources plus sizes for the manifest."""
    header: str
    source: str
    arrays: list[Array]
    state_bytes: int
    layers: list[dict] = field(default_factory=list)


def _check_int(w: np.ndarray, lo: int, hi: int, what: str) -> None:
    if w.size and (w.min() < lo or w.max() > hi):
        raise McuNnError(f"{what}: values outside [{lo}, {hi}]; the QModel is invalid — re-run quantisation")


WEIGHT_LAYOUTS = ("packed", "wide")

# The kernel family the fused group dot products (mcunn_dot_<kind>_<acc>_g<R>) run on a DSP core
# (MCUNN_DSP in mcunn_fixedpoint.h): SMLAD for int32 accumulators, SMLALD for 64-bit ones. Every
# integer kind has a DSP kernel today; "portable" (float32) and "mixed" are kept for kinds without one.
DSP_KERNELS = {"s8_32": "smlad", "s16_32": "smlad", "s16_64": "smlald", "s8_64": "smlald"}


def dsp_kernel_of(dots: list[str]) -> str:
    """One recurrent layer's kernel on a DSP core from the names of its group dot products:
    "smlad", "smlald", "smlad+smlald" (both, each a DSP kernel), "portable", or "mixed" (part
    portable). This is what manifest layers[i]["dsp_kernel"] records and `mcu-nn bench` reads."""
    kinds = {DSP_KERNELS[re.match(r"mcunn_dot_(s\d+_\d+)_g\d+$", d).group(1)] for d in dots}
    if not kinds or kinds == {"portable"}:
        return "portable"
    if "portable" in kinds:
        return "mixed"
    return "+".join(sorted(kinds))


# On an MVE (Helium) core the int8 kernels with int32 accumulators run the vector kernel instead
# (mcunn_dot_s8_32_g*_mve, MCUNN_MVE); the others stay on the DSP kernels above.
MVE_KERNELS = {**DSP_KERNELS, "s8_32": "mve", "s8_64": "mve", "s16_64": "mve"}


def mve_kernel_of(dots: list[str]) -> str:
    """One recurrent layer's kernel on an MVE core (manifest layers[i]["mve_kernel"]): "mve" when
    every group dot product is the Helium kernel, "mve+smlald" etc. when some are DSP kernels."""
    kinds = {MVE_KERNELS[re.match(r"mcunn_dot_(s\d+_\d+)_g\d+$", d).group(1)] for d in dots}
    return "+".join(sorted(kinds)) if kinds else "portable"


# On ARMv7-M without DSP (Cortex-M3, MCUNN_V7M) every integer kind runs the MLA / SMLAL kernels of
# templates/ports/cortex_m3; on ARMv6-M (Cortex-M0/M0+, MCUNN_V6M) the int8 kinds with int32
# accumulators run the LDRSB + MULS asm kernels of templates/ports/cortex_m0, the others portable C.
V7M_KERNELS = {"s8_32": "v7m", "s16_32": "v7m", "s16_64": "v7m", "s8_64": "v7m"}
V6M_KERNELS = {"s8_32": "v6m", "s16_32": "portable", "s16_64": "portable", "s8_64": "portable"}


def port_kernel_of(dots: list[str], kernels: dict[str, str]) -> str:
    """One recurrent layer's kernel on a core whose port has one kind of kernel (``kernels``: e.g.
    V7M_KERNELS; manifest layers[i]["v7m_kernel"] / ["v6m_kernel"]): the port's name when every
    group dot product is one of its kernels, "portable" when none is, else "mixed"."""
    kinds = {kernels[re.match(r"mcunn_dot_(s\d+_\d+)_g\d+$", d).group(1)] for d in dots}
    if not kinds or kinds == {"portable"}:
        return "portable"
    return "mixed" if "portable" in kinds and len(kinds) > 1 else kinds.pop()


def v7m_kernel_of(dots: list[str]) -> str:
    """layers[i]["v7m_kernel"] (Cortex-M3): "v7m", "portable" or "mixed"."""
    return port_kernel_of(dots, V7M_KERNELS)


def v6m_kernel_of(dots: list[str]) -> str:
    """layers[i]["v6m_kernel"] (Cortex-M0/M0+): "v6m", "portable" or "mixed"."""
    return port_kernel_of(dots, V6M_KERNELS)


def pack_group_weights(wx: np.ndarray, wh: np.ndarray, rows_per_group: int, chunk: int) -> np.ndarray:
    """The fused, kernel-ordered weight stream of one recurrent direction (see the comment
    above mcunn_dot_*_g* in mcunn_fixedpoint.h): per group of ``rows_per_group`` rows (one
    unit's gates: row g*H + u of PyTorch's order), the input-segment chunks then the
    recurrent-segment chunks; a chunk is ``chunk`` columns of each row of the group,
    zero-padded; 4-column int8 chunks store columns in the order 0, 2, 1, 3."""
    R = rows_per_group
    H = wx.shape[0] // R
    order = [0, 2, 1, 3] if chunk == 4 else list(range(chunk))
    parts = []
    for u in range(H):
        rows = [g * H + u for g in range(R)]
        for m in (wx, wh):
            cols = m.shape[1]
            nchunks = -(-cols // chunk)
            pad = np.zeros((R, nchunks * chunk), np.int64)
            pad[:, :cols] = m[rows]
            # (R, chunks, chunk) -> (chunks, R, chunk) with the in-chunk column order
            blk = pad.reshape(R, nchunks, chunk)[:, :, order].transpose(1, 0, 2)
            parts.append(blk.reshape(-1))
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


class _Builder:
    def __init__(self, q: QModel, prefix: str, weight_layout: str = "packed"):
        if weight_layout not in WEIGHT_LAYOUTS:
            raise McuNnError(f"weight layout {weight_layout!r} is not one of {', '.join(WEIGHT_LAYOUTS)}")
        self.layout = weight_layout
        self.q, self.p = q, prefix
        self.fp = q.precision == "float32"
        self.vt = "float" if self.fp else "int16_t"
        self.vsize = 4 if self.fp else 2
        self.arrays: list[Array] = []
        self.kernels: list[str] = []
        self.layers: list[dict] = []
        self.unit_info: dict[int, dict] = {}      # op index -> manifest fields an op unit reported
        self.env = environment()

    # ---------------------------------------------------------------- arrays
    def arr(self, ctype: str, name: str, values, what: str, align: bool = False, rom: bool = False) -> str:
        """Declare a constant array; ``rom``: it lives in flash on AVR too, so the kernels read it
        only through MCUNN_RD* (weights, requantisation records, embedding tables)."""
        values = np.asarray(values)
        full = f"{self.p}_{name}"
        if ctype in ("int8_t", "int16_t", "int32_t"):
            bits = {"int8_t": 8, "int16_t": 16, "int32_t": 32}[ctype]
            _check_int(values, -(1 << (bits - 1)) + (1 if ctype == "int32_t" else 0), (1 << (bits - 1)) - 1, what)
        k = re.match(r"op(\d+)", name)         # names are op<k>_...: parsed before the prefix is added
        self.arrays.append(Array(ctype, full, values, align, int(k.group(1)) if k else -1, rom))
        return full

    def wtype(self, w: np.ndarray) -> str:
        if self.q.precision == "int8" and (w.size == 0 or (w.min() >= -128 and w.max() <= 127)):
            return "int8_t"
        return "int16_t"

    def matrix(self, m: QMatrix, name: str, what: str) -> tuple[str, str, str, np.ndarray]:
        """Weights + multipliers arrays and the dot function; returns per-row |acc| bounds."""
        w = np.asarray(m.w, dtype=np.int64)
        wt = self.wtype(w)
        wname = self.arr(wt, name, w, f"{what} weights", rom=True)
        mname = self.arr("int32_t", name + "_mult", np.asarray(m.mult, dtype=np.int64), f"{what} multipliers",
                         rom=True)
        bound = np.abs(w).sum(axis=1) * 32768
        # int32 only where proven; otherwise widen (same results, no overflow)
        acc = 32 if m.acc_bits == 32 and int(bound.max(initial=0)) < (1 << 31) else 64
        dot = f"mcunn_dot_s{8 if wt == 'int8_t' else 16}_{acc}"
        return wname, mname, dot, bound

    def check_requant(self, terms: list, bias, what: str) -> None:
        total = np.abs(np.asarray(bias, dtype=np.int64)).astype(object)
        for bound, mult in terms:
            total = total + bound.astype(object) * np.abs(np.asarray(mult, dtype=np.int64)).astype(object)
        if len(total) and max(total) >= _LIMIT62:
            raise McuNnError(f"{what}: requantisation sum may reach 2^62 (multipliers too large for the "
                             "weights); re-quantise with smaller multipliers")

    # ---------------------------------------------------------------- ops
    def recurrent(self, k: int, op) -> dict:
        fp_ = self.fp
        H, S = op.hidden_size, op.state_size
        P = op.proj_size
        L = {"source": op.source or f"op {k}", "kind": op.kind, "H": H, "S": S, "I": op.input_size, "P": P,
             "cell_frac": 0 if fp_ else op.cell_frac, "ids": bool(getattr(op, "input_ids", False))}
        cell = cell_of(op.kind)
        dirs = []
        for d, qd in enumerate(op.directions):
            what = f"{L['source']} direction {d}"
            D = {"d": d, "fn": f"{self.p}_op{k}_d{d}"}
            if fp_:
                rows = qd.w_ih.shape[0]
                D["wx"] = self.arr("float", f"op{k}_d{d}_wx", qd.w_ih, what)
                D["wh"] = self.arr("float", f"op{k}_d{d}_wh", qd.w_hh, what)
                zero = np.zeros(rows, np.float32)
                D["bx"] = self.arr("float", f"op{k}_d{d}_bx", qd.b_ih if qd.b_ih is not None else zero, what)
                D["bh"] = self.arr("float", f"op{k}_d{d}_bh", qd.b_hh if qd.b_hh is not None else zero, what)
                if P:
                    D["wp"] = self.arr("float", f"op{k}_d{d}_wp", qd.w_hr, what)
            else:
                self.fused(op, qd, D, what)
                if P:
                    D["wp"], D["mp"], D["dotp"], bp = self.matrix(qd.proj, f"op{k}_d{d}_wp", what + " projection")
                    D["proj_shift"] = int(qd.proj_shift)
                    self.check_requant([(bp, qd.proj.mult)], np.zeros(P, np.int64), what + " projection")
            D["dsp_kernel"] = "portable" if fp_ else dsp_kernel_of(([] if L["ids"] else [D["dotx"]]) + [D["doth"]])
            D["mve_kernel"] = "portable" if fp_ else mve_kernel_of(([] if L["ids"] else [D["dotx"]]) + [D["doth"]])
            D["v7m_kernel"] = "portable" if fp_ else v7m_kernel_of(([] if L["ids"] else [D["dotx"]]) + [D["doth"]])
            D["v6m_kernel"] = "portable" if fp_ else v6m_kernel_of(([] if L["ids"] else [D["dotx"]]) + [D["doth"]])
            if (D["v6m_kernel"] == "portable" and not fp_ and op.kind in ("lstm", "gru") and D["acc32"]
                    and D["shift"] >= 32 and (op.kind == "gru" or 0 <= L["cell_frac"] <= 15)):
                D["v6m_kernel"] = "mixed"     # the v6m branch (requantisation, cell) around portable dot kernels
            D.update(cell.c_arrays(self, D["fn"][len(self.p) + 1:], qd, what))
            self.kernels.append(self.env.get_template(cell.template).render(L=L, D=D, fp=fp_, vt=self.vt))
            dirs.append(D)
        L["dirs"] = dirs
        kinds = [D["dsp_kernel"] for D in dirs]
        L["dsp_kernel"] = kinds[0] if len(set(kinds)) == 1 else ("mixed" if "portable" in kinds or "mixed" in kinds
                                                                  else "smlad+smlald")
        mk = [D["mve_kernel"] for D in dirs]
        L["mve_kernel"] = mk[0] if len(set(mk)) == 1 else "+".join(sorted({p for k in mk for p in k.split("+")}))
        vk = {D["v7m_kernel"] for D in dirs}
        L["v7m_kernel"] = vk.pop() if len(vk) == 1 else "mixed"
        vk = {D["v6m_kernel"] for D in dirs}
        L["v6m_kernel"] = vk.pop() if len(vk) == 1 else "mixed"
        return L

    def fused(self, op, qd, D: dict, what: str) -> None:
        """The fused gate layout of one integer direction: weight stream, requant records,
        and the names of the group dot-product kernels (portable or SIMD, chosen in C)."""
        cell = cell_of(op.kind)
        R = cell.n_gates
        wx, wh = np.asarray(qd.wx.w, np.int64), np.asarray(qd.wh.w, np.int64)
        both = np.concatenate([wx.reshape(-1), wh.reshape(-1)])
        wide = self.layout == "wide" or self.wtype(both) != "int8_t"
        kind, chunk, ctype = ("s16", 2, "int16_t") if wide else ("s8", 4, "int8_t")
        name = D["fn"][len(self.p) + 1:]
        ids = bool(getattr(op, "input_ids", False))
        stream_wx = wx[:, :0] if ids else wx          # one-hot ids: the input columns are picked, not streamed
        D["w"] = self.arr(ctype, name + "_w", pack_group_weights(stream_wx, wh, R, chunk), what + " weights",
                          align=True, rom=True)
        D["wt"], D["R"] = ctype, R
        if ids:
            D["wcol"] = self.picked_columns(op, wx, R, name, what)
            D["rd_wcol"] = _RD[self.wtype(wx)]
        accs = []
        bounds = []
        for m in (qd.wx, qd.wh):
            bound = np.abs(np.asarray(m.w, np.int64)).sum(axis=1) * 32768
            if ids and m is qd.wx:                    # one weight times the integer 1
                bound = np.abs(wx).max(axis=1, initial=0)
            accs.append(32 if m.acc_bits == 32 and int(bound.max(initial=0)) < (1 << 31) else 64)
            bounds.append(bound)
        D["accx"], D["acch"] = (f"int{a}_t" for a in accs)
        D["dotx"], D["doth"] = (f"mcunn_dot_{kind}_{a}_g{R}" for a in accs)
        D["acc32"] = accs == [32, 32]
        shift = int(qd.shift)
        D["shift"] = shift
        self.check_requant([(bounds[0], qd.wx.mult), (bounds[1], qd.wh.mult)], qd.bias, what)
        H = op.hidden_size
        order = [g * H + u for u in range(H) for g in range(R)]            # group order
        for m in (qd.wx.mult, qd.wh.mult):
            _check_int(np.asarray(m, np.int64), -(1 << 31) + 1, (1 << 31) - 1, what + " multipliers")
        rq = np.stack([fp.rounding_bias(qd.bias, shift), np.asarray(qd.wx.mult, np.int64),
                       np.asarray(qd.wh.mult, np.int64)], axis=1)[order]
        D["rq"] = self.arr(cell.rq_type, name + "_rq", cell.rq_records(rq, qd, H), what + " requantisation",
                           rom=True)

    def picked_columns(self, op, wx: np.ndarray, R: int, name: str, what: str) -> str:
        """W_ih of a one-hot input as a (V, G*H) table in the kernel's group order: row ``id`` holds
        column id of W_ih, unit u's R gate rows at [u * R .. u * R + R - 1]."""
        H = op.hidden_size
        order = [g * H + u for u in range(H) for g in range(R)]
        return self.arr(self.wtype(wx), name + "_wcol", wx[order].T, what + " input columns", rom=True)

    def linear(self, k: int, op) -> dict:
        src = op.source or f"op {k}"
        if self.fp:
            O, I = op.weight.shape
            L = {"source": src, "fn": f"{self.p}_op{k}", "O": O, "I": I,
                 "w": self.arr("float", f"op{k}_w", op.weight, src),
                 "b": self.arr("float", f"op{k}_b", op.bias if op.bias is not None else np.zeros(O, np.float32), src)}
        else:
            O, I = op.mat.w.shape
            w, m, dot, bound = self.matrix(op.mat, f"op{k}_w", src)
            self.check_requant([(bound, op.mat.mult)], op.bias, src)
            L = {"source": src, "fn": f"{self.p}_op{k}", "O": O, "I": I, "w": w, "m": m, "dot": dot,
                 "b": self.arr("int64_t", f"op{k}_b", np.asarray(op.bias, np.int64), src, rom=True),
                 "shift": int(op.shift)}
        self.kernels.append(self.env.get_template("linear.c.j2").render(L=L, fp=self.fp, vt=self.vt))
        return L

    def activation(self, k: int, op, n: int) -> dict:
        L = {"source": op.source or f"op {k}", "fn": f"{self.p}_op{k}", "kind": op.kind, "N": n,
             "mult": 0 if self.fp else int(op.mult), "shift": 0 if self.fp else int(op.shift)}
        if not self.fp and op.kind != "relu" and abs(int(op.mult)) >= (1 << 31):
            raise McuNnError(f"{L['source']}: activation multiplier {op.mult} does not fit int32")
        self.kernels.append(self.env.get_template("activation.c.j2").render(L=L, fp=self.fp, vt=self.vt))
        return L

    def time_op(self, k: int, op, shapes: dict) -> int:
        """The kernel of an op of mcu_nn.ops (templates/ops/); returns its MACs per output step."""
        src = op.source or f"op {k}"
        L = {"source": src, "fn": f"{self.p}_op{k}", "C": shapes[op.inputs[0]].size}
        macs = 0
        if isinstance(op, (Conv1d, QConv1d)):
            O, IG, K = (op.weight if self.fp else op.w).shape
            L.update(O=O, I=op.in_size, IG=IG, OG=O // op.groups, K=K, D=op.dilation, groups=op.groups)
            if self.fp:
                L["w"] = self.arr("float", f"op{k}_w", np.asarray(op.weight).reshape(O, -1), src)
                L["b"] = self.arr("float", f"op{k}_b", op.bias if op.bias is not None else np.zeros(O), src)
            else:
                w = np.asarray(op.w, np.int64)
                L["w"] = self.arr(self.wtype(w), f"op{k}_w", w.reshape(O, -1), src + " weights")
                L["m"] = self.arr("int32_t", f"op{k}_mult", np.asarray(op.mult, np.int64), src + " multipliers")
                L["b"] = self.arr("int64_t", f"op{k}_b", np.asarray(op.bias_q, np.int64), src + " bias")
                L["shift"] = int(op.shift)
                bound = np.abs(w).reshape(O, -1).sum(axis=1) * 32768
                self.check_requant([(bound, op.mult)], op.bias_q, src)
            macs = int(O * IG * K)
        elif isinstance(op, TimePool):
            L.update(kind=op.kind, K=op.kernel)
        elif isinstance(op, TimeReduce):
            L.update(kind=op.kind, mult=int(op.mult), shift=int(op.shift))
        elif isinstance(op, AttentionPool):
            L.update(mult=int(op.exp_mult), shift=int(op.exp_shift))
        L["max_acc"] = 65535
        self.kernels.append(self.env.get_template(op.template).render(L=L, fp=self.fp, vt=self.vt))
        return macs

    def embedding(self, k: int, op) -> dict:
        table = op.weight if self.fp else np.asarray(op.table, np.int64)
        src = op.source or f"op {k}"
        ctype = "float" if self.fp else self.wtype(table)
        V, D = table.shape
        L = {"source": src, "fn": f"{self.p}_op{k}", "V": V, "D": D,
             "table": self.arr(ctype, f"op{k}_table", table, src + " table", rom=not self.fp),
             "rd": _RD.get(ctype, "")}
        self.kernels.append(self.env.get_template("embedding.c.j2").render(L=L, fp=self.fp, vt=self.vt))
        return L


def _is_rec(op) -> bool:
    return isinstance(op, (QRecurrent, Recurrent))


def emit(q: QModel, prefix: Optional[str] = None, weight_layout: str = "packed") -> Emitted:
    """Generate <prefix>.h / <prefix>.c for ``q`` with C prefix ``prefix`` (default: q.name).

    ``weight_layout``: "packed" keeps int8 weights as bytes (the SIMD kernel unpacks them
    with SXTB16); "wide" stores int8 weights as int16 — twice the flash of the recurrent
    weights for fewer instructions per step. int16 weights are always stored as int16."""
    p = prefix or q.name
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p or ""):
        raise McuNnError(f"model name {p!r} is not a C identifier; pass --name with letters, digits and _")
    p = p.lower()
    if p == "mcunn" or p.startswith("mcunn_"):
        raise McuNnError(f"model name {p!r}: the prefix mcunn_ belongs to the runtime; pass another --name")
    b = _Builder(q, p, weight_layout)
    vt = b.vt
    bidir = whole_sequence(q)                  # no _step: the whole-sequence schedule
    tokens = q.input_kind == "tokens"
    in_size = 1 if tokens else q.input_size
    state: list[tuple[str, int]] = []          # (declaration, bytes)

    def member(name: str, n: int, ctype: str = vt) -> str:
        size = {"float": 4, "int16_t": 2, "int32_t": 4, "int64_t": 8}[ctype]
        state.append((f"{ctype} {name}[{n}]", n * size))
        return f"s->{name}"

    # pass 1: kernels, sizes (ops in graph order)
    shapes = tensors(q)
    made = producers(q)
    dims = [in_size]
    max_h = 1
    for k, op in enumerate(q.ops):
        macs, info = 0, {}
        if isinstance(op, (QEmbedding, Embedding)):
            b.embedding(k, op)
        elif _is_rec(op):
            L = b.recurrent(k, op)
            b.unit_info[k] = {"dsp_kernel": L["dsp_kernel"], "mve_kernel": L["mve_kernel"],
                              "v7m_kernel": L["v7m_kernel"], "v6m_kernel": L["v6m_kernel"]}
            max_h = max(max_h, op.hidden_size)
            macs = macs_per_step(op)
        elif isinstance(op, (QLinear, Linear)):
            info = b.linear(k, op)
            macs = info["O"] * info["I"]
        elif isinstance(op, (QActivation, Activation)):
            b.activation(k, op, shapes[op.inputs[0]].size)
        elif isinstance(op, FinalHidden):
            src = made.get(op.inputs[0], (None, None))[1]
            if not _is_rec(src) or any(d not in range(len(src.directions)) for d in op.directions):
                raise McuNnError(f"FinalHidden{op.directions}: no such direction in the recurrent layer it reads")
        elif unit_of(op) is not None:          # an op unit (mcu_nn/ops) renders its own kernel
            ctx = EmitCtx(b, k, f"{p}_op{k}", [shapes[n].size for n in op.inputs], shapes[op.outputs[0]].size)
            b.kernels.append(unit_of(op).render(op, ctx))
            b.unit_info[k] = ctx.info
        elif hasattr(op, "template"):        # an op of mcu_nn.ops with a kernel
            macs = b.time_op(k, op, shapes)
        elif not isinstance(op, (SelectLast, TimeSelect, TimeSlice, TimeFlatten, Repeat)):
            raise McuNnError(f"codegen: unsupported op {type(op).__name__} in model {q.name!r}")
        size = shapes[op.outputs[0]].size
        dims.append(size)
        b.layers.append({**_layer_entry(k, op, q, macs, size), **b.unit_info.get(k, {})})
    main = q.output_names[0]
    if shapes[main].size != q.output_size:
        raise McuNnError(f"model {q.name!r}: ops produce {shapes[main].size} outputs but QModel.output_size is "
                         f"{q.output_size}")
    if bidir and q.max_steps <= 0:
        raise McuNnError(f"model {q.name!r} needs whole sequences but max_steps is {q.max_steps}; set the longest "
                         "sequence")

    # state: recurrent h/c per direction, then what the schedule needs (scratch, accumulators, buffers)
    for k, op in enumerate(q.ops):
        if _is_rec(op):
            cell = cell_of(op.kind)
            for d in range(len(op.directions)):
                for s in cell.states:
                    member(f"op{k}_{s}{d}", cell.state_size(op, s))
    hnew = member("hnew", max_h)
    sch = schedule.build(q, p, vt, b.fp, member, in_size, hnew, max(dims + [1]))

    # _get_state / _set_state copy the recurrent state in ir.state_slots' flat layout
    slots, at = [], 0
    for sl in state_slots(q):
        slots.append({"member": f"op{sl.op_index}_{sl.what}{sl.direction}", "offset": at, "size": sl.size,
                      "doc": f"op {sl.op_index} ({q.ops[sl.op_index].source or q.ops[sl.op_index].kind}) "
                             f"{'reverse' if sl.direction else 'forward'} {sl.what}, scale {sl.scale:g}"})
        at += sl.size
    state_bytes = sum(n for _, n in state)
    fp_ = b.fp
    ctx = dict(
        p=p, P=p.upper(), name=q.name, precision=q.precision, version=__version__, runtime_version=RUNTIME_VERSION,
        ops_summary=", ".join(_op_name(o) for o in q.ops), fp=fp_, vt=vt, tokens=tokens,
        vocab=q.input_size, in_size=in_size, out_size=q.output_size, max_steps=q.max_steps if bidir else 0,
        per_step=q.output_per_step, bidirectional=bidir,
        in_t="float" if fp_ else ("int32_t" if tokens else "int16_t"), out_t="float" if fp_ else "int16_t",
        state=[decl for decl, _ in state], state_bytes=state_bytes, weight_layout=weight_layout,
        slots=slots, state_size=at,
        arrays=b.arrays, kernels=b.kernels, advance=sch.advance, head=sch.head, seq=sch.seq, reset=sch.reset,
        why_whole=sch.why_whole,
        inv_scale=f32_literal(1.0 / q.input_scale) if not tokens and not fp_ else "1.0f",
        out_scale=f32_literal(q.output_scale),
        quant_doc=("identity (float32 model)" if fp_ else "token ids pass through (NaN/out of range -> -1, a zero embedding)"
                   if tokens else f"float -> int16: round(v / {q.input_scale:g}), saturating, NaN -> 0"),
        dequant_doc="identity (float32 model)" if fp_ else f"int16 -> float: v * {q.output_scale:g}",
    )
    env = b.env
    return Emitted(env.get_template("model.h.j2").render(**ctx), env.get_template("model.c.j2").render(**ctx),
                   b.arrays, state_bytes, b.layers)


def _op_name(op) -> str:
    if _is_rec(op):
        return f"{op.kind}{'x2' if op.bidirectional else ''}({op.input_size}->{op.hidden_size})"
    return type(op).__name__.lstrip("Q").lower()


def _layer_entry(k: int, op, q: QModel, macs: int, out_size: int) -> dict:
    e: dict = {"index": k, "kind": type(op).__name__, "source": getattr(op, "source", ""),
               "output_size": int(out_size), "macs_per_step": int(macs)}
    if _is_rec(op):
        e.update(cell=op.kind, input_size=op.input_size, hidden_size=op.hidden_size, proj_size=op.proj_size,
                 bidirectional=op.bidirectional)
        if isinstance(op, QRecurrent):
            e.update(in_scale=op.in_scale, h_scale=op.h_scale, cell_frac=op.cell_frac,
                     shifts=[int(d.shift) for d in op.directions],
                     acc_bits=[[int(d.wx.acc_bits), int(d.wh.acc_bits)] for d in op.directions])
    elif isinstance(op, QLinear):
        e.update(input_size=int(op.mat.w.shape[1]), in_scale=op.in_scale, out_scale=op.out_scale,
                 shift=int(op.shift), acc_bits=int(op.mat.acc_bits))
    elif isinstance(op, Linear):
        e.update(input_size=int(op.weight.shape[1]))
    elif isinstance(op, QActivation):
        e.update(activation=op.kind, in_scale=op.in_scale, out_scale=op.out_scale, mult=int(op.mult),
                 shift=int(op.shift))
    elif isinstance(op, Activation):
        e.update(activation=op.kind)
    elif isinstance(op, (QEmbedding, Embedding)):
        t = op.table if isinstance(op, QEmbedding) else op.weight
        e.update(vocab=int(t.shape[0]), dim=int(t.shape[1]))
        if isinstance(op, QEmbedding):
            e.update(out_scale=op.out_scale)
    elif isinstance(op, FinalHidden):
        e.update(directions=list(op.directions))
    return e
