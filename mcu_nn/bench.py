"""``mcu-nn bench``: instructions per time step, per MAC, flash and RAM of an export.

The export is linked into a small bench firmware (``firmware/bench``) with the board's own
start-up, ``board.c`` (its counter, read through ``board.h``) and its architecture's
semihosting, and run by the board's emulator row at its bench shift (QEMU ``-icount
shift=10``: every instruction is 1024 ns of virtual time, so a timer of known frequency
counts instructions; on the MPS2 boards a 25 MHz tick is 0.04 instruction and rounding is
exact). The firmware also prints every test vector's outputs, which must equal the simulator's bit for
bit (float32: within verify's tolerance) or the bench fails: a figure is only reported for
code that computes the right thing.

Figures: steady-state instructions per step = mean over steps 1..T-1 of test vector 0 (not
the first step: state is non-zero, inputs are real), minus the measured cost of reading the
timer; model code, model constants and shared runtime (docs/sizes.md) = .text and .rodata of the
symbols the model's and the runtime's .c define, from the linked ELF (their sum: ``flash_bytes``); RAM =
sizeof(state) + stack high-water mark of a step (painted stack).
"""
from __future__ import annotations

import logging
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional

import numpy as np

from .boards import BOARDS as ALL_BOARDS, Board
from .build import linker_script
from .elfsize import defined_symbols
from .errors import McuNnError
from .exportdir import Export, compile_sources, full_length_vectors, open_export, stage_sources
from .launch import run_to_end
from .toolchain import require, run_tool
from .compare import differing
from .results import Shown

ROOT = Path(__file__).resolve().parent / "firmware"
FIRMWARE = ROOT / "bench"
STARTUP = ROOT / "common" / "cortexm_startup.c"    # the Cortex-M boards' own start-up
ICOUNT_SHIFT = 10                 # the emulator rows' bench shift (mcu_nn/boards.py)
_log = logging.getLogger("mcu_nn")


# The emulated rows of the board table: the bench runs where an emulator counts instructions.
BOARDS = {name: b for name, b in ALL_BOARDS.items() if b.emulated and b.arch.semihosting}
CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2",
          "-ffunction-sections", "-fdata-sections"]


@dataclass(repr=False)
class BenchResult(Shown):
    name: str
    precision: str
    board: str
    path: str                     # "simd" (DSP), "mve" (Helium), "v7m" (Cortex-M3), "v6m" (Cortex-M0), "portable", "mixed": kernel_path
    instructions_per_step: int
    macs_per_step: int
    instructions_per_mac: float
    flash_bytes: int
    ram_bytes: int
    state_bytes: int
    stack_bytes: int
    weight_layout: str
    vectors_checked: int
    unit: str = "instructions"    # what instructions_per_step counts: "cycles" on a cycle-exact emulator
    # flash_bytes in the size vocabulary (docs/sizes.md): model code + model constants + shared runtime
    model_code_bytes: int = 0
    model_constants_bytes: int = 0
    shared_runtime_bytes: int = 0
    # float inputs (integer streaming models; 0 where not measured): steady-state <name>_step_f32,
    # the step with its input quantised inside, and one step's input quantised element by element
    # with <name>_quantize_input (an application's loop)
    instructions_per_step_f32: int = 0
    quantize_input_instructions: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        """The table `mcu-nn bench` prints for this one result."""
        return bench_text([self])


def _board(board: str) -> Board:
    if board not in BOARDS:
        raise McuNnError(f"mcu-nn bench runs on the emulated boards ({', '.join(BOARDS)}); for {board!r} use "
                         "mcu-nn serial-test, whose summary reports the chip's cycles per step")
    return BOARDS[board]


