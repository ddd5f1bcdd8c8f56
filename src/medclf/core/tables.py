"""Reading tables (CSV, TSV, JSONL, Parquet, and .txt with one text per line), whole or in chunks, and checking them
where they enter: the file is there, its format is known, it parses, its header has no repeated names. Error messages
name files, rows and columns, never the text itself; `row_numbers` words the rows for them."""

from __future__ import annotations

import io
import logging
import re
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from medclf.errors import MedclfError

log = logging.getLogger(__name__)

TABLE_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
TEXT_FORMATS = {".txt": "txt"}
DEMO_NAME = "demo (embedded, invented clinical snippets)"


def demo_data_path() -> Path:
    """Path of the embedded demo table (invented snippets, no patient data)."""
    return Path(str(resources.files("medclf") / "demo" / "clinical_snippets.csv"))


def table_format(path: str, *, allow_txt: bool = False) -> str:
    if path == "-":
        return "csv"
    suffix = Path(path).suffix.lower()
    if suffix in TABLE_FORMATS:
        return TABLE_FORMATS[suffix]
    if allow_txt and suffix in TEXT_FORMATS:
        return "txt"
    known = sorted(TABLE_FORMATS) + (sorted(TEXT_FORMATS) if allow_txt else [])
    raise MedclfError(
        f"Unknown file format '{suffix or '(no extension)'}' for {path}: use one of {', '.join(known)}."
    )


def check_file(path: str) -> None:
    """The path names a non-empty file (one sentence otherwise)."""
    if path != "-":
        p = Path(path)
        if not p.exists():
            raise MedclfError(f"File not found: {path}; check the path.")
        if p.is_dir():
            raise MedclfError(f"{path} is a directory; pass a data file.")
        if p.stat().st_size == 0:
            raise MedclfError(f"{path} is empty; it needs a header row and data rows.")


@contextmanager
def _parse_errors(path: str, fmt: str) -> Iterator[None]:
    """Turn the parsers' exceptions into one sentence that names the file and the fix."""
    try:
        yield
    except MedclfError:
        raise
    except UnicodeDecodeError as exc:
        raise MedclfError(_not_utf8(path, exc.start)) from None
    except pd.errors.EmptyDataError:
        raise MedclfError(f"{path} holds no rows; it needs a header row and data rows.") from None
    except pd.errors.ParserError as exc:
        where = re.search(r"line \d+", str(exc))
        raise MedclfError(
            f"{path} could not be parsed as {fmt.upper()}"
            f"{' (' + where.group(0) + ')' if where else ''}; check its delimiter and quoting."
        ) from None
    except ValueError:
        line = _bad_json_line(path) if fmt == "jsonl" else None
        raise MedclfError(
            f"{path} could not be parsed as {fmt.upper()}"
            + (f" (line {line} is not one complete JSON object)" if line else "")
            + "; check that the file matches its extension."
        ) from None
    except Exception as exc:  # pyarrow and friends raise many types for corrupt files
        if fmt == "parquet":
            raise MedclfError(f"{path} could not be read as Parquet ({type(exc).__name__}); check the file.") from None
        raise


def _not_utf8(path: str, position: int) -> str:
    """Why a file did not decode, with the fix: a binary file, UTF-16, or another 8-bit encoding."""
    head = b""
    if path != "-":
        with open(path, "rb") as handle:
            head = handle.read(4096)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return f"{path} is UTF-16 text; re-save it as UTF-8, e.g. `iconv -f utf-16 -t utf-8 in.csv > out.csv`."
    controls = sum(b < 9 or 13 < b < 32 for b in head)  # text has next to none; binary formats have many
    if b"\x00" in head or controls > len(head) // 20 or head.startswith((b"\x89PNG", b"%PDF", b"PK\x03\x04", b"\xd0\xcf\x11\xe0")):
        return f"{path} looks like a binary file (a spreadsheet, archive or image?), not a text table; export it as CSV."
    return (f"{path} is not valid UTF-8 (bad byte at position {position}); re-save it as UTF-8, "
            "e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`.")


def _bad_json_line(path: str) -> int | None:
    """The first line (from 1) of a JSONL file that is not one JSON object; None where every line is."""
    import json

    if path == "-":
        return None
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                if not isinstance(json.loads(line), dict):
                    return number
            except ValueError:
                return number
    return None


def _repeated(names: list[str]) -> list[str]:
    return [name for name, n in Counter(names).items() if n > 1]


def _check_header(path: str, fmt: str, source: Any) -> None:
    """Refuse a header that names a column twice: pandas would rename the second ('text.1') and one of them would be
    used without a word."""
    import csv

    if fmt in ("csv", "tsv"):
        if isinstance(source, io.StringIO):
            first = source.getvalue().split("\n", 1)[0]
        else:
            with open(source, encoding="utf-8-sig", newline="") as handle:
                first = handle.readline()
        header = next(csv.reader([first], delimiter="," if fmt == "csv" else "\t"), [])
        repeated = _repeated([h.strip().lstrip("\ufeff") for h in header])
    elif fmt == "jsonl":
        import json

        repeated = []

        def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
            repeated.extend(_repeated([k for k, _ in items]))
            return dict(items)

        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle):
                if number == 1000 or repeated:  # the first thousand records: a hand-made file repeats a key early
                    break
                try:
                    json.loads(line, object_pairs_hook=pairs)
                except ValueError:
                    break  # the parser says where, with its own error
    else:
        return
    _refuse_repeated(path, repeated)


