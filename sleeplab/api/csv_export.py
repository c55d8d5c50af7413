"""CSV for spreadsheets: the one writer behind every CSV the API serves and the UI saves.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read by
Excel, LibreOffice and Google Sheets as a formula, so a patient named
``=HYPERLINK("http://evil.example","click")`` would become a live link or worse (OWASP
"CSV injection"). Such text cells get a leading apostrophe, which spreadsheets show as
text; numbers stay numbers (``-0.5`` is a negative number, not a formula). Floats are
rounded per column to the precision shown on screen.
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping

#: First characters that make a spreadsheet evaluate a cell (OWASP CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value, decimals: int | None = None):
    """One cell: text that a spreadsheet would run as a formula is quoted with ``'``.

    Parameters
    ----------
    value : object
        The cell value (``None`` becomes an empty cell).
    decimals : int, optional
        Round a float to this many decimal places.

    Returns
    -------
    object
        The value to hand to :mod:`csv` (a string, a number or ``None``).
    """
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        # + 0.0 turns a rounded -0.0 into 0.0
        return round(value, decimals) + 0.0 if decimals is not None else value
    if isinstance(value, int):
        return value
    text = str(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def csv_text(rows: Iterable[Mapping], columns: Iterable[str],
             decimals: Mapping[str, int] | None = None) -> str:
    """CSV (header line, then one line per row; ``\\n`` line ends) of ``rows``.

    Parameters
    ----------
    rows : iterable of mapping
        One mapping per line; a missing key is an empty cell.
    columns : iterable of str
        Column names, in order (also the header).
    decimals : mapping of str to int, optional
        Decimal places of the float columns.

    Returns
    -------
    str
    """
    columns = list(columns)
    decimals = decimals or {}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([safe_cell(name) for name in columns])
    for row in rows:
        writer.writerow([safe_cell(row.get(name), decimals.get(name)) for name in columns])
    return out.getvalue()
