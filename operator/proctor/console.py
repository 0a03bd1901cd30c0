"""The consoles the ``proctor`` command prints on, and how user text reaches them.

Two rules every command keeps (issue 19):

- **Never cut when not a terminal.** Rich sizes a console that is not a terminal to 80 columns
  (or ``$COLUMNS``), and tables then drop or fold columns: the results path and a suite's "vs
  baseline" column were lost in CI logs and pipes. Off a terminal the width here is unbounded,
  so a line is as long as its content; on a terminal it is the terminal's.
- **User text is text, never markup.** Names, reasons, paths and error messages can hold
  brackets (``pip install 'proctor[metamorphic-guard]'``) that Rich would read as style tags
  and drop. Interpolate them with :func:`escape`, or pass them as :func:`plain` cells.
"""

from __future__ import annotations

import sys
from typing import IO

from rich.console import Console
from rich.markup import escape as _escape
from rich.text import Text

__all__ = ["UNBOUNDED_WIDTH", "escape", "make_console", "plain"]

UNBOUNDED_WIDTH = 1_000_000
"""The width of a console that is not a terminal: wider than any line the command prints, so
nothing is wrapped, folded or cut. Tables are as wide as their content, not as the console."""


def make_console(*, stderr: bool = False, file: IO[str] | None = None) -> Console:
    """A console on stdout (or stderr, or ``file``): the terminal's width on a terminal,
    unbounded otherwise."""
    stream = file if file is not None else (sys.stderr if stderr else sys.stdout)
    probe = Console(file=stream)
    if probe.is_terminal:
        return probe
    return Console(file=stream, width=UNBOUNDED_WIDTH)


def escape(value: object) -> str:
    """``value`` as a string that Rich markup shows as it is (``[x]`` stays ``[x]``)."""
    return _escape(str(value))


def plain(value: object) -> Text:
    """``value`` as a Rich text that is never parsed as markup (for table cells)."""
    return Text(str(value))
