"""Text generation with a language model (d2l.ai's char RNNs): the vocabulary, and the loop of
``fixedpoint.lm_generate`` run on the simulator (bit-exact with the chip's ``mcunn_lm_generate``)
or on a float Graph. The board's side is ``mcu_nn.device.generate``.

A model generates when it streams (has ``_step``) and its output size equals its vocabulary: the
input size of a token model (``nn.Embedding`` / ``F.one_hot`` of ids), or of a float model fed
one-hot vectors (token t -> 1.0 at index t, 0 elsewhere)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from . import fixedpoint as fp
from .errors import McuNnError
from .ir import Graph, QModel, is_recurrent, state_slots, whole_sequence

VOCAB_FILE = "vocab.json"
STATELESS_OPS = {"QEmbedding", "QLinear", "QActivation", "Embedding", "Linear", "Activation",
                 "SelectLast", "FinalHidden"}


# ----------------------------------------------------------------------------- vocabulary
def check_vocab(tokens: Sequence[str], where: str) -> list[str]:
    tokens = list(tokens)
    if not tokens or not all(isinstance(t, str) and t for t in tokens):
        raise McuNnError(f"{where}: a vocabulary is a non-empty list of non-empty strings")
    if len(set(tokens)) != len(tokens):
        dup = next(t for t in tokens if tokens.count(t) > 1)
        raise McuNnError(f"{where}: token {dup!r} appears twice in the vocabulary")
    if len(tokens) > fp.SAMPLE_MAX_VOCAB:
        raise McuNnError(f"{where}: {len(tokens)} tokens; generation handles at most {fp.SAMPLE_MAX_VOCAB}")
    return tokens


def read_vocab(path: Union[str, Path]) -> list[str]:
    """A vocabulary file: a JSON list of tokens (``.json``), or a text file whose characters, in
    order, are the tokens (one final newline, as editors add, is not a token; write a JSON list
    to have "\\n" in the vocabulary)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise McuNnError(f"cannot read vocabulary {path}: {getattr(e, 'strerror', None) or e}") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise McuNnError(f"vocabulary {path} is not valid JSON ({e})") from None
        if isinstance(data, dict):
            data = data.get("tokens")
        if not isinstance(data, list):
            raise McuNnError(f"vocabulary {path}: expected a JSON list of tokens")
        return check_vocab(data, str(path))
    return check_vocab(list(text[:-1] if text.endswith("\n") else text), str(path))


def vocab_bytes(tokens: Sequence[str]) -> bytes:
    """vocab.json as an export stores it."""
    return (json.dumps({"tokens": check_vocab(tokens, "vocabulary")}, ensure_ascii=False) + "\n").encode()


def encode(text: str, tokens: Sequence[str]) -> list[int]:
    """Text -> token ids, longest matching token first (characters, or "<unk>"-style tokens)."""
    index = {t: i for i, t in enumerate(tokens)}
    longest = max(len(t) for t in tokens)
    ids, at = [], 0
    while at < len(text):
        for n in range(min(longest, len(text) - at), 0, -1):
            if text[at:at + n] in index:
                ids.append(index[text[at:at + n]])
                at += n
                break
        else:
            shown = "".join(t for t in tokens if len(t) == 1)
            raise McuNnError(f"prefix character {text[at]!r} (position {at}) is not in the vocabulary "
                             f"of {len(tokens)} tokens ({shown[:80]!r}{'...' if len(shown) > 80 else ''})")
    return ids


def decode(ids: Sequence[int], tokens: Sequence[str]) -> str:
    return "".join(tokens[i] for i in ids)


# ----------------------------------------------------------------------------- the model's side
def logit_scale(q: Union[QModel, Graph]) -> float:
    """Scale of the int16 logits the sampler sees: the output's, or Q8.8 for float logits."""
    if isinstance(q, QModel) and q.precision != "float32":
        return float(q.output_scale)
    return 1.0 / fp.FLOAT_LOGIT_INV_SCALE