def _c_array(values: np.ndarray, ctype: str) -> str:
    flat = values.reshape(-1)
    if ctype == "float":      # NaN and inf have no C literal: constant expressions (C99 6.6, IEEE 754)
        items = ["(0.0f/0.0f)" if np.isnan(v) else ("(1.0f/0.0f)" if v > 0 else "(-1.0f/0.0f)") if np.isinf(v)
                 else "%.9ef" % float(v) for v in flat.astype(np.float32)]
    else:
        items = [str(int(v)) for v in flat]
    rows = [", ".join(items[i:i + 16]) for i in range(0, len(items), 16)]
    return "{\n    " + ",\n    ".join(rows or ["0"]) + "\n}"


def _vectors_header(manifest: dict, xq: np.ndarray, xf: Optional[np.ndarray] = None) -> str:
    """bench_vectors.h; with ``xf`` (the float inputs) also the float-input step's macros."""
    p = manifest["name"]
    n, t = int(xq.shape[0]), int(xq.shape[1])
    fin = int(manifest.get("input_values_per_step", 1))
    ctype = manifest["in_ctype"]
    bidir = not manifest["has_step"]
    step = "" if bidir else f"#define BENCH_STEP {p}_step\n"
    return (f"/* generated by mcu-nn bench: {n} test vectors of {t} steps for {p} */\n"
            f'#include "{manifest["header"]}"\n'
            f"#define BENCH_N {n}u\n#define BENCH_T {t}u\n#define BENCH_IN_SIZE {fin}u\n"
            f"#define BENCH_OUT_SIZE {int(manifest['output_size'])}u\n"
            f"#define BENCH_PER_STEP {1 if manifest['output_per_step'] else 0}\n"
            f"#define BENCH_BIDIR {1 if bidir else 0}\n"
            f"#define BENCH_FLOAT {1 if manifest['precision'] == 'float32' else 0}\n"
            f"#define BENCH_STATE_T {p}_state_t\n#define BENCH_IN_T {p}_in_t\n#define BENCH_OUT_T {p}_out_t\n"
            f"#define BENCH_RESET {p}_reset\n#define BENCH_RUN {p}_run\n{step}"
            f"static const BENCH_IN_T BENCH_ROM bench_x[] = {_c_array(xq, ctype)};\n"
            + ("" if xf is None else
               f"#define BENCH_STEP_F32 {p}_step_f32\n#define BENCH_QUANTIZE {p}_quantize_input\n"
               f"static const float bench_xf[] = {_c_array(xf, 'float')};\n"))


def has_step_f32(ex: Export) -> bool:
    """The export's model header declares <name>_step_f32 (integer streaming models with float
    inputs, exported by this mcu-nn or a later one)."""
    header = ex.dir / ex.manifest["header"]
    return header.is_file() and f"void {ex.manifest['name']}_step_f32(" in header.read_text()


