"""The Python API (docs/api.md): a notebook or a CI script exports a model held in memory and
checks it, getting result objects back instead of printed text. The CLI calls the same
functions underneath (``mcu_nn.pipeline``, ``verify``, ``build``, ``onboard``, ``bench``).

    import mcu_nn
    m = mcu_nn.export(model, x[:1], calib=x_train, precision="int8", name="har")
    m.simulate(x_test)              # the chip's outputs, computed on the host, bit-exact
    m.verify()                      # host C == simulator
    m.serial_test("qemu-mps2-an386", inputs=x_test, labels=y_test)
    m.save("build/har")

Nothing is written where the user can see it unless asked (``out=`` or ``save``): the export
lives in a private temporary directory (the C must exist as files to be compiled) that is
removed with the object.
"""
from __future__ import annotations

import html
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from .errors import McuNnError

PathLike = Union[str, Path]


def _silent(_: str) -> None:
    """The API returns results; the lines the CLI prints are not printed (pass log=print to see them)."""


class ExportedModel:
    """An export of one model: its manifest, the quantised model and the float one it came from,
    and the steps that follow export as methods. Returned by :func:`mcu_nn.export`."""

    def __init__(self, result: Any, *, temporary: Optional[str], log: Callable[[str], None]) -> None:
        self._result = result                   # pipeline.ExportResult
        self._log = log
        self._dir = Path(result.out_dir)
        self._temporary = temporary
        self._finalizer = (weakref.finalize(self, shutil.rmtree, temporary, ignore_errors=True)
                           if temporary else None)
        self.chip_results: list[Any] = []       # serial_test / bench results, for report()

    # ------------------------------------------------------------------ what was exported
    @property
    def manifest(self) -> dict:
        """model.json as a dict (name, precision, sizes, quantisation parameters, files and sha256)."""
        return self._result.manifest

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def accuracy(self) -> Any:
        """The quantised model vs the float one on the calibration data (pipeline.Accuracy)."""
        return self._result.accuracy

    @property
    def graph(self) -> Any:
        """The float model as mcu-nn read it (ir.Graph)."""
        return self._result.graph

    @property
    def qmodel(self) -> Any:
        """The quantised model the C implements (ir.QModel)."""
        return self._result.qmodel

    @property
    def dir(self) -> Optional[Path]:
        """The export directory, or None while it is only a private temporary one (see save)."""
        return None if self._temporary else self._dir

    @property
    def files(self) -> list[str]:
        return sorted(self.manifest["files"])

    # ------------------------------------------------------------------ host-side runs
    def _inputs(self, x: Any) -> Any:
        from .quant.calibrate import calibration_set_from
        return calibration_set_from(x, self.graph, where="inputs")

    def simulate(self, x: Any, *, integer: bool = False) -> np.ndarray:
        """The outputs the chip computes for ``x`` ((N, T, F) floats / (N, T) token ids, one
        sequence, or a list of sequences of different lengths), from the bit-exact simulator:
        dequantised floats, or the raw integers with ``integer=True``. Sequences of different
        lengths: per-step outputs are zero after each sequence's end."""
        from .codegen.export import run_padded
        from .fixedpoint import dequantize
        from .sim import run
        data = self._inputs(x)
        y = run_padded(lambda xs: run(self.qmodel, xs), data.x, data.lengths, self.qmodel.output_per_step)
        if self.precision == "float32":
            return np.asarray(y, np.float32)
        return np.asarray(y).astype(np.int16) if integer else dequantize(y, self.qmodel.output_scale)

    def float_outputs(self, x: Any) -> np.ndarray:
        """The float model's outputs for ``x`` (what PyTorch computes), for comparison."""
        from .codegen.export import run_padded
        from .sim import run_float
        data = self._inputs(x)
        return run_padded(lambda xs: run_float(self.graph, xs), data.x, data.lengths, self.graph.output_per_step)

    # ------------------------------------------------------------------ the steps after export
    def verify(self, *, cross: bool = True) -> Any:
        """Compile the C on this machine under ASan/UBSan and compare every test vector with the
        simulator (``mcu-nn verify``); returns verify.VerifyResult (``.ok``)."""
        from .verify import verify
        return verify(self._dir, cross=cross, log=self._log)

    def build(self, board: str = "qemu-mps2-an386") -> Any:
        """Firmware for ``board`` (``mcu-nn build``); returns build.BuildResult (``.elf``, sizes)."""
        from .build import build_firmware
        return build_firmware(self._dir, board, log=self._log)

    def serial_test(self, board_or_port: str = "qemu-mps2-an386", *, inputs: Any = None, labels: Any = None,
                    timeout: float = 5.0) -> Any:
        """Run sequences on a board over its serial port and compare with the simulator
        (``mcu-nn serial-test``): an emulated board by name (built and booted here) or a port
        (``/dev/ttyACM0``, ``socket://host:port``, ``auto``) of a flashed board. ``inputs``
        (and ``labels``): your own sequences instead of the export's test vectors."""
        from .boards import BOARDS
        from .onboard import serial_test
        where = {"board": board_or_port} if board_or_port in BOARDS else {"port": board_or_port}
        options: dict = {"timeout": timeout}
        if inputs is not None or labels is not None:
            options.update(inputs=inputs, labels=labels)
        r = serial_test(self._dir, log=self._log, **where, **options)
        self.chip_results.append(r)
        return r

    def bench(self, board: str = "qemu-mps2-an386") -> Any:
        """Instructions (or cycles) per step, flash and RAM on an emulated board (``mcu-nn bench``)."""
        from .bench import bench_export
        r = bench_export(self._dir, board)
        self.chip_results.append(r)
        return r

    def report(self, path: PathLike, *, labels: Any = None, calib: Any = None) -> Path:
        """Write the quantisation report (.html or .md) measured on ``calib`` (default: the
        calibration data of the export), with task accuracy when ``labels`` are given and the
        results of serial_test/bench run on this object."""
        from .report_html import write_report
        if calib is None:
            x, lengths = self._result.calibration, self._result.lengths
        else:
            data = self._inputs(calib)
            x, lengths = data.x, data.lengths
        return Path(write_report(path, self.graph, self.qmodel, calib=x, lengths=lengths, manifest=self.manifest,
                                 export_dir=self._dir, labels=labels, chip_results=self.chip_results))

    def package(self, fmt: str, out: PathLike) -> Path:
        """Lay the export out for a build system: c, cmake, arduino, zephyr, platformio, esp-idf."""
        from .formats import package
        return Path(package(self._dir, fmt, Path(out)))

    def save(self, out: PathLike) -> Path:
        """Copy the export (C, runtime, model.json, test vectors; firmware built so far) to ``out``
        and keep working there: later builds land beside it. ``out`` must be missing, empty, or an
        earlier export of the same name (replaced whole), as for ``mcu-nn export -o``."""
        from .codegen.export import check_target
        out = Path(out)
        if out.resolve() == self._dir.resolve():
            return out
        check_target(out, self.name)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(self._dir, out)
        self._dir = out
        if self._finalizer is not None:          # the temporary copy is no longer needed
            self._finalizer()
            self._finalizer, self._temporary = None, None
        return out

    # ------------------------------------------------------------------ display
    def _summary_rows(self) -> list[tuple[str, str]]:
        m, acc = self.manifest, self.accuracy
        rows = [("model", f"{m['name']} ({m.get('source_model', '?')})"), ("precision", m["precision"]),
                ("inputs", f"{m.get('input_size')} per step ({m.get('input_kind', 'float')})"),
                ("outputs", f"{m.get('output_size')} {'per step' if m.get('output_per_step') else 'per sequence'}"),
                ("model constants", f"{m['flash_bytes']:,} B"), ("RAM (state + scratch)", f"{m['ram_bytes']:,} B"),
                ("MACs per step", f"{m['macs_per_step']:,}")]
        if m["precision"] != "float32":
            top1 = f", top-1 agrees {acc.top1_agreement:.1%}" if acc.top1_agreement is not None else ""
            rows.append(("vs float model", f"SNR {acc.snr_db:.1f} dB, max abs error {acc.max_abs_error:.3g} on "
                                           f"{acc.sequences} sequences{top1}"))
        rows.append(("export", str(self._dir) + (" (temporary; save() keeps it)" if self._temporary else "")))
        rows.append(("sha256", m["sha256"]))
        return rows

    def __repr__(self) -> str:
        return "ExportedModel(\n" + "".join(f"  {k}: {v}\n" for k, v in self._summary_rows()) + ")"

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
                       f"{html.escape(v)}</td></tr>" for k, v in self._summary_rows())
        return f"<table><caption>mcu-nn export</caption>{rows}</table>"


