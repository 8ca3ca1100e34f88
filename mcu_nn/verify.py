"""``mcu-nn verify``: compile an export on this machine (under ASan/UBSan), run every test
vector through the C and compare with the simulator's expected outputs: zero differing
bits for integer precisions, a stated relative tolerance for float32."""
from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .errors import McuNnError
from .compare import describe_rule, differing, float_tolerance, saturation_line
from .exportdir import open_export, stage_sources, vector_lengths
from .sizes import phrase, split_objects
from .toolchain import find_cc, first_error_line, run_tool, section_sizes
from .results import Shown

RUNTIME_NAME = "mcunn_fixedpoint.c"
_log = logging.getLogger("mcu_nn")

HOST_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1", "-g",
              "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
CROSS_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2", "-mthumb",
               "-mcpu=cortex-m4", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]


@dataclass(repr=False)
class VerifyResult(Shown):
    """What ``verify`` found; ``text()`` is what `mcu-nn verify` prints, ``as_dict()`` its --json."""
    ok: bool
    vectors: int
    mismatches: int
    first_mismatch: str = ""
    max_abs_error: float = 0.0
    sizes: dict = field(default_factory=dict)     # Cortex-M4 objects, model + runtime: {"text", "rodata", "bss", "data"}
    name: str = ""
    precision: str = ""
    steps: int = 0
    modes: list = field(default_factory=list)      # ["run", "step"], or ["run"] for whole-sequence models
    rule: str = ""                                 # what "equal" meant (compare.describe_rule)
    saturation: str = ""                           # the saturation line ("" for float32)
    saturation_counts: dict = field(default_factory=dict)   # manifest saturation.test_vectors
    modified: list = field(default_factory=list)   # files that differ from model.json (--allow-modified)
    breakdown: dict = field(default_factory=dict)  # sizes.split_objects: model code / constants / shared runtime
    export_dir: str = ""

    def lines(self) -> list[str]:
        name, modes = self.name, " and ".join(self.modes)
        what = self.rule + (f"; max abs error {self.max_abs_error:.3g}" if self.precision == "float32" else "")
        out = [f"warning: verifying modified files ({', '.join(self.modified)}), as --allow-modified asks"] \
            if self.modified else []
        if self.ok:
            out += [f"verify {name}: {self.vectors} vectors x {self.steps} steps through {name}_{modes}, "
                   f"host C vs simulator: OK ({what})"]
        else:
            out += [f"verify {name}: FAILED, {self.mismatches} differing outputs; first: {self.first_mismatch}"]
        if self.saturation:
            out.append(self.saturation)
        if self.breakdown:
            out.append("cortex-m4 objects: " + phrase(self.breakdown)
                       + f" (shared runtime = {RUNTIME_NAME}, once per firmware; docs/sizes.md)")
        return out

    def text(self) -> str:
        return "\n".join(self.lines())

    def as_dict(self) -> dict:
        """The --json payload (docs/json.md, verify)."""
        return {"dir": self.export_dir, "name": self.name, "precision": self.precision, "ok": self.ok,
                "vectors": self.vectors, "steps": self.steps, "modes": list(self.modes),
                "mismatches": self.mismatches, "first_mismatch": self.first_mismatch or None,
                "rule": self.rule,
                "max_abs_error": self.max_abs_error if self.precision == "float32" else None,
                "saturation": self.saturation_counts if self.precision != "float32" else None,
                "modified": list(self.modified),
                "sizes": ({"target": "cortex-m4", **self.breakdown, "sections": dict(self.sizes)}
                          if self.sizes else None)}


def _cross_objects(c_files: list[Path], build: Path) -> dict[str, dict[str, int]]:
    """Section sizes of each of the model's C files compiled for Cortex-M4, by object stem
    (.text.* counted as .text, etc.)."""
    out = {}
    for c in c_files:
        obj = build / f"{c.stem}_m4.o"
        run_tool(["arm-none-eabi-gcc", *CROSS_FLAGS, "-I", str(c.parent), "-c", str(c), "-o", str(obj)],
                 "arm-none-eabi-gcc (cortex-m4)", cwd=build)
        sizes = {".text": 0, ".rodata": 0, ".bss": 0, ".data": 0}
        for name, size in section_sizes(obj).items():
            for sec in sizes:
                if name == sec or name.startswith(sec + "."):
                    sizes[sec] += size
        out[c.stem] = {k.lstrip("."): v for k, v in sizes.items()}
    return out


def cross_sizes(c_files: list[Path], build: Path) -> dict:
    """Section sizes of the model's C compiled for Cortex-M4 (.text.* counted as .text, etc.),
    summed over the model's and the runtime's objects."""
    total = {"text": 0, "rodata": 0, "bss": 0, "data": 0}
    for secs in _cross_objects(c_files, build).values():
        for k in total:
            total[k] += secs[k]
    return total


