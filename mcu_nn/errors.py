"""The one exception type users see. The CLI prints ``mcu-nn: error: <message>`` and
exits 1; the message must be a single line that says what is wrong, where it came from
(file, op, module path) and, when there is one, what to do about it."""


class McuNnError(Exception):
    """A user-facing failure (bad model file, unsupported op, bad calibration, ...)."""


class McuNnWarning(UserWarning):
    """Something the user should know but that does not stop the work (e.g. --calib random).
    The CLI prints these as ``mcu-nn: warning: ...`` and hides other libraries' warnings."""
