"""Simulators: ``run_float`` reproduces PyTorch on a float ``Graph``; ``run_quant`` runs a
``QModel`` on integers exactly as the generated C does (bit for bit)."""
from .int_sim import run, run_quant  # noqa: F401

try:
    from .float_sim import run_float  # noqa: F401
except ModuleNotFoundError as _e:  # float_sim is written in parallel; keep run_quant importable
    if _e.name != __name__ + ".float_sim":
        raise

