"""``mcu-nn``: the command line. A thin argparse front: every subcommand parses its
arguments and calls one function of the package; no logic lives here."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

from . import __version__
from .errors import McuNnError, McuNnWarning

DEFAULT_BOARD = "qemu-mps2-an386"

EPILOG = """\
a session, end to end:
  mcu-nn inspect har.pt2
  mcu-nn export har.pt2 -o build/har --precision int8 --calib calib.npz --name har
  mcu-nn verify build/har
  mcu-nn build build/har --board qemu-mps2-an386
  mcu-nn serial-test build/har --board qemu-mps2-an386
  mcu-nn bench build/har --board qemu-mps2-an386
  mcu-nn generate build/char_lm --prefix "time traveller" -n 100   (language models)

`mcu-nn demo` runs all of it on a tiny model it trains itself.
`mcu-nn COMMAND --help` explains each step."""


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(t) for t in text.replace("x", ",").split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected T,F (e.g. 128,6) or T for token models, got {text!r}")
    if not dims or len(dims) > 2 or min(dims) <= 0:
        raise argparse.ArgumentTypeError(f"expected T,F (e.g. 128,6) or T for token models, got {text!r}")
    return dims


def _finite(text: str, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return v


def _whole(text: str, what: str, lo: int, hi: int) -> int:
    try:
        v = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not lo <= v <= hi:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return v


MAX_TIMEOUT = 86400.0       # a day: beyond it, a reply is not coming


def _seconds(text: str) -> float:
    """--timeout: seconds, finite, > 0 and at most a day."""
    v = _finite(text, "seconds above 0 and at most 86400")
    if not 0 < v <= MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(f"expected seconds above 0 and at most 86400, got {text!r}")
    return v


def _tcp_port(text: str) -> int:
    """--listen: a TCP port 1..65535."""
    return _whole(text, "a TCP port 1..65535", 1, 65535)


def _tokens(text: str) -> int:
    """generate -n: tokens after the prefix, 0..100000 (device.generate.MAX_TOKENS)."""
    return _whole(text, "a number of tokens 0..100000", 0, 100_000)


def _temperature(text: str) -> float:
    """--temperature: 0 (greedy) or 0.001..1000."""
    v = _finite(text, "a temperature 0.001..1000 (0: greedy)")
    if not (v == 0 or 0.001 <= v <= 1000):
        raise argparse.ArgumentTypeError(f"expected a temperature 0.001..1000 (0: greedy), got {text!r}")
    return v


def _seed(text: str) -> int:
    """--seed: the sampler's PRNG seed, 0..2^32-1."""
    return _whole(text, "a seed 0..4294967295", 0, (1 << 32) - 1)


def _add_allow_modified(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-modified", action="store_true",
                   help="accept export files that differ from the sha256 in model.json (you edited them on "
                        "purpose); the output says so, and firmware built from them reports it in HELLO")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a torch.export archive (.pt2), a TorchScript file (torch.jit.save), "
                                 "or a pickled module (torch.save(model), needs --allow-pickle)")
    p.add_argument("--input-shape", type=_shape, metavar="T,F",
                   help="sequence length and features per step (T alone for token models); "
                        "needed for TorchScript and pickled files, read from the example inputs of a .pt2")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow loading a pickled nn.Module; unpickling runs code from the file, "
                        "so only use it on files you trust")


def _add_verbosity(p: argparse.ArgumentParser, **default) -> None:
    p.add_argument("-q", "--quiet", action="store_true", **default,
                   help="no progress bars and no progress lines: only warnings, errors and the result")
    p.add_argument("-v", "--verbose", action="store_true", **default,
                   help="more detail on stderr (each stage and how long it took)")