def verify(export_dir: Path, *, cc: Optional[str] = None, cross: bool = True, allow_modified: bool = False,
           log: Callable[[str], None] = print) -> VerifyResult:
    """Compile ``export_dir`` with the host compiler under sanitizers, run all test vectors
    through <name>_run and (unless bidirectional) <name>_step, and compare with ``expected``.
    The export's files must match their sha256 in model.json unless ``allow_modified``."""
    from .codegen.emit import environment

    export_dir = Path(export_dir).resolve()   # the compiler runs in a temp dir
    ex = open_export(export_dir, allow_modified=allow_modified)
    manifest, vec = ex.manifest, ex.vectors
    name, fp32 = manifest["name"], manifest["precision"] == "float32"
    bidir, per_step = not manifest["has_step"], bool(manifest["output_per_step"])
    xq, expected = vec["input_q"], vec["expected"]
    n, steps = xq.shape[0], xq.shape[1]
    fin, fout = int(manifest.get("input_values_per_step", 1 if xq.ndim == 2 else xq.shape[2])), manifest["output_size"]
    in_dt = np.float32 if fp32 else (np.int32 if manifest["input_kind"] == "tokens" else np.int16)
    out_dt = np.float32 if fp32 else np.int16
    compiler = find_cc(cc)
    sizes: dict = {}
    breakdown: dict = {}
    with tempfile.TemporaryDirectory(prefix="mcunn-verify-") as tmp:
        build = Path(tmp)
        c_files = stage_sources(ex, build / "model")
        harness = environment().get_template("harness.c.j2").render(
            p=name, P=name.upper(), bidirectional=bidir, header=manifest["header"])
        (build / "harness.c").write_text(harness)
        exe = build / "harness"
        t0 = time.perf_counter()
        run_tool([compiler, *HOST_FLAGS, "-I", str(build / "model"), str(build / "harness.c"),
                  *map(str, c_files), "-o", str(exe), "-lm"], f"{compiler} (host build of {name})",
                 cwd=build)
        with open(build / "vectors.bin", "wb") as f:
            f.write(np.array([n, steps, fin, fout], np.uint32).tobytes())
            f.write(vector_lengths(vec).astype(np.uint32).tobytes())
            f.write(np.ascontiguousarray(xq.astype(in_dt)).tobytes())
        r = subprocess.run([str(exe), str(build / "vectors.bin"), str(build / "out.bin")],
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise McuNnError(f"C harness of {name} failed (exit {r.returncode}): {first_error_line(r.stderr)}")
        got = np.fromfile(build / "out.bin", dtype=out_dt)
        _log.debug("verify: host build under sanitizers and %d vectors run in %.2f s", n, time.perf_counter() - t0)
        if cross and shutil.which("arm-none-eabi-gcc"):
            t0 = time.perf_counter()
            per_object = _cross_objects(c_files, build)
            sizes = {k: sum(o[k] for o in per_object.values()) for k in ("text", "rodata", "bss", "data")}
            breakdown = split_objects(per_object, manifest["runtime"]["sources"])
            _log.debug("verify: cortex-m4 cross-compile in %.2f s", time.perf_counter() - t0)
    shape = expected.shape
    runs = [("run", got[:expected.size].reshape(shape))]
    if not bidir:
        runs.append(("step", got[expected.size:2 * expected.size].reshape(shape)))
    drift = vec.get("float_drift")
    precision = manifest["precision"]
    mismatches, first, max_err = 0, "", 0.0
    for mode, out in runs:
        bad = differing(out, expected, precision, drift)
        if fp32:
            max_err = max(max_err, float(np.abs(out.astype(np.float64) - expected).max(initial=0.0)))
        mismatches += int(bad.sum())
        if bad.any() and not first:
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            where = (f"vector {idx[0]}, step {idx[1]}, output {idx[2]}" if per_step
                     else f"vector {idx[0]}, output {idx[1]}")
            tol = f" (allowed {float(float_tolerance(expected, drift)[idx]):.3g})" if fp32 else ""
            first = f"{where}: expected {expected[idx]}, got {out[idx]} ({name}_{mode}){tol}"
    ok = mismatches == 0
    result = VerifyResult(ok, n, mismatches, first, max_err, sizes, name=name, precision=precision, steps=steps,
                          modes=["run"] + ([] if bidir else ["step"]), rule=describe_rule(precision, drift),
                          saturation="" if fp32 else saturation_line(
                              manifest, "test_vectors", f"on these {n} vectors (simulator; the C computed the same bits)"),
                          saturation_counts=dict(manifest.get("saturation", {}).get("test_vectors") or {}),
                          modified=list(ex.modified), breakdown=breakdown, export_dir=str(export_dir))
    for line in result.lines():
        log(line)
    return result
