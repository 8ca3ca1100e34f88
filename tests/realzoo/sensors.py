"""Sensor, keyword-spotting and time-series architectures as public projects write them."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ._case import simple_case

ALL = ("pt2", "torchscript", "pickle")


class HARModel(nn.Module):
    """UCI-HAR LSTM repos (e.g. "LSTM-Human-Activity-Recognition" PyTorch ports): forward(x, hidden)
    -> (out, hidden), permute to time-major inside, x.float(), init_hidden via weight.new(...).zero_()."""

    def __init__(self, n_input=9, n_hidden=32, n_layers=2, n_classes=6, drop_prob=0.5):
        super(HARModel, self).__init__()
        self.n_layers, self.n_hidden, self.drop_prob = n_layers, n_hidden, drop_prob
        self.lstm = nn.LSTM(n_input, n_hidden, n_layers, dropout=self.drop_prob)
        self.fc = nn.Linear(n_hidden, n_classes)
        self.dropout = nn.Dropout(drop_prob)

    def forward(self, x, hidden):
        x = x.permute(1, 0, 2)
        x = x.float()
        x, hidden = self.lstm(x, hidden)
        x = self.dropout(x)
        out = x[-1]
        out = out.contiguous().view(-1, self.n_hidden)
        out = self.fc(out)
        return out, hidden

    def init_hidden(self, batch_size):
        """Initializes hidden state: two new tensors with sizes n_layers x batch_size x n_hidden, zeroed."""
        weight = next(self.parameters()).data
        hidden = (weight.new(self.n_layers, batch_size, self.n_hidden).zero_(),
                  weight.new(self.n_layers, batch_size, self.n_hidden).zero_())
        return hidden


class KWSConvGRU(nn.Module):
    """CRNN keyword spotter (Arik et al. 2017 / hello-edge style): MFCC (N, T, F) -> Conv1d over time
    with BatchNorm, ReLU, MaxPool -> GRU -> Linear on the last step."""

    def __init__(self, n_mfcc=10, channels=16, hidden=24, n_keywords=12):
        super().__init__()
        self.conv = nn.Conv1d(n_mfcc, channels, kernel_size=5, stride=1, padding=2)
        self.bn = nn.BatchNorm1d(channels)
        self.pool = nn.MaxPool1d(2)
        self.gru = nn.GRU(channels, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, n_keywords)

    def forward(self, x):
        x = x.transpose(1, 2)                  # (N, F, T) for Conv1d
        x = self.pool(F.relu(self.bn(self.conv(x))))
        x = x.permute(0, 2, 1)                 # back to (N, T', C)
        out, _ = self.gru(x)
        return self.fc(out[:, -1, :])


class AttnGRU(nn.Module):
    """CNN + GRU + attention pooling (keyword spotting / SER repos): scores = Linear(H, 1) per step,
    softmax over time (dim=1), weighted sum over time, Linear head."""

    def __init__(self, n_in=10, channels=16, hidden=24, n_classes=8):
        super().__init__()
        self.cnn = nn.Sequential(nn.Conv1d(n_in, channels, 3, padding=1), nn.BatchNorm1d(channels), nn.ReLU())
        self.gru = nn.GRU(channels, hidden, batch_first=True)
        self.attn = nn.Linear(hidden, 1)
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, x):
        x = self.cnn(x.transpose(1, 2)).transpose(1, 2)
        out, _ = self.gru(x)                                 # (N, T, H)
        weights = torch.softmax(self.attn(out), dim=1)       # (N, T, 1)
        context = torch.sum(weights * out, dim=1)            # (N, H)
        return self.fc(context)


class Encoder(nn.Module):
    """curiousily "Time Series Anomaly Detection using LSTM Autoencoders with PyTorch" (ECG5000):
    one unbatched sequence, reshaped to (1, T, F) inside."""

    def __init__(self, seq_len, n_features, embedding_dim=8):
        super(Encoder, self).__init__()
        self.seq_len, self.n_features = seq_len, n_features
        self.embedding_dim, self.hidden_dim = embedding_dim, 2 * embedding_dim
        self.rnn1 = nn.LSTM(input_size=n_features, hidden_size=self.hidden_dim, num_layers=1, batch_first=True)
        self.rnn2 = nn.LSTM(input_size=self.hidden_dim, hidden_size=embedding_dim, num_layers=1, batch_first=True)

    def forward(self, x):
        x = x.reshape((1, self.seq_len, self.n_features))
        x, (_, _) = self.rnn1(x)
        x, (hidden_n, _) = self.rnn2(x)
        return hidden_n.reshape((self.n_features, self.embedding_dim))


class Decoder(nn.Module):
    def __init__(self, seq_len, input_dim=8, n_features=1):
        super(Decoder, self).__init__()
        self.seq_len, self.input_dim = seq_len, input_dim
        self.hidden_dim, self.n_features = 2 * input_dim, n_features
        self.rnn1 = nn.LSTM(input_size=input_dim, hidden_size=input_dim, num_layers=1, batch_first=True)
        self.rnn2 = nn.LSTM(input_size=input_dim, hidden_size=self.hidden_dim, num_layers=1, batch_first=True)
        self.output_layer = nn.Linear(self.hidden_dim, n_features)

    def forward(self, x):
        x = x.repeat(self.seq_len, self.n_features)
        x = x.reshape((self.n_features, self.seq_len, self.input_dim))
        x, (hidden_n, cell_n) = self.rnn1(x)
        x, (hidden_n, cell_n) = self.rnn2(x)
        x = x.reshape((self.seq_len, self.hidden_dim))
        return self.output_layer(x)


class RecurrentAutoencoder(nn.Module):
    def __init__(self, seq_len, n_features, embedding_dim=8):
        super(RecurrentAutoencoder, self).__init__()
        self.encoder = Encoder(seq_len, n_features, embedding_dim)
        self.decoder = Decoder(seq_len, embedding_dim, n_features)

    def forward(self, x):
        x = self.encoder(x)
        x = self.decoder(x)
        return x


class LSTMAutoencoder(nn.Module):
    """Batched LSTM autoencoder (anomaly-detection repos): h_n[-1] -> unsqueeze(1).expand(-1, T, -1)
    -> decoder LSTM -> Linear per step."""

    def __init__(self, n_features=3, latent=8, seq_len=20):
        super().__init__()
        self.seq_len = seq_len
        self.encoder = nn.LSTM(n_features, latent, batch_first=True)
        self.decoder = nn.LSTM(latent, 16, batch_first=True)
        self.out = nn.Linear(16, n_features)

    def forward(self, x):
        _, (h, _) = self.encoder(x)
        z = h[-1].unsqueeze(1).expand(-1, self.seq_len, -1)
        y, _ = self.decoder(z)
        return self.out(y)


class LSTMAutoencoderRepeat(LSTMAutoencoder):
    """Same autoencoder, the other common spelling: h_n[-1].unsqueeze(1).repeat(1, T, 1)."""

    def forward(self, x):
        _, (h, _) = self.encoder(x)
        z = h[-1].unsqueeze(1).repeat(1, self.seq_len, 1)
        y, _ = self.decoder(z)
        return self.out(y)


class MobileGRU(nn.Module):
    """PyTorch Mobile deployment style: a plain GRU classifier saved with torch.jit.script
    (then optimize_for_mobile in the app repo), flatten of the final hidden state."""

    def __init__(self, n_in=6, hidden=16, n_classes=4):
        super().__init__()
        self.gru = nn.GRU(n_in, hidden, num_layers=2, batch_first=True, dropout=0.2)
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h = self.gru(x)
        return torch.softmax(self.fc(h[-1]), dim=1)


class GRULayerNorm(nn.Module):
    """GRU followed by nn.LayerNorm over features (common "normalise the RNN output" pattern)."""

    def __init__(self, n_in=6, hidden=24, n_classes=4):
        super().__init__()
        self.gru = nn.GRU(n_in, hidden, batch_first=True)
        self.norm = nn.LayerNorm(hidden)
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, x):
        out, _ = self.gru(x)
        out = self.norm(out)
        return self.fc(out[:, -1])


class ResidualLSTM(nn.Module):
    """Residual stacked LSTM (GNMT-style skip between layers): out = lstm2(out1)[0] + out1."""

    def __init__(self, n_in=6, hidden=16, n_classes=4):
        super().__init__()
        self.lstm1 = nn.LSTM(n_in, hidden, batch_first=True)
        self.lstm2 = nn.LSTM(hidden, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, x):
        out1, _ = self.lstm1(x)
        out = self.lstm2(out1)[0] + out1
        return self.fc(out[:, -1, :])


class RobustGRU(nn.Module):
    """Defensive habits seen in many repos: x.float().contiguous(), a learned initial state expanded
    to the batch and .clone()d, .detach() in forward, F.dropout(training=self.training)."""

    def __init__(self, n_in=6, hidden=16, n_classes=4):
        super().__init__()
        self.h0 = nn.Parameter(torch.zeros(1, 1, hidden))
        self.gru = nn.GRU(n_in, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, x):
        x = x.float().contiguous()
        h0 = self.h0.expand(-1, x.size(0), -1).contiguous().clone()
        out, h = self.gru(x.clone(), h0)
        feat = F.dropout(out[:, -1].detach(), p=0.2, training=self.training)
        return self.fc(feat)


class PerStepGRU(nn.Module):
    """Per-step classifier (sequence labelling): Linear on out.reshape(-1, H), then view(N, T, C)."""

    def __init__(self, n_in=6, hidden=16, n_tags=5):
        super().__init__()
        self.hidden = hidden
        self.gru = nn.GRU(n_in, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, n_tags)

    def forward(self, x):
        N, T, _ = x.shape
        out, _ = self.gru(x)
        logits = self.fc(out.reshape(-1, self.hidden))
        return logits.view(N, T, -1)


class MobileHeadLSTM(nn.Module):
    """MobileNetV3-flavoured head after an LSTM: Hardtanh, ReLU6, a Hardsigmoid squeeze-excite gate, LeakyReLU."""

    def __init__(self, n_in=6, hidden=16, n_classes=4):
        super().__init__()
        self.lstm = nn.LSTM(n_in, hidden, batch_first=True)
        self.fc1 = nn.Linear(hidden, 16)
        self.se = nn.Sequential(nn.Linear(16, 4), nn.ReLU6(), nn.Linear(4, 16), nn.Hardsigmoid())
        self.fc2 = nn.Linear(16, n_classes)
        self.act = nn.Hardtanh(-2.0, 2.0)
        self.leaky = nn.LeakyReLU(0.1)

    def forward(self, x):
        out, _ = self.lstm(x)
        z = self.act(self.fc1(out[:, -1]))
        z = z * self.se(z)
        return self.fc2(self.leaky(z))


class SmoothHeadGRU(nn.Module):
    """Transformer-era head habits after a GRU: GELU, SiLU, Softsign."""

    def __init__(self, n_in=6, hidden=16, n_classes=4):
        super().__init__()
        self.gru = nn.GRU(n_in, hidden, batch_first=True)
        self.head = nn.Sequential(nn.Linear(hidden, 16), nn.GELU(), nn.Linear(16, 16), nn.SiLU(),
                                  nn.Linear(16, n_classes), nn.Softsign())

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1])


class LSTMFCN(nn.Module):
    """LSTM-FCN (Karim et al. 2017) for time-series classification: an LSTM branch and a Conv1d
    (FCN) branch with global average pooling over time, concatenated along features."""

    def __init__(self, n_in=3, hidden=8, n_classes=4):
        super().__init__()
        self.lstm = nn.LSTM(n_in, hidden, batch_first=True)
        self.drop = nn.Dropout(0.8)
        self.fcn = nn.Sequential(
            nn.Conv1d(n_in, 16, 7, padding=3), nn.BatchNorm1d(16), nn.ReLU(),
            nn.Conv1d(16, 32, 5, padding=2), nn.BatchNorm1d(32), nn.ReLU(),
            nn.Conv1d(32, 16, 3, padding=1), nn.BatchNorm1d(16), nn.ReLU())
        self.fc = nn.Linear(hidden + 16, n_classes)

    def forward(self, x):
        out, _ = self.lstm(x)
        a = self.drop(out[:, -1, :])
        b = self.fcn(x.transpose(1, 2)).mean(dim=-1)          # global average pooling
        return F.log_softmax(self.fc(torch.cat([a, b], dim=-1)), dim=-1)


class PoolGRU(nn.Module):
    """Kaggle text/sequence kernels: bidirectional GRU, torch.mean and torch.max over time, concatenated."""

    def __init__(self, n_in=6, hidden=12, n_classes=3):
        super().__init__()
        self.gru = nn.GRU(n_in, hidden, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(4 * hidden, n_classes)

    def forward(self, x):
        h_gru, _ = self.gru(x)
        avg_pool = torch.mean(h_gru, 1)
        max_pool, _ = torch.max(h_gru, 1)
        conc = torch.cat((avg_pool, max_pool), 1)
        return self.fc(conc)


class LastKGRU(nn.Module):
    """Classify from the last k steps: out[:, -k:] flattened into the head."""

    def __init__(self, n_in=6, hidden=12, k=4, n_classes=3):
        super().__init__()
        self.k = k
        self.gru = nn.GRU(n_in, hidden, batch_first=True)
        self.fc = nn.Linear(k * hidden, n_classes)

    def forward(self, x):
        out, _ = self.gru(x)
        tail = out[:, -self.k:]
        return self.fc(tail.reshape(tail.size(0), -1))


class DSConvGRU(nn.Module):
    """Depthwise-separable causal TCN front end (dilated depthwise Conv1d, groups=channels, left
    padding via F.pad as in WaveNet/TCN code) feeding a GRU."""

    def __init__(self, n_in=8, hidden=16, n_classes=5, kernel=3, dilation=2):
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.dw = nn.Conv1d(n_in, n_in, kernel, dilation=dilation, groups=n_in)
        self.pw = nn.Conv1d(n_in, 16, 1)
        self.gru = nn.GRU(16, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, x):
        y = F.pad(x.transpose(1, 2), (self.pad, 0))            # causal: pad on the left only
        y = F.relu(self.pw(self.dw(y)))
        out, _ = self.gru(y.transpose(1, 2))
        return self.fc(out[:, -1])


def _har_state(n: int) -> dict[str, np.ndarray]:
    z = np.zeros((n, 2, 32), np.float32)
    return {"hidden.h": z, "hidden.c": z.copy()}


CASES = [
    simple_case("har_lstm_init_hidden", 8, HARModel, T=32, F=9, extra=lambda m, b: (m.init_hidden(b),),
                extra_data=_har_state, input_names=("x", "hidden.h", "hidden.c"), formats=ALL,
                notes="UCI-HAR LSTM repos: forward(x, hidden) -> (out, hidden), permute + x.float(), "
                      "init_hidden with weight.new(...).zero_()"),
    simple_case("kws_conv_gru", 8, KWSConvGRU, T=32, F=10, formats=ALL,
                notes="CRNN keyword spotter (hello-edge / Arik 2017): Conv1d+BatchNorm1d+ReLU+MaxPool1d, "
                      "permute, GRU, fc(out[:, -1, :])"),
    simple_case("cnn_attention_gru", 8, AttnGRU, T=24, F=10, formats=ALL,
                notes="CNN + GRU + attention pooling: softmax(Linear(H,1)(out), dim=1), sum over time"),
    simple_case("curiousily_lstm_autoencoder", 8, lambda: RecurrentAutoencoder(20, 1, 8), T=20, F=1,
                layout="TF", formats=ALL,
                notes="curiousily ECG LSTM autoencoder: unbatched (T, 1), reshape to (1, T, F), h_n -> "
                      "x.repeat(seq_len, n_features) -> decoder LSTMs -> Linear per step"),
    simple_case("lstm_autoencoder_expand", 8, LSTMAutoencoder, T=20, F=3, formats=ALL,
                notes="batched LSTM autoencoder: h_n[-1].unsqueeze(1).expand(-1, T, -1) -> decoder LSTM -> "
                      "Linear per step"),
    simple_case("lstm_autoencoder_repeat", 8, LSTMAutoencoderRepeat, T=20, F=3, formats=ALL,
                notes="batched LSTM autoencoder: h_n[-1].unsqueeze(1).repeat(1, T, 1) -> decoder LSTM -> "
                      "Linear per step"),
    simple_case("mobile_gru_scripted", 8, MobileGRU, T=16, F=6, jit="script", formats=ALL,
                notes="PyTorch Mobile style: 2-layer GRU classifier from h[-1], softmax, torch.jit.script"),
    simple_case("gru_layernorm", 8, GRULayerNorm, T=16, F=6, formats=ALL,
                notes="GRU then nn.LayerNorm(hidden) then Linear on the last step"),
    simple_case("residual_lstm", 8, ResidualLSTM, T=16, F=6, formats=ALL,
                notes="GNMT-style residual stacked LSTM: out = lstm2(out1)[0] + out1"),
    simple_case("robust_gru_clone_detach", 8, RobustGRU, T=16, F=6, formats=ALL,
                notes="x.float().contiguous(), learned h0 expand().contiguous().clone(), .detach(), "
                      "F.dropout(training=self.training)"),
    simple_case("per_step_reshape_gru", 8, PerStepGRU, T=16, F=6, formats=ALL,
                notes="sequence labelling: fc(out.reshape(-1, H)).view(N, T, -1)"),
    simple_case("lstm_mobile_head_acts", 8, MobileHeadLSTM, T=16, F=6, formats=ALL,
                notes="head with Hardtanh, ReLU6, Hardsigmoid squeeze-excite gate, LeakyReLU"),
    simple_case("gru_smooth_head_acts", 8, SmoothHeadGRU, T=16, F=6, formats=ALL,
                notes="head with GELU, SiLU, Softsign"),
    simple_case("lstm_fcn", 8, LSTMFCN, T=24, F=3, formats=ALL,
                notes="LSTM-FCN (Karim 2017): LSTM branch + Conv1d/BN/ReLU branch with mean over time, "
                      "torch.cat(dim=-1), log_softmax"),
    simple_case("kaggle_bigru_mean_max_pool", 8, PoolGRU, T=16, F=6, formats=ALL,
                notes="Kaggle kernels: bidirectional GRU, torch.mean + torch.max over time, cat"),
    simple_case("gru_last_k_steps", 8, LastKGRU, T=16, F=6, formats=ALL,
                notes="head on out[:, -k:] flattened"),
    simple_case("ds_tcn_gru", 8, DSConvGRU, T=24, F=8, formats=ALL,
                notes="depthwise Conv1d (groups=C, dilation=2) with causal F.pad(x, (pad, 0)), pointwise "
                      "Conv1d, GRU"),
]