def _add_json(p: argparse.ArgumentParser, what: str = "the result") -> None:
    p.add_argument("--json", action="store_true",
                   help=f"print {what} as one JSON object on stdout (docs/json.md); other lines go to stderr")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="mcu-nn", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Put PyTorch LSTM/GRU/RNN models on microcontrollers as fixed-point C that is "
                    "bit-exact with a simulator, and prove it on the chip.")
    ap.add_argument("--version", action="version", version=f"mcu-nn {__version__}")
    _add_verbosity(ap)
    # -q/-v also after the subcommand; SUPPRESS: a subcommand that does not see them keeps the global value
    common = argparse.ArgumentParser(add_help=False)
    _add_verbosity(common, default=argparse.SUPPRESS)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    def cmd(name: str, help: str, description: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=description, epilog="example:\n  " + example,
                              formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common])

    p = cmd("inspect", "show layers, parameters, MACs per step and model constants/state per precision",
            "Read a model file and print what mcu-nn understood of it: each layer with its parameters, "
            "multiply-accumulates per time step, its model constants (flash) and model state (RAM) at each precision (docs/sizes.md). "
            "Writes nothing.", "mcu-nn inspect har.pt2")
    _add_model_args(p)
    _add_json(p, "the layers and sizes")

    p = cmd("export", "quantise a model and write its C, manifest and test vectors",
            "Quantise a model and generate C99 for it: NAME.h, NAME.c, the runtime (mcunn_fixedpoint.h/.c), "
            "model.json (the manifest) and "
            "test_vectors.npz (inputs and the simulator's expected outputs). Prints per-layer sizes and "
            "how closely the quantised model follows the float one on the calibration data.",
            "mcu-nn export har.pt2 -o build/har --precision int8 --calib calib.npz --name har")
    _add_model_args(p)
    p.add_argument("-o", "--out", required=True, metavar="DIR",
                   help="export directory: created, or replaced whole if it holds an earlier export of the same "
                        "name (written to a temporary folder and renamed, so an interrupted export leaves none)")
    p.add_argument("--precision", choices=["int8", "int16", "float32"], default="int8",
                   help="int8: 8-bit weights, 16-bit activations (smallest); int16: 16-bit weights; "
                        "float32: for parts with an FPU (default: int8)")
    p.add_argument("--calib", metavar="FILE",
                   help="calibration inputs, N×T×F (.npz/.npy/.pt; token ids N×T for embedding models), in "
                        "time order if the data trends; sequences of different lengths: .npz with 'x' "
                        "zero-padded plus 'lengths', or one array per sequence (np.savez(f, *seqs)). "
                        "'random' uses random data and warns. Required for int8/int16.")
    p.add_argument("--name", help="C prefix of the generated API (default: the file name)")
    p.add_argument("--weight-layout", choices=["packed", "wide"], default="packed",
                   help="int8 only: 'packed' keeps weights as bytes (smallest); 'wide' stores them as "
                        "int16: one extra byte of flash per recurrent weight, for fewer instructions on some "
                        "shapes of Cortex-M4/M7 and more on others (a 600-input model ran slower), and about 5%% "
                        "fewer cycles where it pays (docs/performance.md): export both and compare with "
                        "`mcu-nn bench` on your shape")
    p.add_argument("--report", metavar="FILE", help="also write a quantisation report (.html or .md): "
                                                    "error per layer and gate, calibration ranges, plots")
    p.add_argument("--report-labels", metavar="FILE", help="class labels of the calibration sequences for the "
                   "report's task accuracy: an .npy/.npz of integers (FILE.npz:KEY picks an array), or the name "
                   "of an array in the --calib .npz (e.g. y)")
    p.add_argument("--vocab", metavar="FILE", help="language models: the tokens in id order (a text file whose "
                                                   "characters are the tokens, or a JSON list), stored in the "
                                                   "export as vocab.json for `mcu-nn generate`")
    _add_json(p, "the summary")

    p = cmd("report", "re-render an export's quantisation report, with the chip's results",
            "Write the quantisation report of an export again from its model.json (no model needed; "
            "saved by export --report), or measure it afresh on --calib inputs with the float and "
            "quantised models the export keeps, adding serial-test / bench results saved with --json: "
            "the verdict then covers the chip too.",
            "mcu-nn serial-test build/har --json > st.json && mcu-nn report build/har -o report.html --chip st.json")
    p.add_argument("dir", metavar="DIR", help="an export directory (exported with --report)")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="the report to write (.html or .md)")
    p.add_argument("--chip", nargs="+", action="extend", default=[], metavar="RESULTS.json",
                   help="output of `mcu-nn serial-test --json` or `mcu-nn bench --json` (one or more files)")
    p.add_argument("--calib", metavar="FILE", help="measure again on these inputs (as export's --calib) with the "
                                                   "float and quantised models the export keeps, instead of "
                                                   "re-rendering the data saved by export --report")
    p.add_argument("--labels", metavar="KEY|FILE", help="with --calib: class labels of those sequences (a key of "
                                                        "the --calib .npz, or an .npy/.npz file)")

    p = cmd("verify", "compile the export on this machine and compare with the simulator, bit for bit",
            "Compile the exported C with the host compiler under address and undefined-behaviour "
            "sanitizers, run every test vector through model_run and model_step, and compare with the "
            "simulator: zero differing bits for int8/int16, the stated tolerance for float32. Also "
            "cross-compiles for Cortex-M4 when arm-none-eabi-gcc is installed and prints the model code, model constants and shared runtime it takes (docs/sizes.md).",
            "mcu-nn verify build/har")
    p.add_argument("dir", metavar="DIR", help="an export directory")
    p.add_argument("--no-cross", action="store_true", help="skip the Cortex-M4 cross-compile")
    _add_json(p, "the comparison and sizes")
    _add_allow_modified(p)

    p = cmd("build", "build firmware (inference server + model) for a board",
            "Build the serial inference server around an exported model for a board. "
            "Writes DIR/firmware/BOARD/firmware.elf (+ .bin/.hex) and prints the whole firmware's flash and RAM use.",
            "mcu-nn build build/har --board qemu-mps2-an386")
    p.add_argument("dir", metavar="DIR", help="an export directory")
    p.add_argument("--board", default=DEFAULT_BOARD, help=f"board name (default {DEFAULT_BOARD}); "
                                                          "`mcu-nn boards` lists them")
    _add_json(p, "the firmware's paths and sizes")
    _add_allow_modified(p)

    p = cmd("package", "lay an export out for a firmware build system (CMake, Arduino, Zephyr, ...)",
            "Copy a checked export's C (byte for byte: the model hash serial-test checks is unchanged) "
            "into the layout of a build system, with its files: c (the export folder), cmake "
            "(add_subdirectory -> mcunn::NAME), arduino (a library + OUT.zip), zephyr (an external "
            "module), platformio (library.json), esp-idf (a component). package.json lists every file "
            "with its sha256. OUT may be missing, empty or an earlier package (replaced whole).",
            "mcu-nn package build/har --format cmake -o firmware/lib/har")
    p.add_argument("dir", metavar="DIR", help="an export directory")
    p.add_argument("--format", required=True, metavar="F",
                   help="c, cmake, arduino, zephyr, platformio or esp-idf")
    p.add_argument("-o", "--out", metavar="OUT", help="output directory (default: DIR-F beside DIR)")

    p = cmd("flash", "flash firmware to a board (or boot it in the emulator)",
            "Flash a firmware image. For an emulated board this boots the image in QEMU and serves its "
            "UART on 127.0.0.1:PORT until stopped (Ctrl-C); for a real board it runs the board's "
            "flashing tool (pyocd, openocd, avrdude, esptool) and returns. An image built for another "
            "board (the ELF records its board) is refused.",
            "mcu-nn flash build/har/firmware/qemu-mps2-an386/firmware.elf --board qemu-mps2-an386 "
            "--listen 4321")
    p.add_argument("firmware", metavar="FIRMWARE", help="firmware.elf from `mcu-nn build`")
    p.add_argument("--board", default=DEFAULT_BOARD, help=f"board name (default {DEFAULT_BOARD})")
    p.add_argument("--listen", type=_tcp_port, metavar="PORT", help="emulated boards: TCP port for the UART")
    p.add_argument("--port", metavar="DEVICE", help="boards flashed through a serial bootloader (avrdude, "
                                                   "esptool): their port, or 'auto' for the one known adapter")

    p = cmd("serial-test", "run the test vectors (or your data) on a board, compared bit for bit",
            "Send every test vector to the board (RUN, and STEP one step at a time), compare each output "
            "with the simulator and print a summary with cycles per step. With --inputs, send your own "
            "sequences instead (any lengths) and also report the board's SNR and top-1 agreement against "
            "the float model and, with --labels, the accuracy of the board and of the float model "
            "(docs/validation.md). With --board and no --port, builds the firmware if needed and boots "
            "the emulator itself. Exit 1 when the board differs from the simulator.",
            "mcu-nn serial-test build/har --inputs data.npz --labels y --json\n"
            "  mcu-nn serial-test build/har --port socket://127.0.0.1:4321")
    p.add_argument("dir", metavar="DIR", help="an export directory")
    p.add_argument("--port", metavar="URL", nargs="+", action="extend",
                   help="/dev/ttyACM0, COM3, socket://HOST:PORT, rfc2217://HOST:PORT (ser2net, a labgrid exporter), "
                        "labgrid://PLACE (a labgrid place: acquired, its serial port used, released; docs/farms.md), "
                        "or 'auto': the one port of a known probe or USB-serial adapter (ST-Link, CMSIS-DAP, "
                        "J-Link, CH340, CP210x, FTDI, Arduino, Pico). Several (DIR --port P1 P2, or repeated): "
                        "tested in parallel, one result each, exit 1 if any fails (docs/farms.md)")
    p.add_argument("--board", nargs="+", action="extend",
                   help=f"board to boot when no --port is given (default {DEFAULT_BOARD}); several (DIR --board A B, "
                        "or repeated): each booted in its own emulator and tested in parallel")
    p.add_argument("--timeout", type=_seconds, default=5.0, help="seconds to wait for each reply (default 5)")
    p.add_argument("--inputs", metavar="FILE",
                   help="your sequences instead of the test vectors: N×T×F (.npz/.npy/.pt; token ids N×T); "
                        "different lengths: .npz with 'x' zero-padded plus 'lengths', or one array per "
                        "sequence (np.savez(f, *seqs))")
    p.add_argument("--labels", metavar="KEY|FILE",
                   help="one integer class per sequence of --inputs: a key of the inputs .npz (e.g. y) or a "
                        ".npy/.npz file; adds the accuracy of the board and of the float model")
    p.add_argument("--soak", type=int, metavar="N",
                   help="instead of the test vectors, stream N random sequences in the model's calibrated input "
                        "range (some much longer, via RUN_DATA chunks or STEP), pipelined, each compared with the "
                        "simulator; progress every few seconds, stops at the first mismatch (docs/soak.md)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --soak sequences (default 0)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout (docs/validation.md), progress lines on stderr")
    _add_allow_modified(p)

    p = cmd("bench", "count instructions per step on a board (emulated: exact under -icount)",
            "Build the export for a board, run it, and report instructions (or cycles) per time step, "
            "per multiply-accumulate, model code, model constants, shared runtime and RAM. Every output is "
            "checked bit for bit against the simulator. The path column names the kernels that ran: mve "
            "(Helium), simd (DSP), v7m (Cortex-M3), v6m (Cortex-M0/M0+), portable or mixed. Integer models "
            "with float inputs also show <name>_step_f32 (the step with its input quantisation) and one "
            "step's inputs quantised value by value with <name>_quantize_input.",
            "mcu-nn bench build/har --board qemu-mps2-an386")
    p.add_argument("dir", metavar="DIR", help="an export directory")
    p.add_argument("--board", nargs="+", action="extend",
                   help=f"board name (default {DEFAULT_BOARD}); several (DIR --board A B, or repeated): measured in "
                        "parallel, one row each, exit 1 if any fails")
    _add_json(p, "the figures (a list of models) instead of a table")
    _add_allow_modified(p)

    p = cmd("generate", "a language model writes text on the board, compared with the simulator",
            "Feed a prefix to a language model (one-hot or embedding -> RNN/GRU/LSTM -> one logit per token, "
            "with a streaming step) and feed back each token it produces, on the board: the firmware runs "
            "the generation loop itself (the GENERATE command). The simulator generates from the same "
            "prefix; both texts are printed and must be identical. Greedy (argmax, ties to the lowest id) "
            "unless --temperature: then tokens are sampled with an integer PRNG and softmax that chip and "
            "simulator compute alike. With --board and no --port, builds the firmware if needed and boots "
            "the emulator.",
            'mcu-nn generate build/char_lm --prefix "time traveller" -n 100 --temperature 0.8 --seed 1')
    p.add_argument("dir", metavar="DIR", help="an export directory of a language model")
    p.add_argument("--prefix", required=True, help="text to start from (every character must be in the vocabulary)")
    p.add_argument("-n", type=_tokens, default=100, metavar="N", help="tokens to generate after the prefix (default 100)")
    p.add_argument("--temperature", type=_temperature, metavar="T",
                   help="sample at this temperature (0.001..1000, in steps of 0.001); default: greedy")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the sampler's PRNG (0..2^32-1, default 0)")
    p.add_argument("--vocab", metavar="FILE", help="the tokens in id order: a text file whose characters are the "
                                                   "tokens, or a JSON list (default: vocab.json stored at export)")
    p.add_argument("--port", metavar="URL", help="/dev/ttyACM0, COM3, socket://HOST:PORT, rfc2217://..., or 'auto': the one "
                                               "port of a known probe or USB-serial adapter (ST-Link, CMSIS-DAP, "
                                               "J-Link, CH340, CP210x, FTDI, Arduino, Pico)")
    p.add_argument("--board", help=f"board to boot when no --port is given (default {DEFAULT_BOARD})")
    p.add_argument("--timeout", type=_seconds, default=10.0, help="seconds to wait for each reply (default 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the texts")
    _add_allow_modified(p)

    p = cmd("boards", "list the boards mcu-nn knows", "List the known boards with their architecture, core, "
            "memory, counter and how they are flashed or emulated (rows: mcu_nn/firmware/boards/*/board.toml; "
            "docs/boards.md).", "mcu-nn boards --json")
    _add_json(p, "the boards (a list)")

    p = cmd("demo", "train a tiny model and take it all the way to the emulated board",
            "Train a tiny LSTM on synthetic sensor data, export it as int8, verify it on the host, "
            "build firmware, boot the emulated Cortex-M4 and compare its answers with the simulator.",
            "mcu-nn demo --out demo-out")
    p.add_argument("--out", default="mcu-nn-demo", metavar="DIR", help="working directory (default ./mcu-nn-demo)")
    p.add_argument("--board", default=DEFAULT_BOARD, help=f"emulated board (default {DEFAULT_BOARD})")
    return ap


