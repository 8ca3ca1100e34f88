"""Dive into Deep Learning (d2l.ai) character language models, written the book's way."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ._case import ZooCase, simple_case

VOCAB, HIDDEN, T = 28, 16, 10      # d2l's time machine vocabulary has 28 tokens


class RNNModel(nn.Module):
    """d2l.ai 8.6 (2nd ed.) "Concise Implementation of RNNs": wraps any nn.RNN/GRU/LSTM layer,
    one-hot inside forward, time-major inside, flat (T*N, vocab) logits out."""

    def __init__(self, rnn_layer, vocab_size, **kwargs):
        super(RNNModel, self).__init__(**kwargs)
        self.rnn = rnn_layer
        self.vocab_size = vocab_size
        self.num_hiddens = self.rnn.hidden_size
        if not self.rnn.bidirectional:
            self.num_directions = 1
            self.linear = nn.Linear(self.num_hiddens, self.vocab_size)
        else:
            self.num_directions = 2
            self.linear = nn.Linear(self.num_hiddens * 2, self.vocab_size)

    def forward(self, inputs, state):
        X = F.one_hot(inputs.T.long(), self.vocab_size)
        X = X.to(torch.float32)
        Y, state = self.rnn(X, state)
        # The fully connected layer first changes the shape of Y to (num_steps * batch_size, num_hiddens)
        output = self.linear(Y.reshape((-1, Y.shape[-1])))
        return output, state

    def begin_state(self, device, batch_size=1):
        if not isinstance(self.rnn, nn.LSTM):
            return torch.zeros((self.num_directions * self.rnn.num_layers, batch_size, self.num_hiddens),
                               device=device)
        else:
            return (torch.zeros((self.num_directions * self.rnn.num_layers, batch_size, self.num_hiddens),
                                device=device),
                    torch.zeros((self.num_directions * self.rnn.num_layers, batch_size, self.num_hiddens),
                                device=device))


class RNNScratch(nn.Module):
    """d2l.ai 9.5 (new ed.) "RNN from Scratch": nn.Parameters and a Python loop over time-major inputs."""

    def __init__(self, num_inputs, num_hiddens, sigma=0.01):
        super().__init__()
        self.num_inputs, self.num_hiddens, self.sigma = num_inputs, num_hiddens, sigma
        self.W_xh = nn.Parameter(torch.randn(num_inputs, num_hiddens) * sigma)
        self.W_hh = nn.Parameter(torch.randn(num_hiddens, num_hiddens) * sigma)
        self.b_h = nn.Parameter(torch.zeros(num_hiddens))

    def forward(self, inputs, state=None):
        if state is None:
            # Initial state with shape: (batch_size, num_hiddens)
            state = torch.zeros((inputs.shape[1], self.num_hiddens), device=inputs.device)
        else:
            state, = state
        outputs = []
        for X in inputs:  # Shape of inputs: (num_steps, batch_size, num_inputs)
            state = torch.tanh(torch.matmul(X, self.W_xh) + torch.matmul(state, self.W_hh) + self.b_h)
            outputs.append(state)
        return outputs, state


class RNNLMScratch(nn.Module):
    """d2l.ai 9.5 RNNLMScratch: one-hot, the scratch RNN, and an output layer per step stacked on axis 1."""

    def __init__(self, rnn, vocab_size):
        super().__init__()
        self.rnn, self.vocab_size = rnn, vocab_size
        self.W_hq = nn.Parameter(torch.randn(self.rnn.num_hiddens, self.vocab_size) * self.rnn.sigma * 30)
        self.b_q = nn.Parameter(torch.zeros(self.vocab_size))

    def one_hot(self, X):
        # Output shape: (num_steps, batch_size, vocab_size)
        return F.one_hot(X.T, self.vocab_size).type(torch.float32)

    def output_layer(self, rnn_outputs):
        outputs = [torch.matmul(H, self.W_hq) + self.b_q for H in rnn_outputs]
        return torch.stack(outputs, 1)

    def forward(self, X, state=None):
        embs = self.one_hot(X)
        rnn_outputs, _ = self.rnn(embs, state)
        return self.output_layer(rnn_outputs)


def _state_data(lstm: bool):
    def data(n: int) -> dict[str, np.ndarray]:
        z = np.zeros((n, 1, HIDDEN), np.float32)        # begin_state(): zeros
        return {"state.h": z, "state.c": z.copy()} if lstm else {"state": z}
    return data


def _concise(kind: str, layer) -> ZooCase:
    lstm = kind == "lstm"
    return simple_case(
        f"d2l_concise_{kind}", 8, lambda: RNNModel(layer(VOCAB, HIDDEN), VOCAB), T=T, F=0, tokens=VOCAB,
        extra=lambda m, b: (m.begin_state(torch.device("cpu"), batch_size=b),),
        extra_data=_state_data(lstm), input_names=("x", "state.h", "state.c") if lstm else ("x", "state"),
        formats=("pt2", "torchscript", "pickle"),
        notes=f"d2l.ai 8.6 concise RNNModel(nn.{layer.__name__}); forward(inputs, state) -> (output, state), "
              "one-hot of inputs.T, flat (T*N, vocab) logits")


CASES = [
    _concise("rnn", nn.RNN),
    _concise("gru", nn.GRU),
    _concise("lstm", nn.LSTM),
    simple_case(
        "d2l_scratch_rnn", 9, lambda: RNNLMScratch(RNNScratch(VOCAB, HIDDEN, sigma=0.3), VOCAB),
        T=T, F=0, tokens=VOCAB, extra=lambda m, b: ((torch.zeros(b, HIDDEN),),),
        extra_data=lambda n: {"state": np.zeros((n, HIDDEN), np.float32)}, input_names=("x", "state"),
        formats=("pt2", "torchscript", "pickle"),
        notes="d2l.ai 9.5 RNNScratch + RNNLMScratch: W_xh/W_hh/b_h Parameters, tanh loop over time, "
              "forward(X, state) with state a 1-tuple"),
]
