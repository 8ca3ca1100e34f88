"""Calibration and quantisation: float ``Graph`` -> integer ``QModel`` (docs/numerics.md)."""
from .calibrate import collect_ranges, load_calibration, random_calibration, validate_calibration  # noqa: F401
from .calibrate import CalibrationSet, load_calibration_set  # noqa: F401
from .metrics import max_abs_error, snr_db, top1_agreement  # noqa: F401
from .quantize import quantize  # noqa: F401