# ----------------------------------------------------------------------------- commands
def _info(a: argparse.Namespace):
    """Where a command's progress lines go: stdout, stderr under --json (stdout holds only the
    JSON), nowhere under -q."""
    if a.quiet:
        return lambda s: None
    return (lambda s: print(s, file=sys.stderr)) if getattr(a, "json", False) else print


def _json(command: str, payload: dict) -> None:
    from .jsonout import dumps
    print(dumps(command, payload))


def _inspect(a: argparse.Namespace) -> int:
    from .report import inspect_model
    r = inspect_model(a.model, allow_pickle=a.allow_pickle, input_shape=a.input_shape)
    _json("inspect", r.as_dict()) if a.json else print(r.text())
    return 0


def _export(a: argparse.Namespace) -> int:
    from .pipeline import export_model
    from .report import export_dict, export_summary
    from .report_html import report_labels_arg
    labels = report_labels_arg(a.report, a.report_labels, a.calib)     # a bad file fails before the export
    result = export_model(a.model, a.out, precision=a.precision, calib=a.calib, name=a.name,
                          input_shape=a.input_shape, allow_pickle=a.allow_pickle,
                          weight_layout=a.weight_layout, vocab=_vocab(a.vocab), log=_info(a))
    if not a.json:
        print(export_summary(result))
    report = None
    if a.report:
        from .report_html import write_report
        path = write_report(a.report, result.graph, result.qmodel, calib=result.calibration,
                            lengths=result.lengths, labels=labels,
                            manifest=result.manifest, export_dir=Path(a.out), model=a.model)
        report = str(path)
        _info(a)(f"wrote {path}")
    if a.json:
        _json("export", {**export_dict(result), "report": report})
    return 0


