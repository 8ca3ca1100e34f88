"""How result objects show in a notebook or a REPL: ``repr`` is the text the CLI prints, and
Jupyter gets a table of the fields ``--json`` would print (``as_dict``)."""
from __future__ import annotations

import html
import json


class Shown:
    """Mixin for result dataclasses (declare them ``@dataclass(repr=False)``) that have
    ``as_dict()`` and optionally ``text()``."""

    def __repr__(self) -> str:
        text = self.text() if hasattr(self, "text") else "\n".join(
            f"{k}: {v}" for k, v in self.as_dict().items())        # type: ignore[attr-defined]
        return f"{type(self).__name__}(\n  " + text.strip().replace("\n", "\n  ") + "\n)"

    def _repr_html_(self) -> str:
        from .jsonout import _plain
        rows = []
        for k, v in _plain(self.as_dict()).items():                 # type: ignore[attr-defined]
            shown = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
            rows.append(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
                        f"<td style='text-align:left'>{html.escape(shown)}</td></tr>")
        return f"<table><caption>{html.escape(type(self).__name__)}</caption>{''.join(rows)}</table>"
