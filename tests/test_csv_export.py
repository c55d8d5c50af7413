"""csv_export: the one CSV writer of the API and the UI (OWASP CSV injection, precision)."""
from __future__ import annotations

import csv
import io

import pytest

from sleeplab.api.csv_export import csv_text, safe_cell


@pytest.mark.parametrize("value, cell", [
    ("=HYPERLINK(\"http://evil.example\",\"x\")", "'=HYPERLINK(\"http://evil.example\",\"x\")"),
    ("+1+2", "'+1+2"), ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"),
    ("\r=1", "'\r=1"), ("Ada = Bob", "Ada = Bob"), ("Zoë", "Zoë"), ("", ""),
    (None, None), (True, True), (7, 7), (-0.5, -0.5), (float("nan"), None),
], ids=repr)
def test_safe_cell_quotes_formula_text_and_keeps_numbers(value, cell):
    assert safe_cell(value) == cell


@pytest.mark.parametrize("value, decimals, cell", [
    (8.468595624558928, 1, 8.5), (0.125, 2, 0.12), (-0.04, 1, 0.0), (12.0, 0, 12.0),
    (8.468595624558928, None, 8.468595624558928)])
def test_safe_cell_rounds_floats(value, decimals, cell):
    assert safe_cell(value, decimals) == cell and str(safe_cell(value, decimals)) == str(cell)


def test_csv_text_reads_back_as_text_never_a_formula():
    rows = [{"Name": "=1+2", "Rate": 8.468595624558928, "Room": 3},
            {"Name": "Ada, \"Jr\"", "Rate": None}]
    text = csv_text(rows, ["Name", "Rate", "Room"], {"Rate": 1})
    assert text.splitlines()[1] == "'=1+2,8.5,3"
    back = list(csv.reader(io.StringIO(text)))
    assert back == [["Name", "Rate", "Room"], ["'=1+2", "8.5", "3"], ["Ada, \"Jr\"", "", ""]]
