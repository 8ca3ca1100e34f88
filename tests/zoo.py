"""A zoo of small PyTorch recurrent models in every shape mcu-nn supports, plus helpers
to save them in each file format and to run PyTorch on canonical (N, T, F) data.

Stable API (other test suites use it):
``make_model(kind, **options)``, ``example_input(model, T=, N=)``, ``save_model(model, path, fmt, example)``,
``to_model_layout(x_ntf, batch_first)``, ``from_model_layout(y, batch_first)``, ``torch_reference(model, x_ntf)``.

Canonical layout everywhere in mcu-nn is (N, T, F) (token ids: (N, T)); a model built with
``batch_first=False`` takes (T, N, F), so these helpers convert at the PyTorch boundary.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

KINDS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
READOUTS = ("last", "seq", "h_n", "h_n_cat")


class _ZooBase(nn.Module):
    """embedding? -> rnn -> readout -> dropout? -> head -> softmax?  (all options as attributes,
    so the same class scripts, traces, exports and pickles). Constants: TorchScript folds the
    readout branches away, which the TorchScript->torch.export converter needs."""

    __constants__ = ["readout", "postprocess", "batch_first"]

    def __init__(self, emb: Optional[nn.Embedding], rnn: nn.RNNBase, readout: str,
                 head: nn.Module, postprocess: Optional[str], dropout: bool):
        super().__init__()
        self.emb = emb
        self.rnn = rnn
        self.drop = nn.Dropout(0.25) if dropout else nn.Identity()
        self.head = head
        self.readout = readout
        self.postprocess = postprocess or ""
        self.batch_first = rnn.batch_first

    def _finish(self, out: torch.Tensor, hn: torch.Tensor) -> torch.Tensor:
        if self.readout == "last":
            y = out[:, -1] if self.batch_first else out[-1]
        elif self.readout == "h_n":
            y = hn[-1]
        elif self.readout == "h_n_cat":
            y = torch.cat([hn[-2], hn[-1]], dim=1)
        else:
            y = out
        y = self.head(self.drop(y))
        if self.postprocess == "softmax":
            y = torch.softmax(y, dim=-1)
        elif self.postprocess == "log_softmax":
            y = torch.log_softmax(y, dim=-1)
        return y


class ZooLSTM(_ZooBase):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.emb is not None:
            x = self.emb(x)
        out, (hn, cn) = self.rnn(x)
        return self._finish(out, hn)


class ZooRNN(_ZooBase):
    """GRU and Elman RNN (tanh/relu): h_n is a single tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.emb is not None:
            x = self.emb(x)
        out, hn = self.rnn(x)
        return self._finish(out, hn)


