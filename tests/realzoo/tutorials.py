"""Models as the PyTorch docs/tutorials and popular tutorial repositories write them."""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ._case import ZooCase, sensor, simple_case, t, token_ids

ALL = ("pt2", "torchscript", "pickle")
NO_EXPORT = ("torchscript", "pickle")   # torch.export 2.13 fails inside pack_padded_sequence (zeros() of a FakeTensor size)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")   # yunjey's module-level global


class LSTMTagger(nn.Module):
    """PyTorch tutorial "Sequence Models and Long Short-Term Memory Networks" (POS tagger)."""

    def __init__(self, embedding_dim, hidden_dim, vocab_size, tagset_size):
        super(LSTMTagger, self).__init__()
        self.hidden_dim = hidden_dim
        self.word_embeddings = nn.Embedding(vocab_size, embedding_dim)
        # The LSTM takes word embeddings as inputs, and outputs hidden states with dimensionality hidden_dim.
        self.lstm = nn.LSTM(embedding_dim, hidden_dim)
        # The linear layer that maps from hidden state space to tag space
        self.hidden2tag = nn.Linear(hidden_dim, tagset_size)

    def forward(self, sentence):
        embeds = self.word_embeddings(sentence)
        lstm_out, _ = self.lstm(embeds.view(len(sentence), 1, -1))
        tag_space = self.hidden2tag(lstm_out.view(len(sentence), -1))
        tag_scores = F.log_softmax(tag_space, dim=1)
        return tag_scores


