"""A model file must not run code: tampered members of a .pt2 (and of the other formats)
are refused in one line, and the code they carry never runs (a marker file would appear)."""
from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from clitools import mcu_nn, one_error_line


class _Payload:
    """Unpickling this calls eval, which writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').write('ran')",))


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.GRU(3, 8, batch_first=True)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("safe")
    torch.manual_seed(0)
    m = _Tiny().eval()
    x = torch.randn(1, 5, 3)
    files = {"pt2": d / "good.pt2", "ts": d / "good.ts"}
    torch.export.save(torch.export.export(m, (x,)), files["pt2"])
    torch.jit.save(torch.jit.trace(m, x), files["ts"])
    np.savez(d / "calib.npz", x=np.random.default_rng(0).standard_normal((8, 5, 3)).astype(np.float32))
    files["calib"] = d / "calib.npz"
    return files


def _rewrite(src: Path, dst: Path, replace: dict) -> Path:
    """Copy a zip, replacing members whose name ends with a key (value: bytes, or a function of
    the old bytes) and adding members named '+name' under the archive's top folder."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        top = zin.namelist()[0].split("/", 1)[0]
        for info in zin.infolist():
            data = zin.read(info.filename)
            for suffix, new in replace.items():
                if not suffix.startswith("+") and info.filename.endswith(suffix):
                    data = new(data) if callable(new) else new
            zout.writestr(info, data)
        for key, new in replace.items():
            if key.startswith("+"):
                zout.writestr(f"{top}/{key[1:]}", new)
    return dst


def _torch_save(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _mark_pickled(name: str):
    def edit(cfg: bytes) -> bytes:
        c = json.loads(cfg)
        c["config"][name]["use_pickle"] = True
        return json.dumps(c).encode()
    return edit


def _add_constant(path_name: str):
    def edit(cfg: bytes) -> bytes:
        c = json.loads(cfg)
        c["config"]["c0"] = {"path_name": path_name, "is_param": False, "use_pickle": True, "tensor_meta": None}
        return json.dumps(c).encode()
    return edit


def _tampered(kind: str, good: dict[str, Path], marker: Path, tmp: Path) -> Path:
    evil = _Payload(marker)
    src = good["pt2"]
    if kind == "sample_inputs (torch.save)":
        return _rewrite(src, tmp / "m.pt2", {"data/sample_inputs/model.pt": _torch_save(evil)})
    if kind == "sample_inputs (raw pickle)":
        return _rewrite(src, tmp / "m.pt2", {"data/sample_inputs/model.pt": pickle.dumps(evil, 2)})
    if kind == "weight marked pickled":
        with zipfile.ZipFile(src) as z:
            cfg = json.loads(z.read(next(n for n in z.namelist() if n.endswith("_weights_config.json"))))
        fqn, meta = next(iter(cfg["config"].items()))
        return _rewrite(src, tmp / "m.pt2", {"_weights_config.json": _mark_pickled(fqn),
                                             f"data/weights/{meta['path_name']}": _torch_save(evil)})
    if kind == "tensor constant marked pickled":
        return _rewrite(src, tmp / "m.pt2", {"_constants_config.json": _add_constant("tensor_0"),
                                             "+data/constants/tensor_0": _torch_save(evil)})
    if kind == "opaque object constant":
        return _rewrite(src, tmp / "m.pt2", {"_constants_config.json": _add_constant("opaque_obj_0"),
                                             "+data/constants/opaque_obj_0": pickle.dumps(evil, 2)})
    if kind == "extra member":
        return _rewrite(src, tmp / "m.pt2", {"+data/weights/extra.pt": _torch_save(evil)})
    if kind == "torchscript data.pkl":
        return _rewrite(good["ts"], tmp / "m.ts", {"/data.pkl": pickle.dumps(evil, 2)})
    if kind == "torchscript constants.pkl":
        return _rewrite(good["ts"], tmp / "m.ts", {"/constants.pkl": pickle.dumps(evil, 2)})
    if kind == "pickled object (torch.save)":
        (tmp / "m.pt").write_bytes(_torch_save(evil))
        return tmp / "m.pt"
    raise AssertionError(kind)


KINDS = ["sample_inputs (torch.save)", "sample_inputs (raw pickle)", "weight marked pickled",
         "tensor constant marked pickled", "opaque object constant", "extra member",
         "torchscript data.pkl", "torchscript constants.pkl", "pickled object (torch.save)"]


# Tampered the way plain torch.export.load / torch.load would run (checked below, so these
# tests cannot pass merely because the payload is dead).
LIVE_IN_TORCH = KINDS[:5] + ["pickled object (torch.save)"]


@pytest.mark.parametrize("kind", LIVE_IN_TORCH)
def test_payload_is_live_in_plain_torch(kind, good, tmp_path):
    marker = tmp_path / "code-ran"
    f = _tampered(kind, good, marker, tmp_path)
    try:
        if f.suffix == ".pt2":
            torch.export.load(str(f))
        else:
            torch.load(str(f), weights_only=False)
    except Exception:
        pass
    assert marker.exists(), f"{kind}: the tampered file no longer runs code in plain torch; the test is vacuous"


@pytest.mark.parametrize("kind,command", [(k, "inspect") for k in KINDS] +
                         [("sample_inputs (torch.save)", "export"), ("weight marked pickled", "export")])
def test_tampered_model_runs_no_code(kind, command, good, tmp_path):
    marker = tmp_path / "code-ran"
    model = _tampered(kind, good, marker, tmp_path)
    args = [command, model, "--input-shape", "5,3"]
    if command == "export":
        args += ["-o", tmp_path / "out", "--calib", good["calib"]]
    line = one_error_line(mcu_nn(*args))
    assert not marker.exists(), f"{kind}: the file's code ran during {command}"
    assert str(model) in line or model.name in line, line
    assert not (tmp_path / "out").exists()


def test_pt2_refusal_names_member_and_global(good, tmp_path):
    marker = tmp_path / "code-ran"
    line = one_error_line(mcu_nn("inspect", _tampered("sample_inputs (torch.save)", good, marker, tmp_path)))
    assert "data/sample_inputs/model.pt" in line and "eval" in line and "torch.export.save" in line


def test_untampered_files_still_load(good):
    for f in (good["pt2"],):
        r = mcu_nn("inspect", f)
        assert r.returncode == 0, r.stderr
    r = mcu_nn("inspect", good["ts"], "--input-shape", "5,3")
    assert r.returncode == 0, r.stderr


def test_pickled_calibration_runs_no_code(good, tmp_path):
    marker = tmp_path / "code-ran"
    (tmp_path / "calib.pt").write_bytes(_torch_save(_Payload(marker)))
    one_error_line(mcu_nn("export", good["pt2"], "-o", tmp_path / "out", "--calib", tmp_path / "calib.pt"))
    assert not marker.exists()
