"""How every subcommand documents itself: descriptions wrapped to the terminal, epilogs (the
exit codes) kept as written, so their columns line up."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.HelpFormatter):
    """Wraps a one-paragraph text (descriptions); keeps a text with line breaks as it is
    (the exit-code tables of the epilogs)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def exit_codes(*rows: tuple[int, str], title: str = "exit codes") -> str:
    """An epilog listing exit codes, one per line: ``exit codes:\\n  0  ...``."""
    width = max(len(str(code)) for code, _ in rows)
    lines = [f"  {code:<{width}}  {what}" for code, what in rows]
    return f"{title}:\n" + "\n".join(lines) + "\n"
