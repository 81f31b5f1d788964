"""Reading text documents from the user's files or from Hugging Face datasets.

Every reader is a generator of documents (``str``), so a huge file is streamed and never read
whole. Sources are written as:

* a local path: ``.txt`` (one document per line, as the Hugging Face WikiText rows), ``.jsonl`` /
  ``.json`` (a text field, named or detected), ``.parquet``, ``.csv``; each may be ``.gz``;
* ``hf:NAME[:CONFIG[:SPLIT]]`` for any dataset on the hub, streamed through ``datasets``;
* a preset name for the sources compared by Ji et al. (``c4``, ``wikitext2``, ``wikipedia``,
  ``slimpajama``, ``dclm``, ``fineweb-edu``).

A ``#field`` suffix picks the text field: ``notes.jsonl#body``, ``hf:org/set#content``.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import CalibrationError

TEXT_FIELDS = ("text", "content", "document", "body", "article", "passage", "sentence", "raw_content")


@dataclass(frozen=True)
class Preset:
    label: str
    dataset: str
    config: str | None = None
    split: str = "train"
    data_files: str | None = None
    field: str = "text"
    note: str = ""


PRESETS: dict[str, Preset] = {
    "c4": Preset("C4 (en, first train shard)", "allenai/c4", None, "train",
                 "en/c4-train.00000-of-01024.json.gz", note="as Wanda and SparseGPT use"),
    "wikitext2": Preset("WikiText-2 (train)", "Salesforce/wikitext", "wikitext-2-raw-v1", "train"),
    "wikipedia": Preset("Wikipedia (English)", "wikimedia/wikipedia", "20231101.en", "train"),
    "slimpajama": Preset("SlimPajama", "cerebras/SlimPajama-627B", None, "train"),
    "dclm": Preset("DCLM baseline", "mlfoundations/dclm-baseline-1.0", None, "train"),
    "fineweb-edu": Preset("FineWeb-Edu", "HuggingFaceFW/fineweb-edu", "sample-10BT", "train"),
}


def split_field(source: str) -> tuple[str, str | None]:
    if "#" in source:
        base, field = source.rsplit("#", 1)
        return base, field or None
    return source, None


def describe_source(source: str) -> str:
    base, _ = split_field(source)
    if base in PRESETS:
        return PRESETS[base].label
    if base.startswith("hf:"):
        return base
    return Path(base).name


def iter_texts(source: str, text_field: str | None = None) -> Iterator[str]:
    """Documents of a source, lazily. Raises :class:`CalibrationError` with a readable sentence."""
    base, field = split_field(source)
    field = text_field or field
    if base in PRESETS:
        p = PRESETS[base]
        yield from _iter_hf(p.dataset, p.config, p.split, field or p.field, data_files=p.data_files)
        return
    if base.startswith("hf:"):
        parts = base[3:].split(":")
        if not parts[0]:
            raise CalibrationError("Write a hub dataset as hf:NAME[:CONFIG[:SPLIT]].")
        name = parts[0]
        config = parts[1] if len(parts) > 1 and parts[1] else None
        split = parts[2] if len(parts) > 2 and parts[2] else "train"
        yield from _iter_hf(name, config, split, field)
        return
    yield from iter_file_texts(Path(os.path.expanduser(base)), field)


# ---- local files -------------------------------------------------------------------------------

def _open_text(path: Path) -> io.TextIOBase:
    """Open (and gunzip) a text file, refusing binaries early."""
    try:
        raw = gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")
        head = raw.read(8192)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise CalibrationError(f"{path.name} is not a valid gzip file ({e or 'it ends too early'}).") from e
    except OSError as e:
        raise CalibrationError(f"Could not read {path.name}: {e.strerror or e}") from e
    if not head:
        raw.close()
        raise CalibrationError(f"{path.name} is empty.")
    if b"\x00" in head:
        raw.close()
        raise CalibrationError(f"{path.name} looks like a binary file, not text.")
    raw.seek(0)
    return io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="")


def _kind(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext in (".jsonl", ".ndjson"):
        return "jsonl"
    if ext == ".json":
        return "json"
    if ext == ".parquet":
        return "parquet"
    if ext == ".csv":
        return "csv"
    return "txt"


def iter_file_texts(path: Path, field: str | None = None) -> Iterator[str]:
    if not path.exists():
        raise CalibrationError(f"Calibration file not found: {path}")
    if path.is_dir():
        raise CalibrationError(f"{path.name} is a folder; pick a text, JSONL, Parquet or CSV file.")
    kind = _kind(path)
    try:
        if kind == "parquet":
            yield from _iter_parquet(path, field)
        elif kind == "jsonl":
            yield from _iter_jsonl(path, field)
        elif kind == "json":
            yield from _iter_json(path, field)
        elif kind == "csv":
            yield from _iter_csv(path, field)
        else:
            yield from _iter_txt(path)
    except UnicodeDecodeError as e:
        raise CalibrationError(
            f"{path.name} is not UTF-8 text (invalid byte 0x{e.object[e.start]:02x}); "
            "save it as UTF-8."
        ) from e
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise CalibrationError(f"{path.name} is not a valid gzip file ({e or 'it ends too early'}).") from e
    except OSError as e:
        raise CalibrationError(f"Could not read {path.name}: {e.strerror or e}") from e
    except csv.Error as e:
        raise CalibrationError(f"{path.name} is not a readable CSV file ({e}).") from e
    except (ValueError, RecursionError) as e:  # e.g. a JSON number too long, nesting too deep
        raise CalibrationError(f"{path.name} could not be read as {kind.upper()} ({type(e).__name__}: "
                               f"{str(e)[:200]}).") from e


def _iter_txt(path: Path) -> Iterator[str]:
    """One document per line, exactly like a Hugging Face text dataset row (newline kept)."""
    with _open_text(path) as f:
        any_text = False
        for line in f:
            if line.strip():
                any_text = True
                yield line if line.endswith("\n") else line + "\n"
        if not any_text:
            raise CalibrationError(f"{path.name} holds only whitespace.")


def pick_field(record: dict[str, Any], field: str | None, where: str) -> str:
    if field is not None:
        if field not in record:
            raise CalibrationError(f"{where} has no field '{field}' (fields: {', '.join(map(str, record))}).")
        return field
    for cand in TEXT_FIELDS:
        if isinstance(record.get(cand), str):
            return cand
    for k, v in record.items():
        if isinstance(v, str):
            return k
    raise CalibrationError(f"{where} has no text field (fields: {', '.join(map(str, record))}); name one with #field.")


def _iter_jsonl(path: Path, field: str | None) -> Iterator[str]:
    """One document per line; broken or text-less lines are skipped and listed in a warning,
    and a file with no usable line at all is an error."""
    bad: list[int] = []
    good = 0
    fields_seen: list[str] = []
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError):
                bad.append(lineno)
                continue
            if not isinstance(rec, dict):
                bad.append(lineno)
                continue
            if field is None:
                try:
                    field = pick_field(rec, None, f"{path.name} line {lineno}")
                except CalibrationError:
                    fields_seen = fields_seen or [str(k) for k in rec][:10]
                    bad.append(lineno)
                    continue
            text = rec.get(field)
            if not isinstance(text, str):
                fields_seen = fields_seen or [str(k) for k in rec][:10]
                bad.append(lineno)
                continue
            good += 1
            try:
                yield text
            except GeneratorExit:  # the reader has enough (a huge file): still report what was skipped
                if bad:
                    _warn(f"{path.name}: skipped {len(bad)} broken or text-less lines in the part read "
                          f"({', '.join(map(str, bad[:10]))}{' ...' if len(bad) > 10 else ''}).")
                raise
    lines = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
    if bad and good == 0:
        what = f"a '{field}' text field" if field else "a text field"
        seen = f" Fields seen: {', '.join(fields_seen)}; name the text field with #field." if fields_seen else ""
        raise CalibrationError(
            f"{path.name}: no line holds a JSON object with {what} "
            f"({len(bad)} unusable lines: {lines}).{seen}"
        )
    if good == 0:
        raise CalibrationError(f"{path.name} is empty.")
    if bad:
        _warn(f"{path.name}: skipped {len(bad)} broken or text-less lines ({lines}).")


_JSON_CHUNK = 1 << 16
_JSON_MAX_RECORD = 256 << 20  # one record larger than this is refused rather than buffered


class _JsonStream:
    """Incremental reader of one JSON document's top level: values are decoded one at a time
    from a sliding buffer, so a large array of records is never held in memory whole."""

    def __init__(self, f: Any, name: str) -> None:
        self.f, self.name = f, name
        self.buf, self.pos, self.eof = "", 0, False
        self._dec = json.JSONDecoder()

    def _more(self, want: int = _JSON_CHUNK) -> bool:
        if self.eof:
            return False
        if self.pos > len(self.buf) // 2:
            self.buf, self.pos = self.buf[self.pos:], 0
        chunk = self.f.read(want)
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def peek(self) -> str:
        """The next non-blank character ("" at the end), not consumed."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return ""

    def take(self, ch: str) -> None:
        got = self.peek()
        if got != ch:
            self.fail(f"expected '{ch}', found {repr(got) if got else 'the end of the file'}")
        self.pos += 1

    def value(self) -> Any:
        """Decode the next value; a value that may continue past the buffer is read further."""
        self.peek()
        want = _JSON_CHUNK
        while True:
            try:
                val, end = self._dec.raw_decode(self.buf, self.pos)
                if end < len(self.buf) or self.eof:  # a number at the buffer's end may go on
                    self.pos = end
                    return val
            except json.JSONDecodeError as e:
                if self.eof:
                    self.fail(e.msg, e.pos)
            if len(self.buf) - self.pos > _JSON_MAX_RECORD:
                self.fail(f"one value is larger than {_JSON_MAX_RECORD >> 20} MiB")
            self._more(want)
            want = min(want * 2, 16 << 20)

    def fail(self, msg: str, at: int | None = None) -> None:
        raise CalibrationError(f"{self.name} is not valid JSON ({msg}).")

    def array(self) -> Iterator[Any]:
        """The elements of the array starting here, one by one."""
        self.take("[")
        if self.peek() == "]":
            self.pos += 1
            return
        while True:
            yield self.value()
            nxt = self.peek()
            if nxt == ",":
                self.pos += 1
                continue
            self.take("]")
            return


