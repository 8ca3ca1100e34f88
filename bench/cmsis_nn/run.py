"""CMSIS-NN's LSTM kernels on the same emulated cores and with the same method as mcu-nn's bench.

    git clone https://github.com/ARM-software/CMSIS-NN /tmp/CMSIS-NN   # results.json: commit 99f736a
    python bench/cmsis_nn/run.py --cmsis-nn /tmp/CMSIS-NN [--board qemu-mps2-an386 ...]

For each emulated Arm board (mcu_nn.boards rows), kernel (arm_lstm_unidirectional_s16: int16
activations, int8 weights, TFLM's int16x8 LSTM; arm_lstm_unidirectional_s8: int8 activations and
weights) and shape (LSTM I=16 H=32 and I=40 H=64, batch 1, 8 time steps, time-major): seeded
random weights are quantised here (per-tensor symmetric int8 weights, TFLite's scales and
multipliers, see quantise()), written as C constants, compiled with CMSIS-NN's sources
(arm-none-eabi-gcc -O2 and the board's own flags) and the harness (harness.c), linked with
mcu-nn's start-up, board.c and semihosting (the bench firmware's) and run under QEMU -icount.
Prints a Markdown table and writes results.json (format: README.md). No CMSIS-NN source is
copied into this repository.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mcu_nn.bench import ROOT, _model_flash, _parse, run_bench, ticks_to_instructions  # noqa: E402
from mcu_nn.boards import BOARDS  # noqa: E402
from mcu_nn.build import linker_script  # noqa: E402
from mcu_nn.errors import McuNnError  # noqa: E402
from mcu_nn.toolchain import require, run_tool  # noqa: E402

HERE = Path(__file__).resolve().parent
BOARD_ORDER = ["qemu-microbit", "qemu-mps2-an385", "qemu-mps2-an386", "qemu-mps2-an500", "qemu-mps2-an505",
               "qemu-mps3-an547"]
KERNELS = ["arm_lstm_unidirectional_s16", "arm_lstm_unidirectional_s8"]
SHAPES = [(16, 32), (40, 64)]
STEPS = 8
CFLAGS = ["-O2", "-ffunction-sections", "-fdata-sections"]
# the CMSIS-NN sources the two kernels reach (the linker's --gc-sections drops what they do not call)
CMSIS_SOURCES = [
    "Source/LSTMFunctions/arm_lstm_unidirectional_s16.c",
    "Source/LSTMFunctions/arm_lstm_unidirectional_s8.c",
    "Source/NNSupportFunctions/arm_nn_lstm_step_s16.c",
    "Source/NNSupportFunctions/arm_nn_lstm_step_s8.c",
    "Source/NNSupportFunctions/arm_nn_lstm_calculate_gate_s16.c",
    "Source/NNSupportFunctions/arm_nn_lstm_calculate_gate_s8_s16.c",
    "Source/NNSupportFunctions/arm_nn_vec_mat_mul_result_acc_s16.c",
    "Source/NNSupportFunctions/arm_nn_vec_mat_mul_result_acc_s8_s16.c",
    "Source/NNSupportFunctions/arm_nntables.c",
    "Source/ActivationFunctions/arm_nn_activation_s16.c",
    "Source/BasicMathFunctions/arm_elementwise_mul_s16.c",
    "Source/BasicMathFunctions/arm_elementwise_mul_acc_s16.c",
    "Source/BasicMathFunctions/arm_elementwise_mul_s16_batch_offset.c",
    "Source/BasicMathFunctions/arm_elementwise_mul_s16_s8.c",
]
CELL_SCALE_POWER = -11            # cell state in Q4.11 (range +-16), a power of two as TFLite requires
GATE_SCALE = 2.0 ** -12           # gate pre-activations in Q3.12 (the s16 activations' input format)
METHOD = ("instructions_per_step: mean of steps 2..8 of one sequence, each step one call of the kernel with "
          "time_steps=1 from the saved hidden and cell state (ctx.hidden_state non-NULL), timed by two "
          "board_counter_now() reads around the call, minus the reads' own cost (calibration as "
          "mcu_nn/firmware/bench/bench_main.c; ticks -> instructions by mcu_nn.bench.ticks_to_instructions, "
          "QEMU -icount shift=10: exact). in_sequence_instructions_per_step: (one call of 8 steps - one call "
          "of 1 step) / 7, the same steps without the per-call overhead. flash_bytes: .text+.rodata of the "
          "CMSIS-NN symbols linked (code, sigmoid table) + the layer's constants (int8 weights, effective "
          "biases precomputed offline, the params struct); ram_bytes: scratch temp1/temp2, cell and hidden "
          "state, the context struct + stack high-water mark of one call.")


# ---------------------------------------------------------------- quantisation (TFLite's scheme)

def quantize_multiplier(m: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier: m = q * 2^(shift - 31), q a Q31 in [2^30, 2^31)."""
    if m == 0:
        return 0, 0
    frac, shift = math.frexp(m)
    q = int(round(frac * (1 << 31)))
    if q == 1 << 31:
        q //= 2
        shift += 1
    return q, shift