class DocsLSTM(nn.Module):
    """torch.nn.LSTM docs example, ``output, (hn, cn) = rnn(input, (h0, c0))``, with h0/c0 as inputs."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(10, 20, 2)

    def forward(self, input, h0, c0):
        output, (hn, cn) = self.rnn(input, (h0, c0))
        return output, (hn, cn)


class YunjeyRNN(nn.Module):
    """yunjey/pytorch-tutorial 02-intermediate/recurrent_neural_network: zeros(...).to(device) in forward."""

    def __init__(self, input_size, hidden_size, num_layers, num_classes):
        super(YunjeyRNN, self).__init__()
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x):
        # Set initial hidden and cell states
        h0 = torch.zeros(self.num_layers, x.size(0), self.hidden_size).to(device)
        c0 = torch.zeros(self.num_layers, x.size(0), self.hidden_size).to(device)
        # Forward propagate LSTM
        out, _ = self.lstm(x, (h0, c0))  # out: tensor of shape (batch_size, seq_length, hidden_size)
        # Decode the hidden state of the last time step
        out = self.fc(out[:, -1, :])
        return out


class LSTMModel(nn.Module):
    """deeplearningwizard.com "LSTM Neural Networks": requires_grad_() zeros, detach() in forward."""

    def __init__(self, input_dim, hidden_dim, layer_dim, output_dim):
        super(LSTMModel, self).__init__()
        self.hidden_dim = hidden_dim
        self.layer_dim = layer_dim
        self.lstm = nn.LSTM(input_dim, hidden_dim, layer_dim, batch_first=True)
        self.fc = nn.Linear(hidden_dim, output_dim)

    def forward(self, x):
        h0 = torch.zeros(self.layer_dim, x.size(0), self.hidden_dim).requires_grad_()
        c0 = torch.zeros(self.layer_dim, x.size(0), self.hidden_dim).requires_grad_()
        out, (hn, cn) = self.lstm(x, (h0.detach(), c0.detach()))
        out = self.fc(out[:, -1, :])
        return out


class SentimentRNN(nn.Module):
    """Udacity deep-learning-v2-pytorch "Sentiment_RNN": forward(x, hidden) -> (sig_out, hidden),
    contiguous().view(-1, H), sigmoid per step, keep the last; init_hidden via weight.new."""

    def __init__(self, vocab_size, output_size, embedding_dim, hidden_dim, n_layers, drop_prob=0.5):
        super(SentimentRNN, self).__init__()
        self.output_size = output_size
        self.n_layers = n_layers
        self.hidden_dim = hidden_dim
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_dim, n_layers, dropout=drop_prob, batch_first=True)
        self.dropout = nn.Dropout(0.3)
        self.fc = nn.Linear(hidden_dim, output_size)
        self.sig = nn.Sigmoid()

    def forward(self, x, hidden):
        batch_size = x.size(0)
        x = x.long()
        embeds = self.embedding(x)
        lstm_out, hidden = self.lstm(embeds, hidden)
        # stack up lstm outputs
        lstm_out = lstm_out.contiguous().view(-1, self.hidden_dim)
        out = self.dropout(lstm_out)
        out = self.fc(out)
        sig_out = self.sig(out)
        sig_out = sig_out.view(batch_size, -1)
        sig_out = sig_out[:, -1]  # get last batch of labels
        return sig_out, hidden

    def init_hidden(self, batch_size):
        weight = next(self.parameters()).data
        hidden = (weight.new(self.n_layers, batch_size, self.hidden_dim).zero_(),
                  weight.new(self.n_layers, batch_size, self.hidden_dim).zero_())
        return hidden


class BiGRUClassifier(nn.Module):
    """bentrevett/pytorch-sentiment-analysis style: bidirectional, dropout, cat(hidden[-2], hidden[-1])."""

    def __init__(self, vocab_size, embedding_dim, hidden_dim, output_dim, n_layers, dropout):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.rnn = nn.GRU(embedding_dim, hidden_dim, num_layers=n_layers, bidirectional=True,
                          dropout=dropout, batch_first=True)
        self.fc = nn.Linear(hidden_dim * 2, output_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, text):
        embedded = self.dropout(self.embedding(text))
        output, hidden = self.rnn(embedded)
        hidden = self.dropout(torch.cat((hidden[-2, :, :], hidden[-1, :, :]), dim=1))
        return self.fc(hidden)


class BiLSTMTagger(nn.Module):
    """NER/POS BiLSTM tagger without the CRF (the common baseline): embedding, batch-first
    bidirectional LSTM, dropout, per-step Linear over 2H."""

    def __init__(self, vocab_size=60, embedding_dim=8, hidden_dim=12, num_tags=5):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.lstm = nn.LSTM(embedding_dim, hidden_dim, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(0.5)
        self.hidden2tag = nn.Linear(2 * hidden_dim, num_tags)

    def forward(self, x):
        out, _ = self.lstm(self.embedding(x))
        return self.hidden2tag(self.dropout(out))


class PackedLSTMClassifier(nn.Module):
    """Variable-length batches: pack_padded_sequence(lengths, enforce_sorted=False), read h_n[-1]."""

    def __init__(self, input_size, hidden_size, num_classes):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x, lengths):
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)
        return self.fc(h_n[-1])


class PackedGRUTagger(nn.Module):
    """Variable-length per-step tagging: pack, GRU, pad_packed_sequence(total_length=T), per-step head."""

    def __init__(self, input_size, hidden_size, num_tags, total_length):
        super().__init__()
        self.total_length = total_length
        self.gru = nn.GRU(input_size, hidden_size, batch_first=True)
        self.fc = nn.Linear(hidden_size, num_tags)

    def forward(self, x, lengths):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=self.total_length)
        return self.fc(out)


class TimeMajorGRU(nn.Module):
    """Seq-first (T, N, F) input with the default batch_first=False, classify from out[-1]."""

    def __init__(self, input_size=6, hidden_size=16, num_classes=5):
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size, num_layers=2)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x):
        out, h = self.gru(x)
        return self.fc(out[-1])


class UnbatchedLSTM(nn.Module):
    """One unbatched (T, F) float sequence straight into nn.LSTM (supported since torch 1.11)."""

    def __init__(self, input_size=4, hidden_size=16, num_classes=3):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x):
        out, (h, c) = self.lstm(x)
        return F.softmax(self.fc(out[-1]), dim=-1)


# ------------------------------------------------------------------ airline-passenger forecasting
LOOKBACK, MONTHS = 12, 144


class AirModel(nn.Module):
    """machinelearningmastery "LSTM for Time Series Prediction in PyTorch" (airline passengers),
    predicting the next month from a lookback window."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(input_size=1, hidden_size=16, num_layers=1, batch_first=True)
        self.linear = nn.Linear(16, 1)

    def forward(self, x):
        x, _ = self.lstm(x)
        x = self.linear(x[:, -1, :])
        return x