def build_bench(export_dir: Path | Export, board: str, build_dir: Path, *, portable: bool = False,
                vectors: Optional[int] = None) -> Path:
    """Link the export with the bench firmware for ``board``; returns the ELF. ``portable``
    compiles the portable C kernels (MCUNN_PORTABLE) instead of the SIMD ones."""
    b = _board(board)
    gcc = require(b.arch.tool("gcc"))
    ex = export_dir if isinstance(export_dir, Export) else open_export(Path(export_dir))
    export_dir = ex.dir
    manifest, vec = ex.manifest, ex.vectors
    xq = vec["input_q"]
    if vectors is not None:
        xq = xq[:vectors]
    if xq.shape[1] < 2:
        raise McuNnError(f"{export_dir}: test vectors have {xq.shape[1]} step(s); the bench needs at least 2 "
                         "(steady state excludes the first step) — re-export with a longer --input-shape")
    build_dir.mkdir(parents=True, exist_ok=True)
    xf = None
    if "input" in vec and b.arch.toolchain_prefix != "avr-" and has_step_f32(ex):
        xf = vec["input"][:xq.shape[0]].astype(np.float32)
    (build_dir / "bench_vectors.h").write_text(_vectors_header(manifest, xq, xf))
    flags = [*CFLAGS, *b.cflags(), *(["-DMCUNN_PORTABLE"] if portable and (b.arch.dsp or b.arch.v7m or b.arch.v6m) else [])]
    c_files = stage_sources(ex, build_dir / "model")
    inc = ["-I", str(build_dir / "model"), "-I", str(FIRMWARE), "-I", str(ROOT / "common"), "-I", str(build_dir)]
    for c in c_files:
        run_tool([gcc, *flags, *inc, "-c", str(c), "-o", str(build_dir / f"{c.stem}.o")],
                 f"{gcc} ({b.cpu}) of {export_dir}/{c.name}", cwd=build_dir)
    elf = build_dir / "bench.elf"
    link = [*b.arch.link_flags]       # AVR: the toolchain's own start-up and linker script
    if b.arch.linker_template:
        (build_dir / "bench.ld").write_text(linker_script(b))
        link = [*b.arch.bench_link_flags, "-T", str(build_dir / "bench.ld")]
    firmware = [*([ROOT / b.arch.startup] if b.arch.startup else []), ROOT / b.arch.semihosting,
                ROOT / "boards" / b.firmware_dir / "board.c", FIRMWARE / "bench_main.c"]
    run_tool([gcc, *flags, *inc, *link, "-Wl,--gc-sections", *map(str, firmware),
              *(str(build_dir / f"{c.stem}.o") for c in c_files), "-lm", "-o", str(elf)],
             f"linking the bench firmware for {board}",
             cwd=build_dir)
    return elf


def run_bench(elf: Path, board: str, timeout: float = 300) -> str:
    """Boot ``elf`` on the board's emulator at its bench shift; returns what the firmware printed."""
    return run_to_end(_board(board), elf, timeout=timeout)


def ticks_to_instructions(ticks: float, board: str = "qemu-mps2-an386") -> float:
    """Counter ticks of ``board`` -> instructions at its emulator's bench shift (not rounded);
    a cycle-exact emulator's cycle counter (AVR under simavr) -> cycles."""
    b = _board(board)
    if b.counter == "cycles":
        return float(Fraction(ticks) * Fraction(b.clock_hz, b.counter_hz))
    return b.emulator.instructions(ticks, b.counter_hz, b.emulator.bench_shift)


def _unit(board: str) -> str:
    return "cycles" if _board(board).counter == "cycles" else "instructions"


@dataclass
class _Parsed:
    empty: int
    loop1000: int
    loop2000: int
    outputs: dict                 # ("R"|"S", vector) -> list[int] (raw bits)
    steps: list[int]
    run: Optional[int]
    stack: int
    state: int
    fsteps: list[int]             # <name>_step_f32 (float inputs), when the firmware has it
    qsteps: list[int]             # one step's input through <name>_quantize_input, element by element


def _parse(text: str) -> _Parsed:
    if "FAULT" in text:
        raise McuNnError("the bench firmware hit a CPU fault; the export does not run on this core")
    if "END" not in text:
        raise McuNnError("the bench firmware stopped before printing its results (no END line)")
    cal = re.search(r"CAL empty (\d+) loop1000 (\d+) loop2000 (\d+)", text)
    st = re.search(r"STACK (\d+) STATE (\d+)", text)
    if not cal or not st:
        raise McuNnError("the bench firmware printed no calibration/stack line; rebuild it")
    outputs = {}
    for m in re.finditer(r"^([RSF]) (\d+)((?: [0-9a-f]+)*)$", text, re.M):
        outputs[(m.group(1), int(m.group(2)))] = [int(v, 16) for v in m.group(3).split()]
    steps = re.search(r"^STEPS((?: \d+)+)$", text, re.M)
    run = re.search(r"^RUN (\d+)$", text, re.M)
    fsteps = re.search(r"^FSTEPS((?: \d+)+)$", text, re.M)
    qsteps = re.search(r"^QSTEPS((?: \d+)+)$", text, re.M)
    return _Parsed(int(cal.group(1)), int(cal.group(2)), int(cal.group(3)), outputs,
                   [int(v) for v in steps.group(1).split()] if steps else [],
                   int(run.group(1)) if run else None, int(st.group(1)), int(st.group(2)),
                   [int(v) for v in fsteps.group(1).split()] if fsteps else [],
                   [int(v) for v in qsteps.group(1).split()] if qsteps else [])