def float_layer(i: int, h: int, seed: int = 0) -> dict:
    """Seeded weights as bench/run.py makes them (uniform +-1/sqrt(H), PyTorch's gate order
    i, f, g, o) and 8 steps of N(0, 1) input."""
    rng = np.random.default_rng(seed)
    k = 1.0 / math.sqrt(h)
    u = lambda *s: rng.uniform(-k, k, s).astype(np.float64)  # noqa: E731
    w_ih, w_hh, b_ih, b_hh = u(4 * h, i), u(4 * h, h), u(4 * h), u(4 * h)
    x = np.random.default_rng(1).normal(0, 1, (STEPS, i))
    return {"w_ih": w_ih, "w_hh": w_hh, "b": b_ih + b_hh, "x": x}


def float_lstm(layer: dict, x: np.ndarray) -> np.ndarray:
    h_dim = layer["w_hh"].shape[1]
    h, c, out = np.zeros(h_dim), np.zeros(h_dim), []
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    for xt in x:
        z = layer["w_ih"] @ xt + layer["w_hh"] @ h + layer["b"]
        ig, fg, gg, og = np.split(z, 4)
        c = sig(fg) * c + sig(ig) * np.tanh(gg)
        h = sig(og) * np.tanh(c)
        out.append(h)
    return np.array(out)


def quantise(layer: dict, kernel: str) -> dict:
    """The C constants of one layer for ``kernel``, with TFLite's quantisation of an LSTM:
    per-tensor symmetric int8 weights; s16: int16 input and hidden state with zero point 0
    (hidden scale 2^-15), s8: asymmetric int8 input (from the data's range) and hidden state
    ([-1, 1]); gate pre-activations in Q3.12, cell state Q4.11; effective biases = bias +
    kernel sums x the input's / hidden state's offset (arm_vector_sum_s8's arithmetic)."""
    s16 = kernel.endswith("s16")
    x = layer["x"]
    h_dim, i_dim = layer["w_hh"].shape[1], layer["w_ih"].shape[1]
    if s16:
        s_x, zp_x = float(np.abs(x).max()) / 32767, 0
        s_h, zp_h = 2.0 ** -15, 0
        xq = np.clip(np.round(x / s_x), -32768, 32767).astype(np.int64)
    else:
        lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
        s_x = (hi - lo) / 255
        zp_x = int(np.clip(round(-128 - lo / s_x), -128, 127))
        s_h = 2.0 / 255
        zp_h = int(np.clip(round(-128 + 1.0 / s_h), -128, 127))
        xq = np.clip(np.round(x / s_x) + zp_x, -128, 127).astype(np.int64)
    gates = {}
    for name, idx in (("forget", 1), ("input", 0), ("cell", 2), ("output", 3)):   # CMSIS-NN's order
        rows = slice(idx * h_dim, (idx + 1) * h_dim)
        g = {}
        for part, w, s_in, zp in (("input", layer["w_ih"][rows], s_x, zp_x),
                                  ("hidden", layer["w_hh"][rows], s_h, zp_h)):
            s_w = float(np.abs(w).max()) / 127
            wq = np.clip(np.round(w / s_w), -127, 127).astype(np.int64)
            g[f"{part}_weights"] = wq
            g[f"{part}_multiplier"] = quantize_multiplier(s_in * s_w / GATE_SCALE)
            kernel_sum = wq.sum(axis=1) * (-zp)                       # lhs_offset = -zero point
            if part == "input":
                g["bias"] = np.round(layer["b"][rows] / (s_in * s_w)).astype(np.int64)
                g["input_effective_bias"] = g["bias"] + kernel_sum
            else:
                g["hidden_effective_bias"] = kernel_sum
        g["activation"] = "ARM_TANH" if name == "cell" else "ARM_SIGMOID"
        gates[name] = g
    cell_scale = 2.0 ** CELL_SCALE_POWER
    return {"s16": s16, "I": i_dim, "H": h_dim, "xq": xq, "s_h": s_h, "zp_h": zp_h, "zp_x": zp_x, "gates": gates,
            # forget gate (sigmoid, Q0.15) x cell -> cell; input gate x cell gate (tanh, Q0.15) -> cell;
            # output gate x tanh(cell) (Q0.15 each) -> hidden state
            "forget_to_cell": quantize_multiplier(2.0 ** -15),
            "input_to_cell": quantize_multiplier(2.0 ** -30 / cell_scale),
            "output": quantize_multiplier(2.0 ** -30 / s_h)}