def make_model(kind: str = "lstm", *, input_size: int = 6, hidden: int = 32, num_layers: int = 1,
               bidirectional: bool = False, batch_first: bool = True, bias: bool = True,
               proj_size: int = 0, readout: str = "last", head: Optional[str] = "linear",
               out_features: int = 4, tokens: bool = False, vocab: int = 50, embed_dim: int = 8,
               postprocess: Optional[str] = None, dropout: bool = False, seed: int = 0) -> nn.Module:
    """A deterministic model in eval mode. ``head``: "linear" (one Linear), "mlp"
    (Linear-Tanh-Linear-ReLU-Linear) or None. ``readout``: "last" (out[:, -1]), "seq" (per step),
    "h_n" (h_n[-1]), "h_n_cat" (cat(h_n[-2], h_n[-1]), bidirectional only). ``tokens``: an
    Embedding(vocab, embed_dim) first, inputs are int64 ids. ``dropout``: Dropout before the head
    and between stacked layers (inactive in eval)."""
    if kind not in KINDS or readout not in READOUTS:
        raise ValueError(f"kind must be one of {KINDS}, readout one of {READOUTS}")
    if readout == "h_n_cat" and not bidirectional:
        raise ValueError("readout 'h_n_cat' needs bidirectional=True")
    torch.manual_seed(seed)
    emb = nn.Embedding(vocab, embed_dim) if tokens else None
    in_size = embed_dim if tokens else input_size
    common = dict(num_layers=num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional,
                  dropout=0.1 if (dropout and num_layers > 1) else 0.0)
    if kind == "lstm":
        rnn: nn.RNNBase = nn.LSTM(in_size, hidden, proj_size=proj_size, **common)
    elif kind == "gru":
        rnn = nn.GRU(in_size, hidden, **common)
    else:
        rnn = nn.RNN(in_size, hidden, nonlinearity=kind[4:], **common)
    state = proj_size or hidden
    feat = state * (2 if bidirectional else 1)
    if readout == "h_n":
        feat = state
    if head == "linear":
        head_mod: nn.Module = nn.Linear(feat, out_features)
    elif head == "mlp":
        head_mod = nn.Sequential(nn.Linear(feat, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(),
                                 nn.Linear(16, out_features))
    elif head is None:
        head_mod = nn.Identity()
    else:
        raise ValueError(f"head must be 'linear', 'mlp' or None, not {head!r}")
    cls = ZooLSTM if kind == "lstm" else ZooRNN
    return cls(emb, rnn, readout, head_mod, postprocess, dropout).eval()


def _first_rnn(model: nn.Module) -> Optional[nn.RNNBase]:
    return next((m for m in model.modules() if isinstance(m, nn.RNNBase)), None)


def _model_facts(model: nn.Module) -> tuple[bool, bool, int]:
    """(batch_first, tokens, input_size or vocabulary) of any model with an RNN/Embedding inside."""
    emb = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    rnn = _first_rnn(model)
    batch_first = True if rnn is None else bool(rnn.batch_first)
    if emb is not None:
        return batch_first, True, emb.num_embeddings
    if rnn is not None:
        return batch_first, False, rnn.input_size
    lin = next(m for m in model.modules() if isinstance(m, nn.Linear))
    return batch_first, False, lin.in_features


def canonical_input(model: nn.Module, T: int = 12, N: int = 1, seed: int = 0) -> np.ndarray:
    """Random canonical input: (N, T, F) float32, or (N, T) int64 token ids."""
    _, tokens, size = _model_facts(model)
    rng = np.random.default_rng(seed)
    if tokens:
        return rng.integers(0, size, (N, T)).astype(np.int64)
    return rng.standard_normal((N, T, size)).astype(np.float32)


def example_input(model: Optional[nn.Module] = None, *, T: int = 12, N: int = 1, seed: int = 0,
                  **make_kwargs) -> torch.Tensor:
    """An input tensor in the model's own layout (respects batch_first). Pass the model, or
    the ``make_model`` keyword arguments instead of it."""
    if model is None:
        model = make_model(**make_kwargs)
    batch_first, _, _ = _model_facts(model)
    return to_model_layout(canonical_input(model, T, N, seed), batch_first)


def to_model_layout(x_ntf: np.ndarray, batch_first: bool) -> torch.Tensor:
    """Canonical (N, T, ...) numpy -> torch tensor in the model's layout ((T, N, ...) if not batch_first)."""
    x = torch.from_numpy(np.ascontiguousarray(x_ntf))
    return x if batch_first else x.transpose(0, 1).contiguous()


def from_model_layout(y: torch.Tensor, batch_first: bool) -> np.ndarray:
    """Model output -> canonical numpy: per-step (3-D) outputs become (N, T, O); (N, O) stays."""
    y = y.detach()
    if y.dim() == 3 and not batch_first:
        y = y.transpose(0, 1)
    return y.contiguous().numpy()


def torch_reference(model: nn.Module, x_ntf: np.ndarray) -> np.ndarray:
    """PyTorch's output (softmax included if the model has one) in canonical layout:
    (N, T, O) for per-step models, (N, O) otherwise."""
    batch_first, _, _ = _model_facts(model)
    with torch.no_grad():
        return from_model_layout(model(to_model_layout(x_ntf, batch_first)), batch_first)


def save_model(model: nn.Module, path: str | Path, fmt: str = "pt2",
               example: Optional[torch.Tensor] = None) -> Path:
    """Save ``model`` as "pt2" (torch.export.save), "torchscript" (scripted),
    "torchscript_trace" (traced) or "pickle" (torch.save of the whole module)."""
    path = Path(path)
    if example is None:
        example = example_input(model)
    model = model.eval()
    if fmt == "pt2":
        torch.export.save(torch.export.export(model, (example,)), str(path))
    elif fmt == "torchscript":
        torch.jit.save(torch.jit.script(model), str(path))
    elif fmt == "torchscript_trace":
        torch.jit.save(torch.jit.trace(model, (example,)), str(path))
    elif fmt == "pickle":
        torch.save(model, str(path))
    else:
        raise ValueError(f"unknown fmt {fmt!r}")
    return path
