"""``mcu-nn generate``: a language model writes on the board (the firmware's GENERATE runs the
runtime's ``mcunn_lm_generate``) and on the simulator from the same prefix, temperature and
seed; the two texts must be identical (docs/generate.md)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from ..errors import McuNnError
from ..exportdir import open_export, read_listed
from ..generate import (VOCAB_FILE, check_language_model, check_vocab, decode, encode, read_vocab,
                        simulate_generation, temperature_milli)
from ..qmodel_file import FILE as QMODEL_FILE
from ..qmodel_file import load_qmodel
from .client import DeviceClient
from .protocol import DeviceInfo
from .serial_test import _cycles, board_session

MAX_TOKENS = 100_000


@dataclass
class GenerateResult:
    ok: bool                        # board tokens == simulator tokens
    prefix: str
    board_text: str                 # prefix + what the board generated
    sim_text: str                   # prefix + what the simulator generated
    board_ids: list[int]
    sim_ids: list[int]
    temperature_milli: int
    seed: int
    per_step: Optional[float]       # instructions (or cycles) per model step incl. sampling
    unit: str
    device: Optional[DeviceInfo]

    def first_difference(self) -> Optional[int]:
        for k, (a, b) in enumerate(zip(self.board_ids, self.sim_ids)):
            if a != b:
                return k
        return None if len(self.board_ids) == len(self.sim_ids) else min(len(self.board_ids), len(self.sim_ids))

    def as_dict(self) -> dict:
        return {"ok": self.ok, "prefix": self.prefix, "board": self.board_text, "simulator": self.sim_text,
                "board_ids": self.board_ids, "simulator_ids": self.sim_ids,
                "temperature": self.temperature_milli / 1000, "seed": self.seed,
                "per_step": self.per_step, "unit": self.unit, "board_name": self.device.board if self.device else None}


def export_vocab(ex, vocab: Union[None, str, Path, Sequence[str]]) -> list[str]:
    """The vocabulary: given (a file or a list), else the export's vocab.json."""
    if isinstance(vocab, (str, Path)):
        return read_vocab(vocab)
    if vocab is not None:
        return check_vocab(vocab, "vocabulary")
    data = read_listed(ex, VOCAB_FILE)
    if data is None:
        raise McuNnError(f"{ex.dir} stores no vocabulary ({VOCAB_FILE}): pass --vocab FILE (a text file whose "
                         "characters are the tokens in order, or a JSON list)")
    import json
    try:
        return check_vocab(json.loads(data.decode())["tokens"], str(ex.dir / VOCAB_FILE))
    except (ValueError, KeyError, TypeError):
        raise McuNnError(f"{ex.dir / VOCAB_FILE} is malformed; re-run the export") from None


def board_generation(client: DeviceClient, prefix: list[int], n: int, t_milli: int, seed: int) -> tuple[list[int], int]:
    """The whole generation on the board in GENERATE requests that fit its frames: the prefix in
    parts (the first resets), then n tokens in chunks, each continuing from the last token."""
    info = client.info
    per_prefix, per_n = (info.payload_max - 14) // 2, (info.payload_max - 6) // 2
    ids, ticks, cont = [], 0, False
    for at in range(0, len(prefix), per_prefix):
        last = at + per_prefix >= len(prefix)
        got, dt = client.generate(prefix[at:at + per_prefix], min(n, per_n) if last else 0,
                                  temperature_milli=t_milli, seed=seed, cont=cont)
        ids += got
        ticks += dt
        cont = True
    while len(ids) < n:
        got, dt = client.generate(ids[-1:], min(n - len(ids), per_n), cont=True)
        ids += got
        ticks += dt
    if any(i >= info.output_size for i in ids):
        raise McuNnError(f"{client.port_url}: the board returned a token id outside the vocabulary of {info.output_size}")
    return ids, ticks


def generate(export_dir: Path, prefix: str, n: int, *, port: str,
             temperature: Optional[float] = None, seed: int = 0, vocab: Union[None, str, Path, Sequence[str]] = None,
             timeout: float = 10.0, retries: int = 5, log: Callable[[str], None] = print,
             allow_modified: bool = False) -> GenerateResult:
    """Generate ``n`` tokens after ``prefix`` on the running board on ``port`` and on the
    simulator (greedy, or sampled at ``temperature`` with ``seed``); mcu_nn.onboard builds and
    boots an emulated board first."""
    export_dir = Path(export_dir)
    ex = open_export(export_dir, allow_modified=allow_modified, vectors=False)
    tokens = export_vocab(ex, vocab)
    data = read_listed(ex, QMODEL_FILE)
    if data is None:
        raise McuNnError(f"{export_dir} has no {QMODEL_FILE} (the quantised model the simulator runs); "
                         "re-run mcu-nn export with this mcu-nn")
    q = load_qmodel(data, str(export_dir / QMODEL_FILE))
    check_language_model(q, len(tokens))
    if not prefix:
        raise McuNnError("--prefix is empty: generation starts from at least one token")
    if not 0 <= n <= MAX_TOKENS:
        raise McuNnError(f"-n {n} is outside 0..{MAX_TOKENS}")
    if not 0 <= seed < 1 << 32:
        raise McuNnError(f"--seed {seed} is outside 0..4294967295")
    t_milli = temperature_milli(temperature)
    prefix_ids = encode(prefix, tokens)
    sim = simulate_generation(q, prefix_ids, n, temperature_milli=t_milli, seed=seed)
    with board_session(ex, port=port, timeout=timeout, retries=retries, log=log) as client:
        try:
            ids, ticks = board_generation(client, prefix_ids, n, t_milli, seed)
        except McuNnError as e:
            if "unknown command" in str(e):
                raise McuNnError(f"the firmware on {client.port_url} has no GENERATE command; rebuild it with "
                                 f"this mcu-nn (mcu-nn build {export_dir})") from None
            raise
        info = client.info
    steps = len(prefix_ids) + max(n - 1, 0)
    per_step, unit = _cycles(ticks, info)
    per = per_step / steps if info.counter != "none" and steps else None
    return GenerateResult(ids == sim.ids, prefix, prefix + decode(ids, tokens), prefix + decode(sim.ids, tokens),
                          ids, sim.ids, t_milli, seed, per, unit, info)
