#!/usr/bin/env python3
"""Survey: which real-world-style models (tests/realzoo) today's mcu-nn can load.

For every case and every format it saves in, save the model the way its project would and run
``python -m mcu_nn.cli inspect FILE`` (``--allow-pickle`` for pickles, ``--input-shape T,F`` for
TorchScript and pickles), then print a markdown table: case, issue, format, result (OK or the one
error line mcu-nn printed).

    python scripts/zoo_survey.py [--only SUBSTRING ...] [--jobs 2] [--out tests/realzoo/SURVEY.md]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402

import realzoo  # noqa: E402
from realzoo import ZooCase  # noqa: E402


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # tests/ on the path: a pickle needs its class importable, as it would be in the user's project
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _result(proc: subprocess.CompletedProcess) -> str:
    if proc.returncode == 0:
        return "OK"
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()] or ["(no message)"]
    line = lines[-1]
    if not line.startswith("mcu-nn: error:"):
        line = "CRASH: " + line                     # no clean one-line error: an uncaught exception
    elif "Traceback (most recent call last)" in proc.stderr:
        line += " [stderr also carries a traceback logged by torch]"
    return line.replace("|", "\\|")


def inspect(case: ZooCase, fmt: str, path: Path, timeout: float = 600) -> str:
    cmd = [sys.executable, "-m", "mcu_nn.cli", "inspect", str(path)]
    if fmt == "pickle":
        cmd.append("--allow-pickle")
    if fmt != "pt2":
        cmd += ["--input-shape", ",".join(str(d) for d in case.input_shape())]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=ROOT)
    except subprocess.TimeoutExpired:
        return f"TIMEOUT after {timeout:.0f} s"
    return _result(proc).replace(str(path.parent) + os.sep, "")      # stable table: no temp dir names


def survey(cases: list[ZooCase], jobs: int) -> list[tuple[ZooCase, str, str]]:
    with tempfile.TemporaryDirectory(prefix="zoo-survey-") as tmp:
        work = []
        for case in cases:
            for fmt in case.formats:
                path = Path(tmp) / f"{case.name}.{ {'pt2': 'pt2', 'torchscript': 'ts.pt', 'pickle': 'pkl.pt'}[fmt] }"
                try:
                    realzoo.save(case, fmt, path)
                    work.append((case, fmt, path))
                except Exception as e:          # the registry says this format saves: report, don't hide
                    work.append((case, fmt, None))
                    print(f"cannot save {case.name} as {fmt}: {e}", file=sys.stderr)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(
                lambda w: "SAVE FAILED" if w[2] is None else inspect(w[0], w[1], w[2]), work))
            for (case, fmt, _), res in zip(work, results):
                print(f"{case.name:32s} {fmt:12s} {res[:100]}", file=sys.stderr, flush=True)
    return [(c, f, r) for (c, f, _), r in zip(work, results)]


def table(rows: list[tuple[ZooCase, str, str]]) -> str:
    ok = sum(r == "OK" for _, _, r in rows)
    cases_ok = sum(all(r == "OK" for c2, _, r in rows if c2 is c) for c in dict.fromkeys(c for c, _, _ in rows))
    out = ["| case | issue | format | result |", "|---|---|---|---|"]
    out += [f"| {c.name} | {c.issue} | {f} | {r} |" for c, f, r in rows]
    out.append("")
    out.append(f"{ok} of {len(rows)} case/format pairs load; {cases_ok} of {len({c.name for c, _, _ in rows})} "
               f"cases load in every format they save in.")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=[], help="case-name substrings to keep")
    ap.add_argument("--jobs", type=int, default=2, help="inspect processes at once (default 2)")
    ap.add_argument("--out", type=Path, help="also write the table, with a short header, to this file")
    a = ap.parse_args(argv)
    cases = [c for c in realzoo.CASES if not a.only or any(s in c.name for s in a.only)]
    torch.set_num_threads(1)
    md = table(survey(cases, a.jobs))
    print(md)
    if a.out:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        header = (f"# mcu-nn real-world zoo survey\n\n"
                  f"`python scripts/zoo_survey.py --out tests/realzoo/SURVEY.md` at commit {commit}, "
                  f"torch {torch.__version__}. Each case (tests/realzoo) is saved in every format PyTorch can save it "
                  f"in, then `mcu-nn inspect` runs on the file (`--allow-pickle` for pickles, `--input-shape` "
                  f"for TorchScript and pickles). The result is OK or the one error line mcu-nn printed; "
                  f"OK means the file loads and inspects, not yet that the export is correct.\n\n")
        a.out.write_text(header + md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