def airline_series() -> np.ndarray:
    """144 months of a growing, seasonal passenger count (trend * (1 + seasonality) + noise)."""
    m = np.arange(MONTHS)
    season = 1 + 0.18 * np.sin(2 * np.pi * (m - 3) / 12) + 0.08 * np.sin(4 * np.pi * m / 12)
    noise = np.random.default_rng(1949).normal(0, 4, MONTHS)
    return ((110 + 2.6 * m + 0.004 * m ** 2) * season * (1 + m / 400) + noise).astype(np.float32)


def _scaled_windows() -> tuple[np.ndarray, np.ndarray, int]:
    """All (window, next value) pairs scaled by the training part's min/max (MinMaxScaler fit on
    train, as the tutorials do); the index of the first window whose target is held out."""
    s = airline_series()
    split = MONTHS * 2 // 3
    lo, hi = s[:split].min(), s[:split].max()
    z = (s - lo) / (hi - lo)
    X = np.stack([z[i:i + LOOKBACK] for i in range(MONTHS - LOOKBACK)])[..., None]
    y = z[LOOKBACK:, None]
    return X.astype(np.float32), y.astype(np.float32), split - LOOKBACK


@functools.lru_cache(maxsize=1)
def _trained_state() -> dict:
    X, y, first_test = _scaled_windows()
    torch.manual_seed(0)
    model = AirModel()
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    xt, yt = t(X[:first_test]), t(y[:first_test])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                         # tiny batches: threads only add contention
    try:
        for _ in range(100):                         # well under a second, full batch
            opt.zero_grad()
            F.mse_loss(model(xt), yt).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _air_build() -> nn.Module:
    model = AirModel()
    model.load_state_dict(_trained_state())
    return model.eval()


def _air_data(part: str):
    def data(n: int, seed: int) -> dict[str, np.ndarray]:
        X, y, first_test = _scaled_windows()
        lo, hi = (0, first_test) if part == "train" else (first_test, len(X))
        idx = np.random.default_rng(seed).choice(np.arange(lo, hi), n, replace=n > hi - lo)
        return {"x": X[idx], "y": y[idx]}
    return data


AIRLINE = ZooCase(
    "airline_lstm_forecast", 8, _air_build, lambda: (t(_air_data("train")(1, 0)["x"]),),
    _air_data("train"), _air_data("test"), ALL,
    "machinelearningmastery airline-passengers LSTM, trained 100 full-batch steps on the first 2/3 "
    "of a growing synthetic series; held-out windows (last 1/3) exceed the calibration range; 'y' = next value")