def _report(a: argparse.Namespace) -> int:
    from .report_html import load_chip_results, rerender
    if a.labels and not a.calib:
        raise McuNnError("--labels needs --calib: they label the sequences the report measures on")
    print(f"wrote {rerender(Path(a.dir), a.out, chip=load_chip_results(a.chip), calib=a.calib, labels=a.labels)}")
    return 0


def _verify(a: argparse.Namespace) -> int:
    from .verify import verify
    result = verify(Path(a.dir), cross=not a.no_cross, allow_modified=a.allow_modified, log=lambda s: None)
    _json("verify", result.as_dict()) if a.json else print(result.text())
    return 0 if result.ok else 1


def _build(a: argparse.Namespace) -> int:
    from .build import build_firmware
    r = build_firmware(Path(a.dir), a.board, allow_modified=a.allow_modified,
                       log=(lambda s: print(s, file=sys.stderr)) if a.json else print)
    if a.json:
        _json("build", r.as_dict())
    return 0


def _flash(a: argparse.Namespace) -> int:
    from .flash import flash
    return flash(Path(a.firmware), a.board, listen=a.listen, port=a.port)


def _serial_test(a: argparse.Namespace) -> int:
    from .onboard import serial_test
    if a.labels is not None and a.inputs is None:
        raise McuNnError("--labels needs --inputs: the labels belong to your sequences, not to the test vectors")
    ports, boards = a.port or [], a.board or []
    if a.soak is not None and len(ports) + len(boards) > 1 and not (len(ports) == 1 and len(boards) == 1):
        raise McuNnError("--soak runs on one board or port at a time; start one soak per board")
    if len(ports) + len(boards) > 1 and not (len(ports) == 1 and len(boards) == 1):
        return _farm_serial_test(a, ports, boards)
    board = boards[0] if boards else (None if ports else DEFAULT_BOARD)
    port = ports[0] if ports else None
    if a.soak is not None:
        if a.inputs is not None:
            raise McuNnError("--soak draws its own random sequences: leave out --inputs")
        if a.soak < 1:
            raise McuNnError(f"--soak needs at least 1 sequence, got {a.soak}")
        result = serial_test(Path(a.dir), port=port, board=board, timeout=a.timeout, log=_info(a),
                             allow_modified=a.allow_modified, soak=a.soak, seed=a.seed)
        if a.json:
            _json("soak", result.as_dict())            # its own fields (docs/json.md#soak)
        elif a.quiet:
            print(result.summary_lines()[0])
        return 0 if result.ok else 1
    result = serial_test(Path(a.dir), port=port, board=board, timeout=a.timeout,
                         log=_info(a), allow_modified=a.allow_modified, inputs=a.inputs, labels=a.labels)
    if a.json:
        _json("serial-test", result.as_dict())
    elif a.quiet:                                  # -q: the result line only
        print(f"{result.passed}/{result.sequences} sequences passed (board vs simulator)")
    return 0 if result.ok else 1


