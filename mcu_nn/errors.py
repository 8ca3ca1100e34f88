"""The one exception type users see. The CLI prints ``mcu-nn: error: <message>`` and
exits 1; the message must be a single line that says what is wrong, where it came from
(file, op, module path) and, when there is one, what to do about it."""


class McuNnError(Exception):
    """A user-facing failure (bad model file, unsupported op, bad calibration, ...)."""
