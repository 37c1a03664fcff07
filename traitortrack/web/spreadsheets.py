"""Streaming a table as CSV or Excel: any number of rows, in constant memory.

Rows arrive in batches from an async iterator (each batch one short query). CSV goes out batch
by batch as it is read. An .xlsx file is a zip whose directory comes last, so it cannot be sent
before it is finished: xlsxwriter's ``constant_memory`` mode writes each row to a temporary file
as it comes, the workbook is closed into a temporary file in a worker thread (zipping a big
sheet would stall the event loop), and that file is streamed out and deleted.
"""

import asyncio
import csv
import io
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import xlsxwriter

CHUNK_BYTES = 64 * 1024
EXCEL_MAX_ROWS = 1_048_576  # per sheet, header included; more rows continue on a new sheet
# Text that a spreadsheet would run as a formula (CSV injection): shown as text instead.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

CSV_TYPE = "text/csv; charset=utf-8"
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


@dataclass(frozen=True, slots=True)
class Column:
    title: str
    value: Callable[[Any], object]
    width: int = 14


def _csv_cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


async def csv_stream(
    columns: Sequence[Column], batches: AsyncIterator[list[Any]]
) -> AsyncIterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    # The byte-order mark tells Excel the file is UTF-8 (names and descriptions may not be ASCII).
    buffer.write("\ufeff")
    writer.writerow([column.title for column in columns])
    yield buffer.getvalue().encode()
    async for batch in batches:
        buffer.seek(0)
        buffer.truncate()
        for row in batch:
            writer.writerow([_csv_cell(column.value(row)) for column in columns])
        yield buffer.getvalue().encode()


class _Workbook:
    """One workbook being written row by row, continuing on a new sheet when one is full."""

    def __init__(self, path: str, sheet: str, columns: Sequence[Column]) -> None:
        self.book = xlsxwriter.Workbook(
            path,
            {
                "constant_memory": True,
                "tmpdir": os.path.dirname(path),
                "remove_timezone": True,  # every time is UTC; Excel has no time zones
                "default_date_format": "yyyy-mm-dd hh:mm:ss",
                "strings_to_formulas": False,
                "strings_to_urls": False,
                "strings_to_numbers": False,
            },
        )
        self.bold = self.book.add_format({"bold": True})
        self.columns = columns
        self.sheet_name = sheet
        self.sheets = 0
        self._new_sheet()

    def _new_sheet(self) -> None:
        self.sheets += 1
        name = self.sheet_name if self.sheets == 1 else f"{self.sheet_name} ({self.sheets})"
        self.sheet = self.book.add_worksheet(name[:31])
        for index, column in enumerate(self.columns):
            self.sheet.set_column(index, index, column.width)
        self.sheet.freeze_panes(1, 0)
        self.sheet.write_row(0, 0, [column.title for column in self.columns], self.bold)
        self.row = 1

    def write(self, batch: list[Any]) -> None:
        for item in batch:
            if self.row >= EXCEL_MAX_ROWS:
                self._new_sheet()
            values = [column.value(item) for column in self.columns]
            for index, value in enumerate(values):
                if isinstance(value, datetime | date):
                    self.sheet.write_datetime(self.row, index, value)
                elif value is not None:
                    self.sheet.write(self.row, index, value)
            self.row += 1


async def xlsx_stream(
    columns: Sequence[Column], batches: AsyncIterator[list[Any]], sheet: str
) -> AsyncIterator[bytes]:
    with tempfile.TemporaryDirectory(prefix="tt-export-") as directory:
        path = os.path.join(directory, "export.xlsx")
        book = await asyncio.to_thread(_Workbook, path, sheet, columns)
        try:
            async for batch in batches:
                await asyncio.to_thread(book.write, batch)
        finally:
            await asyncio.to_thread(book.book.close)
        with open(path, "rb") as file:  # noqa: ASYNC230 - reads happen in a worker thread
            while chunk := await asyncio.to_thread(file.read, CHUNK_BYTES):
                yield chunk


async def rows_of(rows: list[Any]) -> AsyncIterator[list[Any]]:
    """A list that is already in memory (one bill's parents), as one batch."""
    if rows:
        yield rows
