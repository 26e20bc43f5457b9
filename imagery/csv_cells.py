"""CSV cells that a spreadsheet shows as text. Every CSV berthwatch writes passes its cells
through `csv_cell`: vessel names, scene ids, port and berth names and analysts' notes come
from outside, and a cell starting with = + - @ (or a tab or carriage return) would run as a
formula when an analyst opens the export in a spreadsheet (CSV injection). Numbers pass
unchanged, so a negative longitude stays a number."""

from __future__ import annotations

from collections.abc import Iterable

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_row(values: Iterable[object]) -> list[object]:
    return [csv_cell(v) for v in values]