def _check_outputs(p: _Parsed, manifest: dict, expected: np.ndarray, n: int,
                   drift: Optional[np.ndarray] = None) -> None:
    fp32 = manifest["precision"] == "float32"
    modes = ["R", "S"] if manifest["has_step"] else ["R"]
    if any(k[0] == "F" for k in p.outputs):
        modes.append("F")                      # <name>_step_f32 on the float inputs
    for i in range(n):
        want = expected[i].reshape(-1)
        for mode in modes:
            raw = p.outputs.get((mode, i))
            if raw is None or len(raw) != want.size:
                raise McuNnError(f"bench firmware printed no outputs for vector {i} ({mode}); rebuild it")
            if fp32:
                got = np.array(raw, np.uint32).view(np.float32).astype(np.float64)
            else:
                got = np.array(raw, np.uint16).view(np.int16)
            bad = differing(got[None], want[None], manifest["precision"],
                            None if drift is None else drift[i:i + 1])[0]
            if bad.any():
                j = int(np.argmax(bad))
                fn = {"R": "run", "S": "step", "F": "step_f32"}[mode]
                raise McuNnError(f"{manifest['name']}_{fn} on the board differs from the simulator: vector {i}, "
                                 f"output {j}: expected {want[j]}, got {got[j]}; the kernels are wrong for this "
                                 "model (please report it)")


def _model_flash(objects: list[Path], elf: Path, runtime: tuple[str, ...] = ()) -> dict[str, int]:
    """.text + .rodata bytes of the symbols the export's objects (model and runtime) define
    that survive in the linked ELF, as the size vocabulary's model code (model objects' text),
    model constants (their rodata) and shared runtime (the objects of ``runtime`` stems):
    their sum is the bench's ``flash_bytes`` (pyelftools, as nm would list them)."""
    kinds: dict[str, str] = {}               # symbol -> figure; the model's objects first
    for obj in sorted(objects, key=lambda o: o.stem in runtime):
        for sym in defined_symbols(obj):
            if sym.kind in "tTrR":
                kinds.setdefault(sym.name, "shared_runtime_bytes" if obj.stem in runtime else
                                 "model_code_bytes" if sym.kind in "tT" else "model_constants_bytes")
    total = {"model_code_bytes": 0, "model_constants_bytes": 0, "shared_runtime_bytes": 0}
    for sym in defined_symbols(elf):
        if sym.kind in "tTrR" and sym.name in kinds:
            total[kinds[sym.name]] += sym.size
    return total


