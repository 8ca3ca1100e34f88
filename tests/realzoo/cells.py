"""Hand-written recurrences (issue 9): nn.*Cell loops and cells written from Parameters/Linear layers.
The d2l "RNN from scratch" lives in d2l.py."""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ._case import simple_case

ALL = ("pt2", "torchscript", "pickle")


class Sequence(nn.Module):
    """pytorch/examples time_sequence_prediction (sine waves): two stacked nn.LSTMCell, float64
    (model.double()), inputs (N, T) without a feature axis, input.split(1, dim=1)."""

    def __init__(self):
        super(Sequence, self).__init__()
        self.lstm1 = nn.LSTMCell(1, 51)
        self.lstm2 = nn.LSTMCell(51, 51)
        self.linear = nn.Linear(51, 1)

    def forward(self, input, future=0):
        outputs = []
        h_t = torch.zeros(input.size(0), 51, dtype=torch.double)
        c_t = torch.zeros(input.size(0), 51, dtype=torch.double)
        h_t2 = torch.zeros(input.size(0), 51, dtype=torch.double)
        c_t2 = torch.zeros(input.size(0), 51, dtype=torch.double)

        for input_t in input.split(1, dim=1):
            h_t, c_t = self.lstm1(input_t, (h_t, c_t))
            h_t2, c_t2 = self.lstm2(h_t, (h_t2, c_t2))
            output = self.linear(h_t2)
            outputs += [output]
        for i in range(future):  # if we should predict the future
            h_t, c_t = self.lstm1(output, (h_t, c_t))
            h_t2, c_t2 = self.lstm2(h_t, (h_t2, c_t2))
            output = self.linear(h_t2)
            outputs += [output]
        outputs = torch.cat(outputs, dim=1)
        return outputs


class GRUCellLoop(nn.Module):
    """nn.GRUCell stepped in a Python loop over x[:, t, :], classify from the final h."""

    def __init__(self, n_in=6, hidden=16, n_classes=4):
        super().__init__()
        self.hidden_size = hidden
        self.cell = nn.GRUCell(n_in, hidden)
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, x):
        h = torch.zeros(x.size(0), self.hidden_size, device=x.device)
        for t in range(x.size(1)):
            h = self.cell(x[:, t, :], h)
        return self.fc(h)


class RNNCellDocs(nn.Module):
    """torch.nn.RNNCell docs example: time-major input, hx passed in, output stacked on dim 0."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.RNNCell(10, 20)

    def forward(self, input, hx):
        output = []
        for i in range(input.size(0)):
            hx = self.rnn(input[i], hx)
            output.append(hx)
        output = torch.stack(output, dim=0)
        return output


class TextbookGRU(nn.Module):
    """Textbook GRU (Cho 2014 / d2l 10.2 equations) from nn.Linear layers; the reset gate is applied
    to h *before* the candidate's matmul, unlike nn.GRU."""

    def __init__(self, n_in=6, hidden=16, n_classes=4):
        super().__init__()
        self.hidden = hidden
        self.x2z, self.h2z = nn.Linear(n_in, hidden), nn.Linear(hidden, hidden, bias=False)
        self.x2r, self.h2r = nn.Linear(n_in, hidden), nn.Linear(hidden, hidden, bias=False)
        self.x2h, self.h2h = nn.Linear(n_in, hidden), nn.Linear(hidden, hidden, bias=False)
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, x):
        H = torch.zeros(x.shape[0], self.hidden)
        for X in x.unbind(1):
            Z = torch.sigmoid(self.x2z(X) + self.h2z(H))
            R = torch.sigmoid(self.x2r(X) + self.h2r(H))
            H_tilde = torch.tanh(self.x2h(X) + self.h2h(R * H))
            H = Z * H + (1 - Z) * H_tilde
        return self.fc(H)