def _farm_serial_test(a: argparse.Namespace, ports: list, boards: list) -> int:
    """Several boards or ports: in parallel (mcu_nn.farm), one result each and a summary (docs/farms.md)."""
    from .farm import serial_test_many
    if ports and boards:
        raise McuNnError("give several --port or several --board, not both (a --port is a board already running)")
    r = serial_test_many(Path(a.dir), boards=boards, ports=ports, timeout=a.timeout, log=_info(a),
                         allow_modified=a.allow_modified, inputs=a.inputs, labels=a.labels)
    if a.json:
        _json("serial-test", r.as_dict())
    else:
        print(r.text())                            # one line per board and the verdict, also under -q
    return 0 if r.ok else 1


def _bench(a: argparse.Namespace) -> int:
    from .bench import bench_export, bench_payload, bench_text
    boards = a.board or [DEFAULT_BOARD]
    if len(boards) > 1:
        from .farm import bench_many
        fr = bench_many(Path(a.dir), boards, allow_modified=a.allow_modified, log=_info(a))
        done = [t.result for t in fr.targets if t.result is not None]
        if a.json:
            _json("bench", fr.as_dict())
        else:
            if done:
                print(bench_text(done))
            print("\n".join(fr.summary_lines()))
        return 0 if fr.ok else 1
    r = bench_export(Path(a.dir), boards[0], allow_modified=a.allow_modified)
    _json("bench", bench_payload([r])) if a.json else print(bench_text([r]))
    return 0


