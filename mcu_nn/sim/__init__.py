"""Simulators: ``run_float`` reproduces PyTorch on a float ``Graph``; ``run_quant`` runs a
``QModel`` on integers exactly as the generated C does (bit for bit)."""
from .float_sim import run_float  # noqa: F401
from .int_sim import run, run_quant  # noqa: F401
