"""One renderer for every listing: table, json, yaml, csv, and `--query` (JMESPath on the JSON form).

stdout carries only what is rendered here; messages go to stderr through `wlcgcloud.cli.common`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, TextIO

from wlcgcloud import bounded
from wlcgcloud.errors import UsageError
from wlcgcloud.escape import escape_controls

FORMATS = ("table", "json", "yaml", "csv")


@dataclass(frozen=True)
class Column:
    """A table column: the JSON key it shows and its heading."""

    key: str
    header: str


def apply_query(data: Any, query: str | None) -> Any:
    """Apply a JMESPath expression to the JSON form of `data` (as `aws --query` does)."""
    if not query:
        return data
    import jmespath.exceptions

    compiled = compile_query(query)
    try:
        return compiled.search(json.loads(to_json(data)))
    except jmespath.exceptions.JMESPathError as exc:
        message = f"invalid --query expression {escape_controls(query)!r}: {escape_controls(str(exc))}"
        raise UsageError(message) from None
    except RecursionError:  # the last line: a long chain of operators (a|a|a..., !!!...) within the bounds
        raise UsageError("--query: the expression is too complex to evaluate.", "Write a shorter one.") from None


def compile_query(query: str) -> Any:
    """The parsed --query; a usage error (exit 2) for one too long, too deep or not JMESPath.

    The root command calls it before any cloud is asked, so a typo costs no listing.
    """
    check_query(query)
    import jmespath
    import jmespath.exceptions

    try:
        return jmespath.compile(query)
    except jmespath.exceptions.ParseError as exc:
        # The expression on a line of its own and the caret under the place it went wrong.
        where = exc.lex_position if isinstance(exc.lex_position, int) else 0
        shown = escape_controls(query)
        caret = " " * len(escape_controls(query[:where])) + "^"
        if isinstance(exc, jmespath.exceptions.IncompleteExpressionError):
            reason = "the expression ends too early"
        elif getattr(exc, "token_value", None) not in (None, ""):
            reason = f"unexpected '{escape_controls(str(exc.token_value))}'"
        else:
            reason = str(exc.msg).rstrip(".")
        message = f"invalid --query expression: {reason}, at column {where + 1}:\n  {shown}\n  {caret}"
        raise UsageError(message) from None
    except jmespath.exceptions.JMESPathError as exc:
        message = f"invalid --query expression {escape_controls(query)!r}: {escape_controls(str(exc))}"
        raise UsageError(message) from None
    except RecursionError:
        raise UsageError("--query: the expression is too complex to parse.", "Write a shorter one.") from None


def check_query(query: str) -> None:
    """Refuse a --query longer or deeper than any real one (exit 2), before the recursive parser sees it."""
    if len(query) > bounded.QUERY_LENGTH:
        raise UsageError(f"--query: the expression is longer than {bounded.QUERY_LENGTH} characters.")
    if bounded.too_deep(query):
        raise UsageError(f"--query: the expression nests more than {bounded.MAX_DEPTH} levels deep.")


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=str)


def write_json(data: Any, out: TextIO) -> None:
    """`to_json(data)` and a newline, written in pieces: a listing of a million rows becomes neither one
    Python string nor work for Python's pure-Python indenting encoder (several seconds per million rows).

    Rows (dicts of str, int, float, bool and None in a list) go through json's C encoder in chunks, with
    the indentation of their items as its item separator; the text is the same as `to_json`'s (a test
    compares them). Anything else is written by `to_json`, its lines indented to where it stands.
    """
    pieces: list[str] = []
    _json_value(data, 0, pieces, out)
    pieces.append("\n")
    out.write("".join(pieces))


def _json_value(value: Any, level: int, pieces: list[str], out: TextIO) -> None:
    inner = "\n" + "  " * (level + 1)
    if isinstance(value, dict) and value and all(type(k) is str for k in value):
        for n, (key, item) in enumerate(value.items()):
            pieces.append(("{" if n == 0 else ",") + inner + _encode_str(key) + ": ")
            _json_value(item, level + 1, pieces, out)
        pieces.append("\n" + "  " * level + "}")
    elif isinstance(value, list | Streamed) and (value or isinstance(value, Streamed)):
        rows = _Rows(level + 1)
        items = iter(value.rows if isinstance(value, Streamed) else value)
        while batch := list(islice(items, 5000)):
            # (Keys need no check: the C encoder turns them into strings just as json.dumps does.)
            if all(map(_plain, batch)):
                rows.chunk += batch  # the common case: a batch of plain rows, at once
                rows.flush(pieces, out)
                continue
            for item in batch:
                if _plain(item):
                    rows.chunk.append(item)
                    continue
                rows.flush(pieces, out)
                pieces.append(("," if rows.started else "[") + inner)
                rows.started = True
                _json_value(item, level + 1, pieces, out)
        rows.flush(pieces, out)
        pieces.append("\n" + "  " * level + "]" if rows.started else "[]")
    else:
        pieces.append(to_json(value).replace("\n", "\n" + "  " * level))


class Streamed:
    """Rows made as they are written, for `-o json` (a million rows by instance need not all exist at once).
    Every other format, and `--query`, gets them as a list."""

    def __init__(self, rows: Iterable[dict[str, Any]]) -> None:
        self.rows = rows


def _listed(data: Any) -> Any:
    """`data` with its Streamed rows (at the top, or a key's value) made a list."""
    if isinstance(data, Streamed):
        return list(data.rows)
    if isinstance(data, dict):
        return {k: list(v.rows) if isinstance(v, Streamed) else v for k, v in data.items()}
    return data


class _Rows:
    """Consecutive rows of a list, encoded at once by json's C encoder with the indentation of their items as
    its item separator: `[{"a": 1,<items>"b": 2},<items>{"a": ...}]`. Rows are then told apart by
    `},<items>{"`, which no encoded string holds (its quotes are escaped), and given lines for their braces."""

    def __init__(self, level: int) -> None:
        self.chunk: list[dict[str, Any]] = []
        self.started = False  # whether the list's "[" is written
        self.outer, items = "\n" + "  " * level, "\n" + "  " * (level + 1)
        make = getattr(json.encoder, "c_make_encoder", None)  # None on a Python without json's C part
        self.encode = make(None, str, _encode_str, None, ": ", "," + items, False, False, True) if make else None
        self.between = ("}," + items + '{"', self.outer + "}," + self.outer + "{" + items + '"')
        self.first = self.outer + "{" + items

    def flush(self, pieces: list[str], out: TextIO) -> None:
        if not self.chunk:
            return
        pieces.append("," if self.started else "[")
        self.started = True
        if self.encode is None:
            pieces.append(",".join(self.outer + to_json(row).replace("\n", self.outer) for row in self.chunk))
        else:
            text = "".join(self.encode(self.chunk, 0))
            pieces.append(self.first + text[2:-2].replace(*self.between) + self.outer + "}")
        self.chunk.clear()
        out.write("".join(pieces))
        pieces.clear()


_encode_str: Any = json.encoder.encode_basestring  # the C one, as json.dumps uses with ensure_ascii=False
_PLAIN = {str, int, float, bool, type(None)}


def _plain(item: Any) -> bool:
    """A row the C encoder writes as `to_json` would: a dict, not empty, of plain values only."""
    return type(item) is dict and bool(item) and _PLAIN.issuperset(map(type, item.values()))


def cell(value: Any) -> str:
    """How one value reads in a table or CSV cell: control characters from a cloud reply shown escaped."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=True, default=str)
    return escape_controls(str(value))


def _rows_and_columns(data: Any, columns: Sequence[Column] | None) -> tuple[list[dict[str, Any]], list[Column]]:
    rows = data if isinstance(data, list) else [data]
    if not all(isinstance(r, dict) for r in rows):
        rows = [{"value": r} for r in rows]
    if columns is None:
        keys: dict[str, None] = {}
        for row in rows:
            keys.update(dict.fromkeys(row))
        columns = [Column(k, k.upper().replace("_", " ")) for k in keys]
    return rows, list(columns)


def render(
    data: Any,
    *,
    fmt: str,
    query: str | None = None,
    columns: Sequence[Column] | None = None,
    stream: TextIO | None = None,
    color: bool = True,
) -> None:
    """Write `data` (a list of dicts, a dict, or a scalar) to stdout in the requested format.

    `columns` chooses and names table/CSV columns; after a `--query` that reshapes the data,
    the columns are taken from the result instead.
    """
    out = stream or sys.stdout
    if query or fmt != "json":
        data = _listed(data)
    if query:
        data, columns = apply_query(data, query), None  # the query reshapes: columns follow the result
    if fmt == "json":
        write_json(data, out)
    elif fmt == "yaml":
        import yaml

        out.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True))
    elif fmt == "csv":
        _render_csv(data, columns, out)
    elif fmt == "table":
        _render_table(data, columns, out, color)
    else:
        raise UsageError(f"output format '{fmt}' is not available here; use one of {', '.join(FORMATS)}.")


def _render_csv(data: Any, columns: Sequence[Column] | None, out: TextIO) -> None:
    if data is None:
        return
    if not isinstance(data, list | dict):
        out.write(cell(data) + "\n")
        return
    rows, cols = _rows_and_columns(data, columns)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([c.key for c in cols])
    for row in rows:
        writer.writerow([cell(row.get(c.key)) for c in cols])
    out.write(buf.getvalue())


def _render_table(data: Any, columns: Sequence[Column] | None, out: TextIO, color: bool) -> None:
    if data is None:
        return
    if not isinstance(data, list | dict):
        out.write(cell(data) + "\n")
        return
    if isinstance(data, list) and not data:
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text  # plain text: a value like "atlas[x]" is not Rich markup

    tty = out.isatty()
    plain = not tty or not color or "NO_COLOR" in os.environ
    table = Table(
        box=box.SIMPLE_HEAD if tty else None, show_edge=False, pad_edge=False, header_style="" if plain else "bold"
    )
    if isinstance(data, dict) and columns is None:
        table.add_column("KEY")
        table.add_column("VALUE", overflow="fold")
        for key, value in data.items():
            table.add_row(Text(escape_controls(key)), Text(cell(value)))
    else:
        rows, cols = _rows_and_columns(data, columns)
        for col in cols:
            table.add_column(col.header, overflow="fold")
        for row in rows:
            table.add_row(*(Text(cell(row.get(c.key))) for c in cols))
    if tty:
        no_color = not color or "NO_COLOR" in os.environ
        Console(file=out, no_color=no_color, highlight=False, force_terminal=True).print(table)
        return
    # Off a terminal: no colour, no box, no wrapping, so `| grep` and `| awk` see whole rows.
    capture = io.StringIO()
    Console(file=capture, no_color=True, width=100_000, highlight=False).print(table)
    for line in capture.getvalue().splitlines():
        out.write(line.rstrip() + "\n")
