"""The sampling rule of `mcu-nn generate` (fixedpoint.py "sampling") against its C twin in
mcunn_fixedpoint.h, on the host under ASan/UBSan: seeds, draws, temperature parameters, single
samples, and whole generation loops over a toy integer "model" written in both languages."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from runtime_program import build_runtime_program

from mcu_nn import fixedpoint as fp

RNG = np.random.default_rng(99)

PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mcunn_fixedpoint.h"

/* a toy recurrent "model": h = (h * 31 + token * 7 + 3) mod 65521; logits from h */
typedef struct { uint32_t h; int32_t vocab; int32_t spread; } toy_t;

static void toy_step(void *model, uint16_t token, int16_t *logits)
{
    toy_t *m = (toy_t *)model;
    int32_t i;
    m->h = (m->h * 31u + token * 7u + 3u) % 65521u;
    for (i = 0; i < m->vocab; ++i)
        logits[i] = (int16_t)((int32_t)((m->h * (uint32_t)(i + 1) * 2654435761u) >> 20) % m->spread - m->spread / 2);
}

int main(int argc, char **argv)
{
    const char *m = argv[1];
    long long v[8];
    (void)argc;
    if (!strcmp(m, "gen")) {
        /* one row: vocab, spread, k, temperature_milli, seed, n_prefix, n, then n_prefix ids */
        while (fread(v, sizeof v[0], 7, stdin) == 7) {
            toy_t t = {0, (int32_t)v[0], (int32_t)v[1]};
            mcunn_sampler_t s;
            uint16_t prefix[64], out[256];
            int16_t logits[4096];
            long long ids[64], r[256];
            size_t k, np_ = (size_t)v[5], n = (size_t)v[6];
            if (fread(ids, sizeof ids[0], np_, stdin) != np_) return 4;
            for (k = 0; k < np_; ++k) prefix[k] = (uint16_t)ids[k];
            mcunn_sampler_init(&s, v[2], (uint32_t)v[3], (uint32_t)v[4]);
            if (mcunn_lm_generate(toy_step, &t, logits, t.vocab, &s, prefix, np_, out, n) != 0) return 5;
            for (k = 0; k < n; ++k) r[k] = out[k];
            fwrite(r, sizeof r[0], n, stdout);
        }
        return 0;
    }
    if (!strcmp(m, "sample")) {
        /* one row: n, mult, shift, prng, then n logits -> token, prng */
        while (fread(v, sizeof v[0], 4, stdin) == 4) {
            int16_t z[4096];
            long long zz[4096], r[2];
            int32_t i, n = (int32_t)v[0];
            uint32_t prng = (uint32_t)v[3];
            if (fread(zz, sizeof zz[0], (size_t)n, stdin) != (size_t)n) return 4;
            for (i = 0; i < n; ++i) z[i] = (int16_t)zz[i];
            r[0] = mcunn_sample16(z, n, (int32_t)v[1], (int)v[2], &prng);
            r[1] = prng;
            fwrite(r, sizeof r[0], 2, stdout);
        }
        return 0;
    }
    while (fread(v, sizeof v[0], 2, stdin) == 2) {
        long long r[2] = {0, 0};
        if (!strcmp(m, "seed")) r[0] = mcunn_prng_seed((uint32_t)v[0]);
        else if (!strcmp(m, "draw")) {
            uint32_t s = (uint32_t)v[0];
            r[1] = mcunn_draw_below(&s, (uint32_t)v[1]);
            r[0] = s;
        } else if (!strcmp(m, "params")) {
            int32_t mult;
            int shift;
            mcunn_sample_params(v[0], (uint32_t)v[1], &mult, &shift);
            r[0] = mult;
            r[1] = shift;
        } else return 3;
        fwrite(r, sizeof r[0], 2, stdout);
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def prog(tmp_path_factory) -> Path:
    return build_runtime_program(tmp_path_factory.mktemp("sampling"), "sampling", PROGRAM)


def c_run(exe: Path, mode: str, data: list[int]) -> np.ndarray:
    r = subprocess.run([str(exe), mode], input=np.asarray(data, np.int64).tobytes(), capture_output=True)
    assert r.returncode == 0, r.stderr.decode()[:500]
    return np.frombuffer(r.stdout, np.int64)


def toy_step(vocab: int, spread: int):
    h = [0]

    def step(token: int) -> np.ndarray:
        h[0] = (h[0] * 31 + token * 7 + 3) % 65521
        i = np.arange(1, vocab + 1, dtype=np.uint64)
        v = ((np.uint64(h[0]) * i * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)) >> np.uint64(20)
        return v.astype(np.int64) % spread - spread // 2
    return step


def test_seeds_match_and_never_zero(prog) -> None:
    seeds = [0, 1, 2, 42, 0xFFFFFFFF, 0x80000000, *RNG.integers(0, 1 << 32, 500).tolist()]
    got = c_run(prog, "seed", [x for s in seeds for x in (s, 0)]).reshape(-1, 2)[:, 0]
    assert got.tolist() == [fp.prng_seed(s) for s in seeds] and 0 not in got


def test_draw_below_matches_and_is_in_range(prog) -> None:
    totals = [1, 2, 3, 7, 65536, 65537, 1 << 31, (1 << 31) + 1, (1 << 32) - 1, *RNG.integers(1, 1 << 32, 300).tolist()]
    states = [fp.prng_seed(i) for i in range(len(totals))]
    got = c_run(prog, "draw", [x for s, t in zip(states, totals) for x in (s, t)]).reshape(-1, 2)
    want = [fp.draw_below(s, t) for s, t in zip(states, totals)]
    assert got.tolist() == [list(w) for w in want]
    assert all(0 <= r < t for (_, r), t in zip(want, totals))


def test_draws_are_uniform_without_modulo_bias() -> None:
    """total = 3 * 2^30: a plain r % total would land in [0, 2^30) twice as often."""
    total, state, n = 3 << 30, fp.prng_seed(5), 30000
    hits = 0
    for _ in range(n):
        state, r = fp.draw_below(state, total)
        hits += r < (1 << 30)
    assert abs(hits / n - 1 / 3) < 0.015


def test_temperature_parameters_match(prog) -> None:
    ks = [1, 1000, fp.sample_logit_k(1 / 256), fp.sample_logit_k(4e-4), fp.sample_logit_k(2.0), (1 << 52) - 1]
    temps = [1, 10, 100, 700, 1000, 1500, 100000, 1000000]
    pairs = [(k, t) for k in ks for t in temps]
    got = c_run(prog, "params", [x for p in pairs for x in p]).reshape(-1, 2)
    assert got.tolist() == [list(fp.sample_params(k, t)) for k, t in pairs]


def test_single_samples_match(prog) -> None:
    rows, want = [], []
    for i in range(400):
        n = int(RNG.integers(1, 300))
        z = RNG.integers(-32768, 32768, n) if i % 3 else RNG.integers(-50, 50, n)
        mult, shift = fp.sample_params(fp.sample_logit_k(float(RNG.choice([1e-3, 1 / 256, 0.05]))),
                                       int(RNG.integers(1, 3000)))
        prng = fp.prng_seed(i)
        rows += [n, mult, shift, prng, *z.tolist()]
        want.append(list(fp.sample_token(z, mult, shift, prng)))
    assert c_run(prog, "sample", rows).reshape(-1, 2).tolist() == want


def test_sampling_follows_the_softmax() -> None:
    z = np.array([512, 0, 256, -300, 256], np.int64)      # Q8.8 logits 2, 0, 1, -1.17, 1
    s = fp.Sampler(fp.sample_logit_k(1 / 256), 1000, seed=3)
    freq = np.bincount([s.next(z) for _ in range(20000)], minlength=5) / 20000
    p = np.exp(z / 256)
    assert np.abs(freq - p / p.sum()).max() < 0.015
    assert fp.Sampler(1, 0).next(z) == 0 and fp.Sampler(1, 0).next(np.array([3, 7, 7])) == 1   # ties: lowest


@pytest.mark.parametrize("temperature", [0, 300, 1000, 2500])
def test_generation_loops_match(prog, temperature) -> None:
    rows, want = [], []
    for i in range(12):
        vocab, spread = int(RNG.integers(2, 200)), int(RNG.integers(2, 4000))
        k = fp.sample_logit_k(float(RNG.choice([1e-3, 1 / 256, 0.02])))
        prefix = RNG.integers(0, vocab, int(RNG.integers(1, 20))).tolist()
        n = int(RNG.integers(0, 120))
        rows += [vocab, spread, k, temperature, i, len(prefix), n, *prefix]
        want += fp.lm_generate(toy_step(vocab, spread), fp.Sampler(k, temperature, i), prefix, n)
    assert c_run(prog, "gen", rows).tolist() == want