class ChunkLSTM(nn.Module):
    """Hand-written LSTM: one Linear over cat([x, h]) gives all 4H gate pre-activations, .chunk(4, 1)."""

    def __init__(self, n_in=6, hidden=16, n_classes=4):
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Linear(n_in + hidden, 4 * hidden)
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, x):
        h = x.new_zeros(x.size(0), self.hidden)
        c = x.new_zeros(x.size(0), self.hidden)
        for t in range(x.size(1)):
            i, f, g, o = self.gates(torch.cat([x[:, t], h], dim=1)).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        return self.fc(h)


class PeepholeLSTM(nn.Module):
    """Peephole LSTM (Gers & Schmidhuber 2000): i, f see c_{t-1}, o sees c_t, diagonal peephole weights."""

    def __init__(self, n_in=6, hidden=16, n_classes=4):
        super().__init__()
        self.hidden = hidden
        self.W = nn.Linear(n_in, 4 * hidden)
        self.U = nn.Linear(hidden, 4 * hidden, bias=False)
        self.w_ci = nn.Parameter(torch.randn(hidden) * 0.1)
        self.w_cf = nn.Parameter(torch.randn(hidden) * 0.1)
        self.w_co = nn.Parameter(torch.randn(hidden) * 0.1)
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, x):
        h = torch.zeros(x.size(0), self.hidden)
        c = torch.zeros(x.size(0), self.hidden)
        for t in range(x.size(1)):
            zi, zf, zg, zo = (self.W(x[:, t]) + self.U(h)).chunk(4, dim=1)
            i = torch.sigmoid(zi + self.w_ci * c)
            f = torch.sigmoid(zf + self.w_cf * c)
            c = f * c + i * torch.tanh(zg)
            o = torch.sigmoid(zo + self.w_co * c)
            h = o * torch.tanh(c)
        return self.fc(h)


class CoupledLSTM(nn.Module):
    """Coupled input-forget gate LSTM (CIFG, Greff et al. 2017 "LSTM: A Search Space Odyssey"): i = 1 - f."""

    def __init__(self, n_in=6, hidden=16, n_classes=4):
        super().__init__()
        self.hidden = hidden
        self.ih = nn.Linear(n_in, 3 * hidden)
        self.hh = nn.Linear(hidden, 3 * hidden)
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, x):
        h = torch.zeros(x.size(0), self.hidden)
        c = torch.zeros(x.size(0), self.hidden)
        for xt in x.unbind(dim=1):
            zf, zg, zo = (self.ih(xt) + self.hh(h)).chunk(3, 1)
            f = torch.sigmoid(zf)
            c = f * c + (1 - f) * torch.tanh(zg)
            h = torch.sigmoid(zo) * torch.tanh(c)
        return self.fc(h)


class MGU(nn.Module):
    """Minimal Gated Unit (Zhou et al. 2016): one forget gate f; h~ = tanh(W x + U (f * h));
    h = (1 - f) * h + f * h~."""

    def __init__(self, n_in=6, hidden=16, n_classes=4):
        super().__init__()
        self.hidden = hidden
        self.W_f, self.U_f = nn.Linear(n_in, hidden), nn.Linear(hidden, hidden, bias=False)
        self.W_h, self.U_h = nn.Linear(n_in, hidden), nn.Linear(hidden, hidden, bias=False)
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, x):
        h = torch.zeros(x.size(0), self.hidden)
        for t in range(x.size(1)):
            f = torch.sigmoid(self.W_f(x[:, t]) + self.U_f(h))
            h_tilde = torch.tanh(self.W_h(x[:, t]) + self.U_h(f * h))
            h = (1 - f) * h + f * h_tilde
        return self.fc(h)