def _vocab(path: Optional[str]) -> Optional[list[str]]:
    from .generate import read_vocab
    return read_vocab(path) if path else None


def _generate(a: argparse.Namespace) -> int:
    import json
    from .onboard import generate
    board = a.board or (None if a.port else DEFAULT_BOARD)
    log = (lambda s: print(s, file=sys.stderr)) if a.json else print
    r = generate(Path(a.dir), a.prefix, a.n, port=a.port, board=board, temperature=a.temperature, seed=a.seed,
                 vocab=a.vocab, timeout=a.timeout, log=log, allow_modified=a.allow_modified)
    how = (f"sampled at temperature {r.temperature_milli / 1000:g}, seed {r.seed}" if r.temperature_milli
           else "greedy")
    if a.json:
        _json("generate", r.as_dict())
    else:
        print(f"--- board ({r.device.board}, {how}) ---\n{r.board_text}\n--- simulator ---\n{r.sim_text}\n---")
        if r.per_step is not None:
            print(f"{r.unit} per step on the board (model step + sampling): {r.per_step:,.0f}")
    if not r.ok:
        k = r.first_difference()
        raise McuNnError(f"the board's text differs from the simulator's from generated token {k} on "
                         f"(board id {r.board_ids[k] if k < len(r.board_ids) else None}, simulator id "
                         f"{r.sim_ids[k] if k < len(r.sim_ids) else None})")
    if not a.json:
        print(f"identical: {len(r.board_ids)} tokens, board == simulator")
    return 0