def _arr(values: np.ndarray) -> str:
    items = [str(int(v)) for v in np.asarray(values).reshape(-1)]
    return "{" + ",\n    ".join(", ".join(items[j:j + 16]) for j in range(0, len(items), 16)) + "}"


def model_sources(q: dict) -> tuple[str, str, str]:
    """cmsis_model.h, cmsis_model.c (the layer's constants: counted as flash) and
    cmsis_input.c (the test sequence: not counted)."""
    s16, i_dim, h_dim = q["s16"], q["I"], q["H"]
    act = "int16_t" if s16 else "int8_t"
    bias_t = "int64_t" if s16 else "int32_t"
    hdr = (f"/* generated by bench/cmsis_nn/run.py */\n#include \"arm_nnfunctions.h\"\n"
           f"#define CMSIS_S16 {1 if s16 else 0}\n#define LSTM_I {i_dim}\n#define LSTM_H {h_dim}\n"
           f"#define LSTM_T {STEPS}\n"
           f"extern const cmsis_nn_lstm_params lstm_params;\nextern const {act} lstm_x[LSTM_T * LSTM_I];\n")
    c = ["/* generated by bench/cmsis_nn/run.py: one LSTM layer's constants */", '#include "cmsis_model.h"']
    gate_init = []
    for name, g in q["gates"].items():
        for part in ("input", "hidden"):
            c.append(f"static const int8_t {name}_{part}_weights[] = {_arr(g[f'{part}_weights'])};")
            c.append(f"static const {bias_t} {name}_{part}_effective_bias[] = {_arr(g[f'{part}_effective_bias'])};")
        (im, ish), (hm, hsh) = g["input_multiplier"], g["hidden_multiplier"]
        gate_init.append(f"    {{{im}, {ish}, {name}_input_weights, {name}_input_effective_bias, {hm}, {hsh}, "
                         f"{name}_hidden_weights, {name}_hidden_effective_bias, NULL, {g['activation']}}}")
    (fm, fs), (im, ish), (om, osh) = q["forget_to_cell"], q["input_to_cell"], q["output"]
    c.append("const cmsis_nn_lstm_params lstm_params = {\n"
             f"    1, 1, 1, {i_dim}, {h_dim}, {-q['zp_x']}, {fm}, {fs}, {im}, {ish}, 32767, {CELL_SCALE_POWER},\n"
             f"    {om}, {osh}, {q['zp_h']},\n" + ",\n".join(gate_init) + "};")
    inp = f'#include "cmsis_model.h"\nconst {act} lstm_x[LSTM_T * LSTM_I] = {_arr(q["xq"])};\n'
    return hdr, "\n".join(c) + "\n", inp


# ---------------------------------------------------------------- build and run

def cmsis_objects(cmsis: Path, board: str, out: Path) -> list[Path]:
    """CMSIS-NN's sources compiled for ``board`` (-O2 + the board's flags), once per board."""
    b = BOARDS[board]
    gcc = require(b.arch.tool("gcc"))
    out.mkdir(parents=True, exist_ok=True)
    objs = []
    for src in CMSIS_SOURCES:
        o = out / (Path(src).stem + ".o")
        if not o.exists():
            run_tool([gcc, *CFLAGS, *b.cflags(), "-I", str(cmsis / "Include"), "-c", str(cmsis / src), "-o", str(o)],
                     f"{gcc} ({board}) of {src}")
        objs.append(o)
    return objs


def check_mve(cmsis: Path, board: str) -> dict:
    """Which CMSIS-NN code path the board's flags select (ARM_MATH_DSP / ARM_MATH_MVEI from
    arm_nn_math_types.h), by preprocessing a probe with the same flags."""
    b = BOARDS[board]
    probe = '#include "arm_nn_math_types.h"\n#ifdef ARM_MATH_MVEI\nMVEI\n#endif\n#ifdef ARM_MATH_DSP\nDSP\n#endif\n'
    r = subprocess.run([require(b.arch.tool("gcc")), *CFLAGS, *b.cflags(), "-I", str(cmsis / "Include"),
                        "-E", "-P", "-x", "c", "-"], input=probe, capture_output=True, text=True)
    if r.returncode:
        raise McuNnError(f"{board}: CMSIS-NN's arm_nn_math_types.h does not preprocess: {r.stderr.strip()[:300]}")
    words = r.stdout.split()
    return {"ARM_MATH_MVEI": "MVEI" in words, "ARM_MATH_DSP": "DSP" in words}