def export(model: Any, example_input: Any = None, *, calib: Any = None, precision: str = "int8",
           name: str = "model", out: Optional[PathLike] = None, input_shape: Optional[tuple[int, ...]] = None,
           weight_layout: str = "packed", vocab: Optional[list[str]] = None, allow_pickle: bool = False,
           log: Optional[Callable[[str], None]] = None) -> ExportedModel:
    """Quantise ``model`` and generate its C, as ``mcu-nn export`` does.

    ``model``: an ``nn.Module`` (traced with ``example_input``, e.g. ``x[:1]``, or a tuple
    ``(x, state)`` for ``forward(x, state)``; or give ``input_shape=(T, F)``), a
    ``torch.export.ExportedProgram``, or the path of a model file.
    ``calib``: the inputs to choose number ranges on: an (N, T, F) array or tensor ((N, T)
    token ids), a list of sequences of different lengths, ``(x, lengths)``, or a file path;
    required for int8/int16. ``out``: the export directory (default: a private temporary one,
    see ``ExportedModel.save``). ``log=print`` shows the lines the CLI prints.
    Errors are ``mcu_nn.McuNnError`` with one line saying what to change."""
    from .pipeline import export_model
    temporary = None
    if out is None:
        temporary = tempfile.mkdtemp(prefix="mcunn-export-")
        out = Path(temporary) / "export"
    log = log or _silent
    try:
        result = export_model(model, Path(out), precision=precision, calib=calib, name=name,
                              input_shape=input_shape, allow_pickle=allow_pickle, weight_layout=weight_layout,
                              log=log, vocab=vocab, example_input=example_input)
    except BaseException:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    return ExportedModel(result, temporary=temporary, log=log)


__all__ = ["export", "ExportedModel", "McuNnError"]