def _lengths(n: int, T: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + 7).integers(T // 2, T + 1, n).astype(np.int64)


def _packed_data(T: int, F_: int):
    def data(n: int, seed: int) -> dict[str, np.ndarray]:
        x, lengths = sensor(n, T, F_, seed), _lengths(n, T, seed)
        lengths[0] = T                               # pad_packed_sequence needs one full-length row
        x[np.arange(T)[None, :] >= lengths[:, None]] = 0.0
        return {"x": x, "lengths": lengths}
    return data


def _packed_case(name: str, make, notes: str, formats: tuple[str, ...]) -> ZooCase:
    T, F_ = 12, 5
    data = _packed_data(T, F_)
    ex = lambda: (t(data(3, 0)["x"]), t(data(3, 0)["lengths"]))    # noqa: E731
    return ZooCase(name, 8, lambda: _seeded(make), ex, data, lambda n, s: data(n, 1000 + s), formats,
                   notes, input_names=("x", "lengths"))


def _seeded(make) -> nn.Module:
    torch.manual_seed(0)
    return make().eval()


CASES = [
    simple_case("tutorial_lstm_tagger", 8, lambda: LSTMTagger(6, 8, 20, 4), T=9, F=0, tokens=20, layout="T",
                formats=ALL, notes="PyTorch tutorial LSTMTagger: unbatched (T,) sentence, "
                                   "embeds.view(len(sentence), 1, -1), log_softmax(dim=1)"),
    simple_case("docs_lstm_h0_c0", 8, DocsLSTM, T=5, F=10, layout="TNF",
                extra=lambda m, b: (torch.randn(2, b, 20), torch.randn(2, b, 20)),
                extra_data=lambda n: {"h0": np.zeros((n, 2, 20), np.float32), "c0": np.zeros((n, 2, 20), np.float32)},
                input_names=("x", "h0", "c0"), formats=ALL,
                notes="torch.nn.LSTM docs: rnn = nn.LSTM(10, 20, 2); output, (hn, cn) = rnn(input, (h0, c0)), "
                      "time-major, h0/c0 are inputs"),
    simple_case("docs_bare_gru", 8, lambda: nn.GRU(10, 20, 2), T=5, F=10, layout="TNF",
                extra=lambda m, b: (torch.randn(2, b, 20),),
                extra_data=lambda n: {"hx": np.zeros((n, 2, 20), np.float32)}, input_names=("x", "hx"),
                formats=ALL, notes="torch.nn.GRU docs: the bare nn.GRU(10, 20, 2) saved as the model, "
                                   "output, hn = rnn(input, h0)"),
    simple_case("yunjey_lstm_to_device", 8, lambda: YunjeyRNN(28, 16, 2, 10), T=28, F=28, formats=ALL,
                notes="yunjey/pytorch-tutorial RNN: torch.zeros(...).to(device) states in forward, fc(out[:, -1, :])"),
    simple_case("dlwizard_lstm_detach", 8, lambda: LSTMModel(28, 16, 1, 10), T=28, F=28, formats=ALL,
                notes="deeplearningwizard LSTMModel: zeros().requires_grad_(), lstm(x, (h0.detach(), c0.detach()))"),
    simple_case("udacity_sentiment_rnn", 8, lambda: SentimentRNN(50, 1, 8, 16, 2), T=20, F=0, tokens=50,
                extra=lambda m, b: (m.init_hidden(b),),
                extra_data=lambda n: {"hidden.h": np.zeros((n, 2, 16), np.float32),
                                      "hidden.c": np.zeros((n, 2, 16), np.float32)},
                input_names=("x", "hidden.h", "hidden.c"), formats=ALL,
                notes="Udacity Sentiment_RNN: forward(x, hidden) -> (sig_out, hidden), x.long(), "
                      "contiguous().view(-1, H), sigmoid, [:, -1], init_hidden with weight.new(...).zero_()"),
    simple_case("bentrevett_bigru_hcat", 8, lambda: BiGRUClassifier(50, 8, 12, 3, 2, 0.5), T=15, F=0,
                tokens=50, formats=ALL,
                notes="bentrevett/pytorch-sentiment-analysis: 2-layer bidirectional GRU, dropout, "
                      "cat(hidden[-2], hidden[-1])"),
    simple_case("bilstm_ner_tagger", 8, BiLSTMTagger, T=14, F=0, tokens=60, formats=ALL,
                notes="NER BiLSTM tagger baseline (no CRF): bidirectional per-step outputs, Linear(2H, tags)"),
    _packed_case("packed_lstm_hn", lambda: PackedLSTMClassifier(5, 12, 3),
                 "pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False), classify from h_n[-1]", NO_EXPORT),
    _packed_case("packed_gru_pad_packed", lambda: PackedGRUTagger(5, 12, 4, 12),
                 "pack_padded_sequence + GRU + pad_packed_sequence(total_length=T), per-step head", NO_EXPORT),
    AIRLINE,
    simple_case("time_major_gru", 8, TimeMajorGRU, T=16, F=6, layout="TNF", formats=ALL,
                notes="seq-first (T, N, F) 2-layer GRU with batch_first=False, fc(out[-1])"),
    simple_case("unbatched_lstm", 8, UnbatchedLSTM, T=16, F=4, layout="TF", formats=ALL,
                notes="unbatched (T, F) float input to nn.LSTM, fc(out[-1]), softmax"),
]