class FastLSTMCell(nn.Module):
    """pytorch/benchmarks/fastrnns/custom_lstms.py LSTMCell: raw weight Parameters, torch.mm, chunk(4, 1)."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.weight_ih = nn.Parameter(torch.randn(4 * hidden_size, input_size) * 0.3)
        self.weight_hh = nn.Parameter(torch.randn(4 * hidden_size, hidden_size) * 0.3)
        self.bias_ih = nn.Parameter(torch.randn(4 * hidden_size) * 0.1)
        self.bias_hh = nn.Parameter(torch.randn(4 * hidden_size) * 0.1)

    def forward(self, input: Tensor, state: Tuple[Tensor, Tensor]) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        hx, cx = state
        gates = (torch.mm(input, self.weight_ih.t()) + self.bias_ih + torch.mm(hx, self.weight_hh.t())
                 + self.bias_hh)
        ingate, forgetgate, cellgate, outgate = gates.chunk(4, 1)
        ingate = torch.sigmoid(ingate)
        forgetgate = torch.sigmoid(forgetgate)
        cellgate = torch.tanh(cellgate)
        outgate = torch.sigmoid(outgate)
        cy = (forgetgate * cx) + (ingate * cellgate)
        hy = outgate * torch.tanh(cy)
        return hy, (hy, cy)


class FastLSTMLayer(nn.Module):
    """custom_lstms.py LSTMLayer: time-major, input.unbind(0), torch.jit.script-able; state is an input."""

    def __init__(self, input_size: int = 6, hidden_size: int = 16):
        super().__init__()
        self.cell = FastLSTMCell(input_size, hidden_size)

    def forward(self, input: Tensor, state: Tuple[Tensor, Tensor]) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        inputs = input.unbind(0)
        outputs: List[Tensor] = []
        for i in range(len(inputs)):
            out, state = self.cell(inputs[i], state)
            outputs += [out]
        return torch.stack(outputs), state


def _zeros(n: int, *shape: int) -> np.ndarray:
    return np.zeros((n, *shape), np.float32)


CASES = [
    simple_case("examples_lstmcell_sine", 9, Sequence, T=12, F=1, layout="NT", dtype=torch.float64, formats=ALL,
                notes="pytorch/examples time_sequence_prediction: two nn.LSTMCell(51), model.double(), "
                      "input (N, T) split(1, dim=1), per-step outputs cat on dim 1"),
    simple_case("gru_cell_loop", 9, GRUCellLoop, T=10, F=6, formats=ALL,
                notes="nn.GRUCell in a Python loop over x[:, t, :], fc on final h"),
    simple_case("docs_rnncell_loop", 9, RNNCellDocs, T=6, F=10, layout="TNF",
                extra=lambda m, b: (torch.randn(b, 20),), extra_data=lambda n: {"hx": _zeros(n, 20)},
                input_names=("x", "hx"), formats=ALL,
                notes="torch.nn.RNNCell docs: for i in range(6): hx = rnn(input[i], hx); torch.stack(output)"),
    simple_case("textbook_gru_linear", 9, TextbookGRU, T=10, F=6, formats=ALL,
                notes="textbook GRU (Cho 2014, d2l 10.2) from nn.Linear layers, reset before the matmul"),
    simple_case("chunk_lstm_one_linear", 9, ChunkLSTM, T=10, F=6, formats=ALL,
                notes="hand-written LSTM: Linear(cat[x, h]) -> 4H, .chunk(4, 1)"),
    simple_case("peephole_lstm", 9, PeepholeLSTM, T=10, F=6, formats=ALL,
                notes="peephole LSTM (Gers 2000): diagonal w_ci, w_cf on c_{t-1}, w_co on c_t"),
    simple_case("coupled_gate_lstm", 9, CoupledLSTM, T=10, F=6, formats=ALL,
                notes="CIFG LSTM (Greff 2017): input gate = 1 - forget gate"),
    simple_case("mgu_min_gru", 9, MGU, T=10, F=6, formats=ALL,
                notes="Minimal Gated Unit (Zhou 2016): single forget gate"),
    simple_case("fastrnns_custom_lstm", 9, FastLSTMLayer, T=12, F=6, layout="TNF", jit="script",
                extra=lambda m, b: ((torch.zeros(b, 16), torch.zeros(b, 16)),),
                extra_data=lambda n: {"state.h": _zeros(n, 16), "state.c": _zeros(n, 16)},
                input_names=("x", "state.h", "state.c"), formats=ALL,
                notes="pytorch/benchmarks/fastrnns/custom_lstms.py LSTMLayer/LSTMCell, torch.jit.script, "
                      "time-major unbind(0), state in and out"),
]