_JSON_LIST_KEYS = ("data", "rows", "items", "documents")


def _iter_json(path: Path, field: str | None) -> Iterator[str]:
    """A JSON list of strings or records, or an object holding one under data/rows/items/documents.

    Streamed: records are decoded one at a time, so a file of any size is read with a small buffer.
    """
    with _open_text(path) as f:
        js = _JsonStream(f, path.name)
        first = js.peek()
        records: Iterator[Any] | None = None
        if first == "[":
            records = js.array()
        elif first == "{":
            js.take("{")
            while js.peek() not in ("}", ""):
                key = js.value()
                js.take(":")
                if key in _JSON_LIST_KEYS and js.peek() == "[":
                    records = js.array()
                    break
                js.value()  # a value we do not need
                if js.peek() == ",":
                    js.pos += 1
        elif first == "":
            raise CalibrationError(f"{path.name} is empty.")
        else:
            js.value()  # a lone number, string, ... (raises if it is not JSON at all)
        if records is None:
            raise CalibrationError(f"{path.name} is not a list of records or strings.")
        found = 0
        for i, rec in enumerate(records):
            if isinstance(rec, str):
                found += 1
                yield rec
            elif isinstance(rec, dict):
                field = field or pick_field(rec, None, f"{path.name} record {i}")
                if isinstance(rec.get(field), str):
                    found += 1
                    yield rec[field]
        if not found:
            raise CalibrationError(f"{path.name} holds no text: no string or record with a text field.")