def _refuse_repeated(path: str, repeated: list[str]) -> None:
    if repeated:
        names = ", ".join(f"'{n}'" for n in dict.fromkeys(repeated))
        shown = "The standard input" if path == "-" else path
        raise MedclfError(f"{shown} names the column {names} more than once; rename or remove the repeated column.")


def _csv_options(fmt: str) -> dict[str, Any]:
    return {"sep": "," if fmt == "csv" else "\t", "dtype": str, "keep_default_na": False, "na_values": [""],
            "encoding": "utf-8"}


def read_table(path: str, *, allow_txt: bool = False) -> pd.DataFrame:
    """Read a table by its extension, every column as it is stored (text stays text)."""
    fmt = table_format(path, allow_txt=allow_txt)
    check_file(path)
    with _parse_errors(path, fmt):
        if fmt in ("csv", "tsv"):
            source = io.StringIO(sys.stdin.read()) if path == "-" else path
            _check_header(path, fmt, source)
            frame = pd.read_csv(source, **_csv_options(fmt))
        elif fmt == "jsonl":
            _check_header(path, fmt, path)
            frame = pd.read_json(path, lines=True, dtype=False, encoding="utf-8")
        elif fmt == "parquet":
            frame = pd.read_parquet(path)
        else:
            with open(path, encoding="utf-8") as handle:
                lines = [line.rstrip("\r\n") for line in handle]
            frame = pd.DataFrame({"text": lines})
    frame.columns = [str(c) for c in frame.columns]
    _check_columns(frame, path)
    if len(frame) == 0:
        raise MedclfError(f"{path} holds a header but no data rows.")
    return frame


def _check_columns(frame: pd.DataFrame, path: str) -> None:
    _refuse_repeated(path, _repeated(list(frame.columns)))  # Parquet (and Arrow) allow one name on several columns


def iter_table(path: str, *, chunk_rows: int, allow_txt: bool = False) -> Iterator[pd.DataFrame]:
    """The table in frames of at most chunk_rows rows, read as they are needed (memory stays flat however
    large the file): the same parsing, and the same errors, as read_table."""
    fmt = table_format(path, allow_txt=allow_txt)
    check_file(path)
    seen = 0
    with _parse_errors(path, fmt):
        if fmt in ("csv", "tsv"):
            if path == "-":  # the header line read ahead and checked, then the stream as it comes
                first = sys.stdin.readline()
                _check_header(path, fmt, io.StringIO(first))
                source: Any = _Prepended(first, sys.stdin)
            else:
                _check_header(path, fmt, path)
                source = path
            chunks: Iterator[pd.DataFrame] = iter(pd.read_csv(source, chunksize=chunk_rows, **_csv_options(fmt)))
        elif fmt == "jsonl":
            _check_header(path, fmt, path)
            chunks = iter(pd.read_json(path, lines=True, dtype=False, encoding="utf-8", chunksize=chunk_rows))
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            chunks = (batch.to_pandas() for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows))
        else:
            chunks = _text_lines(path, chunk_rows)
        for frame in chunks:
            frame.columns = [str(c) for c in frame.columns]
            _check_columns(frame, path)
            seen += len(frame)
            yield frame
    if seen == 0:
        raise MedclfError(f"{path} holds a header but no data rows.")


class _Prepended:
    """A text stream with a line that was read ahead put back in front (what pandas' reader needs: read(size))."""

    def __init__(self, head: str, rest: Any) -> None:
        self.head, self.rest = head, rest

    def read(self, size: int = -1) -> str:
        if not self.head:
            return self.rest.read(size)
        if size is None or size < 0:
            out, self.head = self.head + self.rest.read(), ""
            return out
        out, self.head = self.head[:size], self.head[size:]
        return out

    def __iter__(self) -> Iterator[str]:
        if self.head:
            yield self.head
            self.head = ""
        yield from self.rest


def _text_lines(path: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    with open(path, encoding="utf-8") as handle:
        lines: list[str] = []
        for line in handle:
            lines.append(line.rstrip("\r\n"))
            if len(lines) == chunk_rows:
                yield pd.DataFrame({"text": lines})
                lines = []
        if lines:
            yield pd.DataFrame({"text": lines})


def count_rows(path: str) -> int | None:
    """Data rows of a file without loading it (for a progress bar's ETA); None where that would cost a read
    of its own (stdin)."""
    fmt = table_format(path, allow_txt=True)
    if path == "-":
        return None
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    if fmt in ("csv", "tsv"):
        import csv

        with open(path, encoding="utf-8", newline="") as handle:
            return max(0, sum(1 for _ in csv.reader(handle, delimiter="," if fmt == "csv" else "\t")) - 1)
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip() or fmt == "txt")


def row_numbers(indices: list[int], *, offset: int = 0) -> str:
    """Row numbers for a message, counting from 1 (the first five, then '...'): rows, never their text."""
    return ", ".join(str(offset + i + 1) for i in indices[:5]) + (", ..." if len(indices) > 5 else "")
