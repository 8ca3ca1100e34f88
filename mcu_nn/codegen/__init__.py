"""C code generation: a QModel becomes model.h / model.c (Jinja templates in
``mcu_nn/templates``) plus the runtime header; never imports torch."""
from .emit import emit, render_runtime_header  # noqa: F401
from .export import write_export  # noqa: F401