def _boards(a: argparse.Namespace) -> int:
    from .boards import BOARDS, board_summary, describe_boards
    _json("boards", {"boards": [board_summary(b) for b in BOARDS.values()]}) if a.json else print(describe_boards())
    return 0


def _package(a: argparse.Namespace) -> int:
    from .formats import package
    out = package(Path(a.dir), a.format, Path(a.out) if a.out else None)
    print(f"{a.format} package of {a.dir} written to {out}")
    if a.format == "arduino":
        print(f"for Sketch > Include Library > Add .ZIP Library: {out}.zip")
    return 0


def _demo(a: argparse.Namespace) -> int:
    from .demo import run_demo
    return run_demo(Path(a.out), board=a.board)


COMMANDS = {"inspect": _inspect, "export": _export, "verify": _verify, "build": _build,
            "flash": _flash, "serial-test": _serial_test, "bench": _bench, "generate": _generate, "boards": _boards, "package": _package,
            "demo": _demo}
COMMANDS["report"] = _report


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"mcu-nn: warning: {message}", file=sys.stderr)


def _line_buffered() -> None:
    """Piped into a CI log, Python block-buffers stdout: every line of a 3-minute export would
    appear at the end. One line at a time, as on a terminal."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)   # absent on captured/replaced streams
        if reconfigure is not None:
            reconfigure(line_buffering=True)


def _verbosity(quiet: bool, verbose: bool) -> None:
    """-q: no bars (progress.set_enabled(False)); -v: the package's debug lines (each stage and
    its time) on stderr. Neither: bars on a terminal only, no debug lines."""
    import logging
    from . import progress
    progress.set_enabled(False if quiet else None)
    logger = logging.getLogger("mcu_nn")
    for h in [h for h in logger.handlers if getattr(h, "_mcu_nn_cli", False)]:
        logger.removeHandler(h)
    if verbose:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("mcu-nn: %(message)s"))
        h._mcu_nn_cli = True
        logger.addHandler(h)
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING)


def _interrupted() -> int:
    """Ctrl-C (or SIGTERM under flash): one line and 130. Further Ctrl-Cs are ignored from here
    on, so the line and the exit are not themselves interrupted into a traceback."""
    import signal
    import threading
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    warnings.simplefilter("ignore")      # sockets and pipes the interrupt left open: not for the user
    print("mcu-nn: interrupted", file=sys.stderr)
    return 130


def main(argv: Optional[Sequence[str]] = None) -> int:
    import signal
    import threading
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main_thread else None
    hook = sys.unraisablehook

    def unraisable(u) -> None:      # a Ctrl-C that lands in a finaliser (__del__): the main path has its own
        if not isinstance(u.exc_value, KeyboardInterrupt):
            hook(u)
    sys.unraisablehook = unraisable
    try:
        return _main(argv)
    except KeyboardInterrupt:       # while reporting an error, or a second Ctrl-C while handling the first
        return _interrupted()
    finally:
        # The process's own command line (argv None): what remains is the interpreter's exit, which
        # a Ctrl-C would only turn into a traceback. Called in-process (argv given): as it was.
        if main_thread and previous is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN if argv is None else previous)
        if argv is not None:
            sys.unraisablehook = hook


def _parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """parse_args, with argparse's refusals (usage lines, then `mcu-nn CMD: error: ...`, exit 2)
    as the one line every failure gets: `mcu-nn: error: ... (mcu-nn CMD --help)`, still exit 2."""
    import contextlib
    import io
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
            if args.command and args.quiet and args.verbose:
                parser.error("-q/--quiet and -v/--verbose exclude each other")
            return args
    except SystemExit as e:
        text = err.getvalue()
        last = text.strip().splitlines()[-1] if text.strip() else ""
        if e.code in (0, None) or ": error: " not in last:
            sys.stderr.write(text)
            raise
        prog, message = last.split(": error: ", 1)
        print(f"mcu-nn: error: {message} ({prog} --help)", file=sys.stderr)
        raise


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = _parser()
    args = _parse(parser, argv)
    if not args.command:
        parser.print_help()
        return 2
    _line_buffered()
    _verbosity(args.quiet, args.verbose)
    warnings.showwarning = _show_warning
    warnings.simplefilter("ignore")                  # torch's internal chatter is not for our users
    warnings.simplefilter("always", McuNnWarning)
    warnings.filterwarnings("always", module=r"mcu_nn(\.|$)")  # ours, raised from any of our modules
    try:
        t0 = time.perf_counter()
        code = COMMANDS[args.command](args)
        logging.getLogger("mcu_nn").debug("%s: done in %.2f s (exit %d)", args.command, time.perf_counter() - t0, code)
        return code
    except McuNnError as e:
        print(f"mcu-nn: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return _interrupted()
    except Exception as e:  # a bug of ours: still one line, the traceback on request
        if os.environ.get("MCUNN_DEBUG"):
            raise
        print(f"mcu-nn: internal error: {type(e).__name__}: {e} "
              "(please report it; rerun with MCUNN_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
