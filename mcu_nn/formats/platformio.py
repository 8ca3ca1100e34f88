"""``platformio``: a library (``library.json``; the model and runtime sources flat in ``src/``),
for ``lib/`` of a PlatformIO project or ``lib_deps = file://path``. No flags forced on the build."""
from __future__ import annotations

import json

from .. import __version__
from .arduino import URL
from .base import Bundle, Files


def library_json(b: Bundle) -> dict:
    m = b.ex.manifest
    return {
        "name": f"mcunn_{b.name}", "version": __version__,
        "description": f"The {m['precision']} recurrent model \"{b.name}\" as bit-exact fixed-point C (mcu-nn export)",
        "keywords": ["mcu-nn", "neural network", "rnn", "fixed-point", "tinyml"],
        "repository": {"type": "git", "url": URL}, "license": "Apache-2.0",
        "frameworks": "*", "platforms": "*",
        "build": {"srcDir": "src", "includeDir": "src", "srcFilter": ["+<*.c>"], "flags": []},
    }


def write(b: Bundle) -> Files:
    return {"library.json": (json.dumps(library_json(b), indent=2) + "\n").encode(),
            **b.copy([*b.model_files, *b.runtime_files], "src/")}