def bench_export(export_dir: Path, board: str = "qemu-mps2-an386", *, portable: bool = False,
                 build_dir: Optional[Path] = None, vectors: Optional[int] = None,
                 allow_modified: bool = False) -> BenchResult:
    """Build, run and measure one export on an emulated board (see the module docstring)."""
    export_dir = Path(export_dir).resolve()   # the compiler runs in a temp dir
    ex = open_export(export_dir, allow_modified=allow_modified)
    ex.vectors = full_length_vectors(ex.vectors)      # one sequence length in the firmware
    manifest, vec = ex.manifest, ex.vectors
    with tempfile.TemporaryDirectory(prefix="mcunn-bench-") as tmp:
        bdir = Path(build_dir) if build_dir else Path(tmp)
        t0 = time.perf_counter()
        elf = build_bench(ex, board, bdir, portable=portable, vectors=vectors)
        t1 = time.perf_counter()
        p = _parse(run_bench(elf, board))
        _log.debug("bench: firmware built in %.2f s, run on %s in %.2f s", t1 - t0, board, time.perf_counter() - t1)
        objects = [bdir / f"{Path(c).stem}.o" for c in compile_sources(manifest)]
        runtime = tuple(Path(c).stem for c in manifest["runtime"]["sources"])
        figures = _model_flash(objects, elf, runtime)
        flash = sum(figures.values())
    n = vec["input_q"].shape[0] if vectors is None else min(vectors, vec["input_q"].shape[0])
    _check_outputs(p, manifest, vec["expected"], n, vec.get("float_drift"))
    instr = lambda ticks: ticks_to_instructions(ticks, board)  # noqa: E731
    # loops of 1000 and 2000 iterations of u units (2 instructions; AVR: 4 cycles) between the
    # same counter reads: they must differ by exactly 1000 u (the conversion is exact), and each
    # exceed the empty region by 1000 u / 2000 u plus at most the few units that set up the loop
    # (AVR: less 1, the last brne not taken)
    u = _board(board).arch.loop_units
    diff = instr(p.loop2000 - p.loop1000)
    if abs(diff - 1000 * u) > 0.5 or not all(-1 <= round(instr(t - p.empty)) - n <= 4 * u
                                             for n, t in ((1000 * u, p.loop1000), (2000 * u, p.loop2000))):
        raise McuNnError(f"counter check failed on {board}: loops of {1000 * u} and {2000 * u} "
                         f"{_unit(board)} measured {instr(p.loop1000 - p.empty):.1f} and "
                         f"{instr(p.loop2000 - p.empty):.1f}; is the emulator running with -icount, "
                         "and the row's counter_hz right?")
    steps = int(vec["input_q"].shape[1])
    if p.steps:
        steady = [instr(t - p.empty) for t in p.steps[1:]]
        per_step = round(sum(steady) / len(steady))
    else:                                          # bidirectional: whole sequence / steps
        per_step = round(instr(p.run - p.empty) / steps)
    macs = int(manifest["macs_per_step"])
    steady = lambda ticks: round(sum(instr(t - p.empty) for t in ticks[1:]) / (len(ticks) - 1))  # noqa: E731
    f32 = {"instructions_per_step_f32": steady(p.fsteps) if len(p.fsteps) > 1 else 0,
           "quantize_input_instructions": steady(p.qsteps) if len(p.qsteps) > 1 else 0}
    return BenchResult(manifest["name"], manifest["precision"], board, kernel_path(manifest, board, portable),
                       per_step, macs, round(per_step / macs, 3) if macs else 0.0, flash,
                       p.state + p.stack, p.state, p.stack, manifest.get("weight_layout", "packed"), n,
                       _unit(board), **figures, **f32)


def kernel_path(manifest: dict, board: str, portable: bool = False) -> str:
    """The kernels that ran: "simd" only when every recurrent layer runs a DSP kernel on ``board``
    (manifest layers[i]["dsp_kernel"], decided by the export from the same condition as the C),
    "portable" when none does, else "mixed"; "mve" instead of "simd" on a Helium core when every
    layer's int8 group kernels are the MVE ones (layers[i]["mve_kernel"]). Manifests from before
    dsp_kernel: simd on a DSP core. On an ARMv7-M core without DSP (Cortex-M3): "v7m" when every
    recurrent layer runs the MLA kernels (layers[i]["v7m_kernel"]), "portable" when none does (and
    for manifests from before v7m_kernel), else "mixed"; on an ARMv6-M core (Cortex-M0/M0+) the
    same with "v6m" (layers[i]["v6m_kernel"]: the LDRSB + MULS kernels)."""
    arch = ALL_BOARDS[board].arch
    if portable or manifest["precision"] == "float32" or not (arch.dsp or arch.v7m or arch.v6m):
        return "portable"
    if not arch.dsp:
        key = "v7m" if arch.v7m else "v6m"
        ks = [layer.get(f"{key}_kernel", "portable") for layer in manifest.get("layers", []) if "dsp_kernel" in layer]
        if ks and all(k == key for k in ks):
            return key
        return "portable" if all(k == "portable" for k in ks) else "mixed"
    kinds = [layer["dsp_kernel"] for layer in manifest.get("layers", []) if "dsp_kernel" in layer]
    if all(k not in ("portable", "mixed") for k in kinds):
        # Helium cores: "mve" when every recurrent layer runs the MVE kernel (layers[i].mve_kernel)
        mve = [layer.get("mve_kernel", "") for layer in manifest.get("layers", []) if "dsp_kernel" in layer]
        if "mve" in ALL_BOARDS[board].arch.features and mve and all("mve" in k.split("+") for k in mve):
            return "mve"
        return "simd"
    return "portable" if all(k == "portable" for k in kinds) else "mixed"