def code_path(flags: dict) -> str:
    return "mve" if flags["ARM_MATH_MVEI"] else "dsp" if flags["ARM_MATH_DSP"] else "c"


def measure(cmsis: Path, board: str, kernel: str, i_dim: int, h_dim: int, work: Path) -> dict:
    b = BOARDS[board]
    gcc = require(b.arch.tool("gcc"))
    layer = float_layer(i_dim, h_dim)
    q = quantise(layer, kernel)
    d = work / board / f"{kernel}_{i_dim}x{h_dim}"
    d.mkdir(parents=True, exist_ok=True)
    hdr, model_c, input_c = model_sources(q)
    (d / "cmsis_model.h").write_text(hdr)
    (d / "cmsis_model.c").write_text(model_c)
    (d / "cmsis_input.c").write_text(input_c)
    objs = cmsis_objects(cmsis, board, work / board / "cmsis")
    inc = ["-I", str(cmsis / "Include"), "-I", str(d), "-I", str(ROOT / "bench"), "-I", str(ROOT / "common")]
    flags = [*CFLAGS, *b.cflags()]
    model_o = d / "cmsis_model.o"
    run_tool([gcc, *flags, *inc, "-c", str(d / "cmsis_model.c"), "-o", str(model_o)], f"{gcc} ({board}) of the model")
    (d / "bench.ld").write_text(linker_script(b))
    elf = d / "bench.elf"
    firmware = [ROOT / b.arch.startup, ROOT / b.arch.semihosting, ROOT / "boards" / b.firmware_dir / "board.c",
                HERE / "harness.c", d / "cmsis_input.c"]
    run_tool([gcc, *flags, *inc, *b.arch.bench_link_flags, "-T", str(d / "bench.ld"), "-Wl,--gc-sections",
              *map(str, firmware), str(model_o), *map(str, objs), "-lm", "-o", str(elf)],
             f"linking the CMSIS-NN bench for {board}")
    text = run_bench(elf, board)
    if "ERROR" in text:
        raise McuNnError(f"{kernel} on {board} returned an error status")
    p = _parse(text)
    instr = lambda ticks: ticks_to_instructions(ticks, board)  # noqa: E731
    u = b.arch.loop_units
    if abs(instr(p.loop2000 - p.loop1000) - 1000 * u) > 0.5:
        raise McuNnError(f"counter check failed on {board}: loops of {1000 * u} instructions apart measured "
                         f"{instr(p.loop2000 - p.loop1000):.1f}")
    run_out, step_out = p.outputs[("R", 0)], p.outputs[("S", 0)]
    if run_out != step_out:
        raise McuNnError(f"{kernel} on {board}: one step a call differs from the whole-sequence call")
    y = np.array(run_out, np.uint16).view(np.int16).astype(np.float64)
    y = ((y - q["zp_h"]) * q["s_h"]).reshape(STEPS, h_dim)
    err = float(np.abs(y - float_lstm(layer, layer["x"])).max())
    m = re.search(r"^SEQ (\d+) (\d+)$", text, re.M)
    if not m:
        raise McuNnError(f"{kernel} on {board}: the harness printed no SEQ line")
    seq = [int(v) for v in m.groups()]
    steady = [instr(t - p.empty) for t in p.steps[1:]]
    figures = _model_flash([model_o, *objs], elf, tuple(o.stem for o in objs))
    return {"instructions_per_step": round(sum(steady) / len(steady)),
            "in_sequence_instructions_per_step": round(instr(seq[1] - seq[0]) / (STEPS - 1)),
            "first_step_instructions": round(instr(p.steps[0] - p.empty)),
            "macs_per_step": 4 * h_dim * (i_dim + h_dim),
            "flash_bytes": figures["shared_runtime_bytes"] + figures["model_constants_bytes"],
            "cmsis_code_bytes": figures["shared_runtime_bytes"],
            "constants_bytes": figures["model_constants_bytes"],
            "ram_bytes": p.state + p.stack, "state_bytes": p.state, "stack_bytes": p.stack,
            "max_abs_error_vs_float": round(err, 4),
            "outputs_sha": hashlib.sha256(bytes(np.array(run_out, np.uint16))).hexdigest()[:16]}


