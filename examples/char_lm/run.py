"""A character language model that writes on the chip: d2l.ai's chapter-8 RNNModel (one-hot ->
GRU -> Linear per step, forward(inputs, state)) trained on the Python documentation text that
CPython itself ships (Lib/pydoc_data/topics.py, PSF licence: no download), exported at float32,
int16 and int8, and compared: held-out perplexity and greedy text against PyTorch's float model,
then `mcu-nn generate` on the emulated Cortex-M4. Run:  python examples/char_lm/run.py
(about 2.5 minutes on 2 cores shared with other jobs; --quick for a smoke run)."""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

try:
    import mcu_nn  # noqa: F401
except ImportError:
    raise SystemExit("the examples need mcu-nn importable: from the repository root run "
                     "pip install -e '.[examples]'") from None

from mcu_nn.pipeline import export_model
from mcu_nn.fixedpoint import dequantize
from mcu_nn.generate import decode, encode, simulate_generation
from mcu_nn.sim import run

HERE = Path(__file__).resolve().parent
KEEP = "abcdefghijklmnopqrstuvwxyz0123456789 .,:;()'\"-_=*[]"   # everything else becomes a space
PREFIX = "the value of "
GREEDY_N = 200


def corpus() -> str:
    """The prose of CPython's pydoc topics (code and grammar blocks are indented: dropped),
    lower-cased, other characters -> space, runs of spaces collapsed."""
    from pydoc_data.topics import topics
    lines = [ln for key in sorted(topics) for ln in topics[key].splitlines()
             if ln.strip() and not ln.startswith(" ") and not set(ln.strip()) <= set("*=-")]
    text = " ".join(lines).lower()
    text = "".join(c if c in KEEP else " " for c in text)
    return re.sub(" +", " ", text)


