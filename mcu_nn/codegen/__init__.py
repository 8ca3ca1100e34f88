"""C code generation: a QModel becomes <name>.h / <name>.c (Jinja templates in
``mcu_nn/templates``) plus the runtime (mcunn_fixedpoint.h/.c); never imports torch."""
from .emit import emit, render_runtime, render_runtime_header, render_runtime_source  # noqa: F401
from .export import write_export  # noqa: F401