def check_language_model(model: Union[QModel, Graph], vocab: Optional[int] = None) -> int:
    """The vocabulary size of a model that can generate, or one clear error saying why not."""
    name = model.name
    if whole_sequence(model):
        raise McuNnError(f"model {name!r} has no streaming step (it needs whole sequences: a bidirectional "
                         "layer or an op that reads ahead), so it cannot generate token by token")
    v = model.input_size
    if model.output_size != v:
        what = "token ids" if model.input_kind == "tokens" else "one-hot vectors"
        raise McuNnError(f"model {name!r} is not a language model: it takes {what} of {v} and gives {model.output_size} "
                         f"outputs per step; generating needs one logit per token (output size == {v})")
    if vocab is not None and vocab != v:
        raise McuNnError(f"the vocabulary has {vocab} tokens but model {name!r} has {v}")
    return v


class SimLM:
    """``<name>_step`` one token at a time on the simulator (``QModel``, int or float32) or on a
    float ``Graph``, returning int16 logits as the firmware hands them to the sampler.

    The recurrent state is carried between steps in the flat layout of ``_get_state``; a model
    with other state (a causal convolution's history, pooling over time) re-runs its whole
    history each step instead, which is slower but exact."""

    def __init__(self, model: Union[QModel, Graph]) -> None:
        self.model = model
        self.vocab = check_language_model(model)
        self.float = not isinstance(model, QModel) or model.precision == "float32"
        self.logit_k = fp.sample_logit_k(logit_scale(model))
        self.incremental = all(
            is_recurrent(op) and len(op.outputs) == (3 if op.kind == "lstm" else 2)
            or type(op).__name__ in STATELESS_OPS for op in model.ops)
        self.reset()

    def reset(self) -> None:
        self.state: Optional[np.ndarray] = None
        self.history: list[int] = []

    def _input(self, ids: list[int]) -> np.ndarray:
        if self.model.input_kind == "tokens":
            return np.asarray([ids], np.int64)
        return np.eye(self.vocab, dtype=np.float32)[ids][None]

    def _run_all(self, x: np.ndarray, state: Optional[np.ndarray]) -> dict[str, np.ndarray]:
        if isinstance(self.model, Graph):
            from .sim.float_sim import run_float_all
            return run_float_all(self.model, x, state=state)
        if self.float:
            from .sim.float_sim import run_float_all
            from .sim.int_sim import as_graph
            return run_float_all(as_graph(self.model), x, state=state)
        from .sim.int_sim import quantize_model_input, run_quant_all
        return run_quant_all(self.model, quantize_model_input(self.model, x), state=state)

    def step(self, token: int) -> np.ndarray:
        m = self.model
        if not 0 <= token < self.vocab:
            raise McuNnError(f"token id {token} is outside the vocabulary of {self.vocab}")
        if self.incremental:
            env = self._run_all(self._input([token]), self.state)
            parts = [env[m.ops[s.op_index].outputs[1 if s.what == "h" else 2]] for s in state_slots(m)]
            self.state = np.concatenate(parts, axis=-1) if parts else None
        else:
            self.history.append(token)
            env = self._run_all(self._input(self.history), None)
        y = np.asarray(env[m.output_names[0]])
        y = y[0, -1] if m.output_per_step else y[0]
        return fp.quantize_input(y, fp.FLOAT_LOGIT_INV_SCALE) if self.float else fp._i64(y)


@dataclass
class Generation:
    prefix_ids: list[int]
    ids: list[int]                 # the generated tokens (after the prefix)
    temperature_milli: int
    seed: int


def temperature_milli(temperature: Optional[float]) -> int:
    """The temperature as the integer the chip takes (thousandths); 0 or None is greedy."""
    if temperature is None or temperature == 0:
        return 0
    t = round(float(temperature) * 1000)
    if not (temperature > 0 and 1 <= t <= fp.SAMPLE_MAX_TEMPERATURE_MILLI):
        raise McuNnError(f"--temperature {temperature} is outside 0.001..1000 (0 or none: greedy)")
    return t


def simulate_generation(model: Union[QModel, Graph, SimLM], prefix_ids: Sequence[int], n: int, *,
                        temperature_milli: int = 0, seed: int = 0) -> Generation:
    """Feed ``prefix_ids`` and generate ``n`` tokens on the simulator (or a float Graph): the
    tokens the chip draws for the same prefix, temperature and seed."""
    lm = model if isinstance(model, SimLM) else SimLM(model)
    lm.reset()
    sampler = fp.Sampler(lm.logit_k, temperature_milli, seed)
    ids = fp.lm_generate(lm.step, sampler, list(prefix_ids), n)
    return Generation(list(prefix_ids), ids, temperature_milli, seed)