def _iter_csv(path: Path, field: str | None) -> Iterator[str]:
    with _open_text(path) as f:
        csv.field_size_limit(1 << 30)
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise CalibrationError(f"{path.name} has no header row.")
        col = field
        if col is None:
            cands = [c for c in TEXT_FIELDS if c in reader.fieldnames]
            col = cands[0] if cands else reader.fieldnames[-1]
        if col not in reader.fieldnames:
            raise CalibrationError(f"{path.name} has no column '{col}' (columns: {', '.join(reader.fieldnames)}).")
        found = 0
        for row in reader:
            if row.get(col):
                found += 1
                yield row[col]
        if not found:
            raise CalibrationError(f"{path.name}: the column '{col}' is empty in every row.")


def _iter_parquet(path: Path, field: str | None) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pyarrow comes with datasets
        raise CalibrationError("Reading Parquet needs pyarrow (pip install pyarrow).") from e
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid and friends
        raise CalibrationError(f"{path.name} is not a readable Parquet file: {e}") from e
    names = pf.schema_arrow.names
    col = field or next((c for c in TEXT_FIELDS if c in names), None)
    if col is None or col not in names:
        raise CalibrationError(f"{path.name} has no text column (columns: {', '.join(names)}); name one with #field.")
    batches = pf.iter_batches(columns=[col], batch_size=512)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as e:  # pyarrow: ArrowInvalid, ArrowIOError ... on a damaged file
            raise CalibrationError(f"{path.name} is a damaged Parquet file: {e}") from e
        for text in batch.column(0).to_pylist():
            if isinstance(text, str):
                yield text


# ---- Hugging Face datasets ---------------------------------------------------------------------

def _iter_hf(name: str, config: str | None, split: str, field: str | None,
             data_files: str | None = None) -> Iterator[str]:
    try:
        import datasets
    except ImportError as e:  # pragma: no cover
        raise CalibrationError("Hub datasets need the 'datasets' package.") from e
    kwargs: dict[str, Any] = {"split": split, "streaming": True}
    if data_files:
        kwargs["data_files"] = {split: data_files}
    try:
        ds = datasets.load_dataset(name, config, **kwargs)
        it = iter(ds)
        first = next(it)
    except StopIteration:
        raise CalibrationError(f"The dataset {name} ({split}) is empty.") from None
    except Exception as e:  # offline, unknown dataset, gated, bad config ...
        raise CalibrationError(
            f"Could not read the dataset {name}{':' + config if config else ''} from the Hugging Face "
            "hub: offline and not cached, or the name, config or split is wrong.",
            details=f"{type(e).__name__}: {e}",
        ) from e
    field = pick_field(first, field, f"Dataset {name}")
    if isinstance(first.get(field), str):
        yield first[field]
    for rec in it:
        text = rec.get(field)
        if isinstance(text, str):
            yield text


# Warnings about skipped input go to the logging system; the CLI and GUI show them.
def _warn(text: str) -> None:
    import logging

    logging.getLogger("prunestudio").warning(text)