def tool_version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0].strip()
    except (OSError, IndexError):
        return "unknown"


def cmsis_commit(cmsis: Path, given: str | None) -> str:
    if given:
        return given
    r = subprocess.run(["git", "-C", str(cmsis), "rev-parse", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else "unknown (pass --commit)"


def table(results: dict) -> str:
    head = ["core (board)", "CMSIS-NN path", "kernel", "shape", "instr/step", "in-sequence instr/step",
            "instr/MAC", "flash B (code+constants)", "RAM B (state+stack)", "max |err| vs float"]
    rows = []
    for board, r in results["results"].items():
        core = BOARDS[board].arch.core.split(" (")[0]
        for key, f in r.items():
            kernel, shape = key.split(" ")
            rows.append([f"{core} ({board})", f["code_path"], kernel.replace("arm_lstm_unidirectional_", ""), shape,
                         f"{f['instructions_per_step']:,}", f"{f['in_sequence_instructions_per_step']:,}",
                         f"{f['instructions_per_step'] / f['macs_per_step']:.2f}",
                         f"{f['flash_bytes']:,} ({f['cmsis_code_bytes']:,}+{f['constants_bytes']:,})",
                         f"{f['ram_bytes']:,} ({f['state_bytes']}+{f['stack_bytes']})",
                         f"{f['max_abs_error_vs_float']}"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> int:
    try:
        return _main()
    except McuNnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cmsis-nn", type=Path, required=True, metavar="DIR", help="a CMSIS-NN source tree")
    ap.add_argument("--commit", help="its commit, when DIR is not a git checkout")
    ap.add_argument("--board", action="append", choices=BOARD_ORDER, help="only this board (repeatable)")
    ap.add_argument("--out", type=Path, default=HERE / "results.json", help="the JSON to write (default: %(default)s)")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="build here and keep the files")
    a = ap.parse_args()
    cmsis = a.cmsis_nn.resolve()
    if not (cmsis / "Source" / "LSTMFunctions" / "arm_lstm_unidirectional_s16.c").is_file():
        ap.error(f"{cmsis} is not a CMSIS-NN source tree (no Source/LSTMFunctions/arm_lstm_unidirectional_s16.c)")
    boards = [b for b in BOARD_ORDER if not a.board or b in a.board]
    results, cores = {}, {}
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="mcunn-cmsis-") as tmp:
        # --keep: one folder per CMSIS-NN commit, so objects of another tree are never reused
        commit = cmsis_commit(cmsis, a.commit)
        work = (a.keep.resolve() / (commit[:12] if re.fullmatch(r"[0-9a-f]{7,40}", commit) else "unknown-commit")
                if a.keep else Path(tmp))
        for board in boards:
            macros = check_mve(cmsis, board)
            cores[board] = {"core": BOARDS[board].arch.core, "cflags": " ".join(BOARDS[board].cflags()),
                            "code_path": code_path(macros), **macros}
            r = {}
            for kernel in KERNELS:
                for i_dim, h_dim in SHAPES:
                    f = {"code_path": code_path(macros), **measure(cmsis, board, kernel, i_dim, h_dim, work)}
                    r[f"{kernel} {i_dim}x{h_dim}"] = f
                    print(f"{board} {kernel} {i_dim}x{h_dim}: {f['instructions_per_step']:,} instr/step "
                          f"(in sequence {f['in_sequence_instructions_per_step']:,}), flash {f['flash_bytes']:,} B, "
                          f"RAM {f['ram_bytes']:,} B, max |err| {f['max_abs_error_vs_float']}", flush=True)
            results[board] = r
    # every core must compute the same outputs (the C, DSP and MVE paths are bit-exact with each other)
    for key in (f"{k} {i}x{h}" for k in KERNELS for i, h in SHAPES):
        shas = {b: results[b][key]["outputs_sha"] for b in results}
        if len(set(shas.values())) > 1:
            print(f"warning: {key}: outputs differ between cores: {shas}", file=sys.stderr)
    doc = {"cmsis_nn_commit": cmsis_commit(cmsis, a.commit),
           "cmsis_nn_url": "https://github.com/ARM-software/CMSIS-NN",
           "gcc": tool_version(["arm-none-eabi-gcc", "--version"]),
           "qemu": tool_version(["qemu-system-arm", "--version"]),
           "cflags": " ".join(CFLAGS) + " + the board's (mcu_nn.arch)",
           "icount_shift": 10, "time_steps": STEPS, "batch": 1, "method": METHOD,
           "boards": cores, "results": results}
    text = table(doc)
    print("\n" + text)
    a.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nwrote {a.out} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