class RNNModel(nn.Module):
    """d2l.ai 8.6 (concise): one-hot of inputs.T inside forward, time-major GRU, flat (T*N, V) logits."""

    def __init__(self, vocab_size: int, hidden: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.rnn = nn.GRU(vocab_size, hidden)
        self.linear = nn.Linear(hidden, vocab_size)

    def forward(self, inputs, state):
        X = F.one_hot(inputs.T.long(), self.vocab_size).to(torch.float32)
        Y, state = self.rnn(X, state)
        return self.linear(Y.reshape((-1, Y.shape[-1]))), state

    def begin_state(self, batch_size: int = 1) -> torch.Tensor:
        return torch.zeros((1, batch_size, self.rnn.hidden_size))


def train(model: RNNModel, ids: np.ndarray, *, steps: int, seq: int, batch: int, seed: int) -> None:
    """Random windows, truncated BPTT of ``seq`` steps, Adam, gradient clipping (as d2l does)."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    data = torch.from_numpy(ids)
    for it in range(steps):
        starts = torch.from_numpy(rng.integers(0, len(ids) - seq - 1, batch))
        x = torch.stack([data[s:s + seq] for s in starts])
        y = torch.stack([data[s + 1:s + seq + 1] for s in starts])
        logits, _ = model(x, model.begin_state(batch))
        loss = F.cross_entropy(logits, y.T.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if (it + 1) % max(1, steps // 5) == 0:
            print(f"  step {it + 1}/{steps}: train perplexity {np.exp(loss.item()):.2f}")
    model.eval()


def perplexity(logits: np.ndarray, targets: np.ndarray) -> float:
    """exp(mean cross-entropy) of next-character logits (N, T, V) against targets (N, T)."""
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(np.exp(-np.take_along_axis(logp, targets[..., None], -1).mean()))


def torch_logits(model: RNNModel, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        y, _ = model(torch.from_numpy(x), model.begin_state(len(x)))
    return y.numpy().reshape(x.shape[1], x.shape[0], -1).transpose(1, 0, 2)      # (T*N, V) -> (N, T, V)


def torch_greedy(model: RNNModel, prefix: list[int], n: int) -> list[int]:
    """d2l's predict_ch8: warm up on the prefix, then feed back the argmax (ties: lowest id)."""
    state, out = model.begin_state(1), []
    with torch.no_grad():
        for t in prefix:
            y, state = model(torch.tensor([[t]]), state)
        for _ in range(n):
            out.append(int(y[0].argmax()))
            y, state = model(torch.tensor([[out[-1]]]), state)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=HERE / "build")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--steps", type=int, default=700, help="training batches of 32 x 64 characters (default 700)")
    ap.add_argument("--no-board", action="store_true", help="skip the emulated board (simulator only)")
    ap.add_argument("--quick", action="store_true", help="smoke run: hidden 32, 40 batches, a short held-out set")
    a = ap.parse_args(argv)
    start = time.monotonic()
    torch.manual_seed(0)                # model initialisation; training and sampling seed their own
    np.random.seed(0)
    torch.set_num_threads(2)            # a fixed thread count: the same sums in the same order every run
    torch.use_deterministic_algorithms(True, warn_only=True)
    if a.quick:
        a.hidden, a.steps = 32, 40
    text = corpus()
    tokens = sorted(set(text))
    ids = np.array(encode(text, tokens), np.int64)
    cut = int(len(ids) * 0.9)
    train_ids, held = ids[:cut], ids[cut:]
    print(f"corpus: CPython's pydoc_data/topics.py prose, {len(text):,} characters, vocabulary of "
          f"{len(tokens)}: {''.join(tokens)!r}; held out the last 10%")

    model = RNNModel(len(tokens), a.hidden)
    print(f"== train one-hot({len(tokens)}) -> GRU({a.hidden}) -> Linear({len(tokens)}), {a.steps} batches of 32 x 64")
    train(model, train_ids, steps=a.steps, seq=64, batch=32, seed=0)
    print(f"   trained in {time.monotonic() - start:.0f} s")

    a.out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(model, (torch.zeros(1, 64, dtype=torch.long), model.begin_state(1)))
    torch.export.save(ep, str(a.out / "char_lm.pt2"))
    rng = np.random.default_rng(1)
    calib = np.stack([train_ids[s:s + 128] for s in rng.integers(0, cut - 129, 32)])
    np.savez(a.out / "calib.npz", x=calib, state=np.zeros((32, 1, a.hidden), np.float32))

    seq_len = 64 if a.quick else 256
    rows = min(len(held) // (seq_len + 1), 4 if a.quick else 16)
    x = np.stack([held[i * (seq_len + 1):i * (seq_len + 1) + seq_len] for i in range(rows)])
    y = np.stack([held[i * (seq_len + 1) + 1:i * (seq_len + 1) + seq_len + 1] for i in range(rows)])
    prefix = encode(PREFIX, tokens)
    n_greedy = 50 if a.quick else GREEDY_N
    ref = torch_greedy(model, prefix, n_greedy)
    results = [{"variant": "PyTorch float", "perplexity": perplexity(torch_logits(model, x), y),
                "agree": n_greedy, "first_difference": None, "text": PREFIX + decode(ref, tokens)}]
    for precision in ("float32", "int16", "int8"):
        r = export_model(a.out / "char_lm.pt2", a.out / precision, precision=precision, calib=str(a.out / "calib.npz"),
                         name="char_lm", vocab=tokens, log=lambda s: None)
        q = r.qmodel
        z = run(q, x)
        z = np.asarray(z, np.float32) if precision == "float32" else dequantize(z, q.output_scale)
        gen = simulate_generation(q, prefix, n_greedy).ids
        same = [g == t for g, t in zip(gen, ref)]
        results.append({"variant": f"{precision} export (simulator)", "perplexity": perplexity(z, y),
                         "agree": int(sum(same)), "first_difference": None if all(same) else same.index(False),
                         "text": PREFIX + decode(gen, tokens), "flash_bytes": r.manifest["flash_bytes"],
                         "ram_bytes": r.manifest["ram_bytes"]})
    table = ["| model | held-out perplexity | greedy chars = PyTorch's (of %d) | first differing char | weights / state |"
             % n_greedy, "|---|---|---|---|---|"]
    for r_ in results:
        sizes = f"{r_['flash_bytes']:,} B / {r_['ram_bytes']:,} B" if "flash_bytes" in r_ else "-"
        first = "-" if r_["first_difference"] is None else r_["first_difference"]
        table.append(f"| {r_['variant']} | {r_['perplexity']:.3f} | {r_['agree']} | {first} | {sizes} |")
    held_chars = rows * seq_len
    print(f"\nheld-out: {rows} sequences x {seq_len} characters ({held_chars:,} predictions), each from a zero state")
    print("\n".join(table))
    for r_ in results:
        print(f"  {r_['variant']:>26}: {r_['text']!r}")

    board = []
    if not a.no_board:
        from mcu_nn.onboard import generate
        for temperature, seed in ((None, 0), (0.8, 1)):
            g = generate(a.out / "int8", PREFIX, n_greedy, temperature=temperature, seed=seed)
            how = "greedy" if temperature is None else f"temperature {temperature}, seed {seed}"
            print(f"board ({how}): {g.board_text!r}\n  identical to the simulator: {g.ok}; "
                  f"{g.per_step:,.0f} {g.unit} per step")
            board.append({"how": how, "text": g.board_text, "identical": g.ok, "per_step": g.per_step, "unit": g.unit})
            if not g.ok:
                return 1
    seconds = round(time.monotonic() - start)
    (a.out / "results.md").write_text("\n".join(table) + "\n")
    (a.out / "results.json").write_text(json.dumps({"rows": results, "board": board, "vocab": tokens,
                                                    "hidden": a.hidden, "steps": a.steps, "seconds": seconds,
                                                    "held_out_chars": held_chars}, indent=1) + "\n")
    print(f"done in {seconds} s; results in {a.out}/results.md; try:\n"
          f"  mcu-nn generate {a.out / 'int8'} --prefix \"{PREFIX}\" -n 100 --temperature 0.8 --seed 1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