def format_table(results: list[BenchResult]) -> str:
    head = ["model", "precision", "board", "kernels", "instr/step", "MACs/step", "instr/MAC",
            "model code B", "model constants B", "shared runtime B", "RAM B (state+stack)"]
    if results and all(r.unit == "cycles" for r in results):
        head[4], head[6] = "cycles/step", "cycles/MAC"
    rows = [[r.name, r.precision, r.board, r.path, f"{r.instructions_per_step:,}", f"{r.macs_per_step:,}",
             f"{r.instructions_per_mac:.2f}", f"{r.model_code_bytes:,}", f"{r.model_constants_bytes:,}",
             f"{r.shared_runtime_bytes:,}", f"{r.ram_bytes:,} ({r.state_bytes}+{r.stack_bytes})"]
            for r in results]
    if any(r.instructions_per_step_f32 for r in results):
        # float inputs: <name>_step_f32 (step + input quantisation) and <name>_quantize_input per element
        unit = "cycles" if head[4].startswith("cycles") else "instr"
        head[5:5] = [f"float-input step {unit}", f"quantize_input {unit}/step"]
        for r, row in zip(results, rows):
            row[5:5] = [f"{r.instructions_per_step_f32:,}" if r.instructions_per_step_f32 else "-",
                        f"{r.quantize_input_instructions:,}" if r.quantize_input_instructions else "-"]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    fmt = lambda cells: "  ".join(str(c).rjust(w) if i >= 4 else str(c).ljust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


JSON_KEYS = ["instructions_per_step", "macs_per_step", "instructions_per_mac", "flash_bytes", "ram_bytes", "board"]


def bench_payload(results: list[BenchResult]) -> dict:
    """The --json payload (docs/json.md, bench): ``{"models": [one object per result]}``, the
    figures a CI job compares first."""
    models = []
    for r in results:
        d = r.as_dict()
        models.append({**{k: d[k] for k in JSON_KEYS}, **{k: v for k, v in d.items() if k not in JSON_KEYS}})
    return {"models": models}


def bench_text(results: list[BenchResult]) -> str:
    """The table `mcu-nn bench` prints, with how the figures were measured."""
    lines = [format_table(results)]
    for board in dict.fromkeys(r.board for r in results):
        e = BOARDS[board].emulator
        unit = {r.unit for r in results if r.board == board}
        how = f"{e.label}: cycles exact" if unit == {"cycles"} else \
            f"{e.label} -icount shift={e.bench_shift}: instructions exact"
        checked = ", ".join(str(r.vectors_checked) for r in results if r.board == board)
        lines.append(f"({how}; steady state = mean of steps 2..T of test vector 0; RAM = model state + stack "
                     f"of one step; model code, model constants and shared runtime as linked (docs/sizes.md); "
                     f"outputs of {checked} vectors bit-exact)")
    return "\n".join(lines)


def bench_command(export_dir: Path, board: str, *, as_json: bool = False, allow_modified: bool = False) -> int:
    """``mcu-nn bench DIR --board B [--json]`` as a function: measure, then print the table or
    one JSON object (the envelope of mcu_nn.jsonout)."""
    from .jsonout import dumps
    r = bench_export(Path(export_dir), board, allow_modified=allow_modified)
    print(dumps("bench", bench_payload([r])) if as_json else bench_text([r]))
    return 0
