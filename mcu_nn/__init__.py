"""mcu-nn: PyTorch recurrent models on microcontrollers as bit-exact fixed-point C.

The Python API (docs/api.md): ``mcu_nn.export(model, example_input, calib=..., precision=...)``
returns an ``ExportedModel`` with ``simulate``, ``verify``, ``build``, ``serial_test``,
``bench``, ``report`` and ``save``. The ``mcu-nn`` command line runs the same functions."""
__version__ = "0.1.0"

from .api import ExportedModel, export  # noqa: E402  (after __version__: api's modules read it)
from .errors import McuNnError  # noqa: E402

__all__ = ["export", "ExportedModel", "McuNnError", "__version__"]
