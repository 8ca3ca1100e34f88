"""Progress bars where time is spent (calibration, range search, inspect, report, serial-test).

One switch for the whole package: bars show on an interactive terminal (and in Jupyter, through
``tqdm.auto``), never in a log file or a pipe, where a bar's carriage returns are junk; ``-q``
turns them off everywhere. Text lines go through ``log`` as before."""
from __future__ import annotations

import sys
from typing import Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")

_enabled: Optional[bool] = None      # None: decide from the stream (a terminal, or a notebook)


def set_enabled(on: Optional[bool]) -> None:
    """True/False forces bars on/off (CLI -q); None restores the automatic choice."""
    global _enabled
    _enabled = on


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    try:
        return bool(shell and shell.get_ipython() and "IPKernelApp" in shell.get_ipython().config)
    except Exception:     # noqa: BLE001 - any IPython oddity: not a notebook
        return False


def enabled() -> bool:
    if _enabled is not None:
        return _enabled
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty()) or _in_notebook()


def bar(iterable: Optional[Iterable[T]] = None, *, total: Optional[int] = None, desc: str = "",
        unit: str = "it"):
    """A tqdm bar on stderr (``tqdm.auto``: a widget in a notebook), or an inert one when bars
    are off; use as ``for x in bar(xs, desc=...)`` or ``with bar(total=n) as b: b.update()``."""
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                disable=not enabled(), dynamic_ncols=True)


def track(iterable: Iterable[T], *, total: Optional[int] = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """``for x in track(xs, desc="calibrating")``: the items of ``iterable``, with a bar when bars are on."""
    yield from bar(iterable, total=total, desc=desc, unit=unit)
