"""The results table: one resumable, crash-proof store of per-image scores, shared by the Python API
(:func:`vitfiqa.pipeline.score_files` / ``score_frame(..., out=...)``), the CLI (``vitfiqa score --out``) and
the Ray path (:func:`vitfiqa.distributed.score_with_ray`).

A table is a folder::

    scores.table/
        table.json                      what the table holds: columns, image count, batch size, and the run
                                        (model, options) that produced it; written once, atomically
        part-000000000000-3f9a....csv   one shard per commit: whole batches of rows (index, path, scores, error)
        part-000000000128-77c1....csv

Every commit writes its shard under a temporary name, fsyncs it, and renames it into place (``os.replace`` is
atomic), so a shard is either all there or absent, whatever moment the process is killed at. A shard's name
carries the first 16 hex digits of the SHA-256 of its bytes, so a shard damaged afterwards (a file cut short by
a full disk, a copy interrupted) is detected on the next open, removed, and its batches are scored again — it
is never counted as done. The unit of work is the batch of the *full* input list (``paths[k*B:(k+1)*B]``): a
resumed run re-scores exactly the batches that are missing, cut at the same places, so a run killed any number
of times and resumed ends with the same table, bit for bit, as one that never stopped.

One schema everywhere: ``index`` (position in the input list), ``path``, one float64 column per score key
(NaN for an image that could not be read), ``error`` (``""`` when scored, else the reason). A single CSV or
Parquet file is an *export* of a finished table (:meth:`ScoreTable.export`, also written atomically), never a
second writer. Files that belong with a batch (heatmaps) are written by :meth:`ScoreTable.commit` with the same
atomic mechanism, before the shard that marks the batch done.

Shards are CSV (floats written with ``repr``, which round-trips exactly), so tables need no extra dependency
and can be read by anything; only a ``.parquet`` export needs pyarrow.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Mapping, Sequence

from .options import DEFAULT_BATCH_SIZE, check_batch_size  # noqa: F401  (their home; re-exported)

log = logging.getLogger("vitfiqa")

FORMAT = "vitfiqa-score-table"
VERSION = 1
MANIFEST = "table.json"
_SHARD = re.compile(r"^part-(\d{12})-([0-9a-f]{16})\.csv$")
_ENCODING = dict(encoding="utf-8", errors="surrogateescape")  # any file name the OS gives us round-trips


class TableError(ValueError):
    """A results table that cannot be used as asked: it belongs to a different run, is damaged beyond the
    shards (its manifest), or is in use by another process."""


def atomic_write(path: str | os.PathLike, data: bytes, tmp_dir: str | os.PathLike | None = None) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either the old file or the complete new one, whatever
    moment the process dies at: a temporary file (in ``tmp_dir``, default the same folder; it must be on the
    same file system), fsync, rename over, fsync the folder."""
    atomic_write_many({path: data}, tmp_dir)


def atomic_write_many(files: Mapping[str | os.PathLike, bytes], tmp_dir: str | os.PathLike | None = None) -> None:
    """:func:`atomic_write` for several files at once: every file is complete on disk before the first rename,
    and each folder is synced once (not once per file)."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tmp_dir or path.parent) / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
            staged.append((tmp, path))
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for folder in {path.parent for _, path in staged}:
        _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:  # the rename itself must reach the disk too; not possible on every platform
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def clear_tmp_dir(folder: str | os.PathLike) -> Path:
    """Create ``folder`` for :func:`atomic_write`'s temporary files, removing what a killed writer left there.
    Only for a folder that the caller alone writes (e.g. while it holds a table's lock)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for p in folder.glob(".*.tmp"):
        p.unlink(missing_ok=True)
    return folder


def paths_digest(paths: Sequence[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(os.fsencode(p))
        h.update(b"\0")
    return h.hexdigest()


def table_columns(keys: Sequence[str]) -> list[str]:
    return ["index", "path", *keys, "error"]


def _format_float(v) -> str:
    return repr(float(v))  # shortest string that reads back to the same double; 'nan' for a failed image


def encode_csv(columns: Sequence[str], rows: Mapping[str, Sequence], keys: Sequence[str]) -> bytes:
    """CSV bytes of column-wise ``rows`` (the shard and the CSV export format)."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    n = len(rows["index"])
    fkeys = set(keys)
    cols = [rows[c] for c in columns]
    for i in range(n):
        w.writerow([_format_float(col[i]) if c in fkeys else (int(col[i]) if c == "index" else str(col[i]))
                    for c, col in zip(columns, cols)])
    return buf.getvalue().encode(**_ENCODING)


def decode_csv(data: bytes, columns: Sequence[str], keys: Sequence[str]) -> dict[str, list]:
    """Inverse of :func:`encode_csv`; raises ValueError on a header or row that does not fit."""
    reader = csv.reader(io.StringIO(data.decode(**_ENCODING), newline=""))
    header = next(reader, None)
    if header != list(columns):
        raise ValueError(f"columns {header} instead of {list(columns)}")
    out: dict[str, list] = {c: [] for c in columns}
    fkeys = set(keys)
    for row in reader:
        if len(row) != len(columns):
            raise ValueError(f"a row with {len(row)} fields instead of {len(columns)}")
        for c, v in zip(columns, row):
            out[c].append(float(v) if c in fkeys else int(v) if c == "index" else v)
    return out


class ScoreTable:
    """A results table folder (see the module documentation). Opening one for a run::

        table = ScoreTable(out, paths=paths, keys=model.columns(config), batch_size=64, run={...})
        for start in table.pending_batches(): ...; table.commit(columns_of_that_batch)
        table.frame(); table.export("scores.csv")

    creates it, or resumes it when it exists and was made by the same run (same columns, image list, batch
    size and ``run`` description — e.g. model digest and options); anything else raises :class:`TableError`
    rather than mixing scores of two runs (``overwrite=True`` starts again). Opening also removes damaged
    shards and leftover temporary files, so their batches show up in :meth:`pending_batches` again.
    ``ScoreTable.open(folder)`` opens an existing table to read it.

    One writer at a time: a second process opening the same table for writing gets :class:`TableError`
    (an advisory lock, released by the OS when the holder dies, even by SIGKILL).
    """

    def __init__(self, root: str | os.PathLike, *, paths: Sequence[str], keys: Sequence[str], batch_size: int,
                 run: Mapping | None = None, overwrite: bool = False):
        check_batch_size(batch_size)
        if len(paths) == 0:
            raise ValueError("no image paths given")
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise TableError(f"{self.root} exists and is not a folder (a results table is a folder)")
        self.paths = [os.fspath(p) for p in paths]
        manifest = _manifest(self.paths, keys, batch_size, run)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock()
        if overwrite:
            self._clear()
        existing = self._read_manifest()
        if existing is None:
            if any(self.root.glob("part-*.csv")):
                raise TableError(f"{self.root} holds shards but no {MANIFEST}: not a table this version can "
                                 "resume; use overwrite=True (--overwrite) or another output")
            atomic_write(self.root / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
        elif existing != manifest:
            raise TableError(_mismatch(self.root, existing, manifest))
        self._init(manifest)
        self._scan(repair=True)

    def expect(self, *, paths: Sequence[str], keys: Sequence[str], batch_size: int, run: Mapping | None = None) -> None:
        """Raise :class:`TableError` unless this table was made for exactly this run."""
        wanted = _manifest([os.fspath(p) for p in paths], keys, batch_size, run)
        if wanted != self.manifest:
            raise TableError(_mismatch(self.root, self.manifest, wanted))

    @classmethod
    def open(cls, root: str | os.PathLike) -> "ScoreTable":
        """An existing table, to read (its shards are checked; damaged ones are skipped, not removed)."""
        self = cls.__new__(cls)
        self.root = Path(root)
        self.paths = None
        manifest = self._read_manifest()
        if manifest is None:
            raise TableError(f"{self.root} is not a vitfiqa results table (no {MANIFEST})")
        self._init(manifest)
        self._scan(repair=False)
        return self

    # -- layout -------------------------------------------------------------------------------------
    def _init(self, manifest: dict) -> None:
        self.manifest = manifest
        self.columns: list[str] = list(manifest["columns"])
        self.keys: list[str] = self.columns[2:-1]
        self.n_images: int = manifest["n_images"]
        self.batch_size: int = manifest["batch_size"]
        self.run: dict = manifest["run"]
        self._done: dict[int, Path] = {}  # batch start -> the shard holding it

    def _read_manifest(self) -> dict | None:
        path = self.root / MANIFEST
        if not path.exists():
            return None
        try:
            m = json.loads(path.read_bytes())
            ok = (isinstance(m, dict) and m.get("format") == FORMAT and isinstance(m.get("columns"), list)
                  and isinstance(m.get("n_images"), int) and isinstance(m.get("batch_size"), int)
                  and m["batch_size"] > 0)
        except (ValueError, UnicodeDecodeError):
            ok = False
        if not ok:
            raise TableError(f"{path} is damaged (not a vitfiqa table manifest): without it the shards cannot be "
                             "trusted; use overwrite=True (--overwrite) or another output")
        if m.get("version") != VERSION:
            raise TableError(f"{self.root} is a version {m.get('version')} table; this vitfiqa reads version "
                             f"{VERSION}: use overwrite=True (--overwrite) or another output")
        return m

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory lock; one writer at a time is then up to the user
            return
        self._lock_file = open(self.root / ".lock", "a+b")
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise TableError(f"{self.root} is being written by another process") from None

    def close(self) -> None:
        """Release the writer's lock (also released when the object is collected or the process ends)."""
        lock = getattr(self, "_lock_file", None)
        if lock is not None:
            lock.close()
            self._lock_file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _clear(self) -> None:
        for p in self.root.iterdir():
            if p.name == MANIFEST or _SHARD.match(p.name) or p.name.endswith(".tmp"):
                p.unlink()

    def batch_starts(self) -> range:
        return range(0, self.n_images, self.batch_size)

    def _batch_len(self, start: int) -> int:
        return min(self.batch_size, self.n_images - start)

    # -- reading --------------------------------------------------------------------------------------
    def _load_shard(self, path: Path) -> dict[str, list] | None:
        """The shard's rows, or None when it is damaged (bytes do not match the digest in its name, unparsable,
        rows that are not whole batches of this table)."""
        m = _SHARD.match(path.name)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if m is None or hashlib.sha256(data).hexdigest()[:16] != m.group(2):
            return None
        try:
            rows = decode_csv(data, self.columns, self.keys)
        except (ValueError, UnicodeDecodeError):
            return None
        idx = rows["index"]
        if not idx or idx[0] != int(m.group(1)):
            return None
        counts: dict[int, int] = {}
        for i in idx:
            if not 0 <= i < self.n_images:
                return None
            counts[i - i % self.batch_size] = counts.get(i - i % self.batch_size, 0) + 1
        if any(n != self._batch_len(s) for s, n in counts.items()) or len(set(idx)) != len(idx):
            return None
        if self.paths is not None and any(self.paths[i] != p for i, p in zip(idx, rows["path"])):
            return None
        return rows

    def _scan(self, repair: bool) -> None:
        for p in sorted(self.root.iterdir()):
            if repair and p.name.endswith(".tmp"):
                p.unlink(missing_ok=True)  # a writer killed before its rename
                continue
            if not p.name.startswith("part-"):
                continue
            rows = self._load_shard(p)
            starts = None if rows is None else sorted({i - i % self.batch_size for i in rows["index"]})
            if starts is not None and any(s in self._done for s in starts):
                starts = None  # a batch in two shards: only a copied-in file can do that; keep the first
            if starts is None:
                log.warning("results table %s: %s is damaged or duplicated; %s", self.root, p.name,
                            "removed, its images will be scored again" if repair else "skipped")
                if repair:
                    p.unlink(missing_ok=True)
                continue
            for s in starts:
                self._done[s] = p

    def pending_batches(self) -> list[int]:
        """Starts (into the input list) of the batches not yet committed, in order."""
        return [s for s in self.batch_starts() if s not in self._done]

    @property
    def n_done(self) -> int:
        return sum(self._batch_len(s) for s in self._done)

    def is_complete(self) -> bool:
        return len(self._done) == len(self.batch_starts())

    def columns_dict(self) -> dict[str, list]:
        """All committed rows, column-wise, in input order."""
        cols: dict[str, list] = {c: [] for c in self.columns}
        for shard in sorted(set(self._done.values())):
            rows = self._load_shard(shard)
            if rows is None:
                raise TableError(f"{shard} changed while the table was open")
            for c in self.columns:
                cols[c].extend(rows[c])
        order = sorted(range(len(cols["index"])), key=cols["index"].__getitem__)
        return {c: [v[i] for i in order] for c, v in cols.items()}

    def frame(self):
        """Committed rows as a pandas DataFrame in input order (index int64, path and error text, scores
        float64 with NaN for unreadable images)."""
        import numpy as np
        import pandas as pd

        cols = self.columns_dict()
        data = {"index": np.asarray(cols["index"], dtype=np.int64), "path": cols["path"]}
        data.update({k: np.asarray(cols[k], dtype=np.float64) for k in self.keys})
        data["error"] = cols["error"]  # text columns get pandas' default string dtype, as in score_frame
        return pd.DataFrame(data)

    # -- writing --------------------------------------------------------------------------------------
    def commit(self, columns: Mapping[str, Sequence], files: Mapping[str | os.PathLike, bytes] | None = None,
               files_tmp_dir: str | os.PathLike | None = None) -> None:
        """Commit rows (column-wise, any order) that make up one or more whole batches of the input list.
        ``files`` (path -> bytes, e.g. heatmaps of these images) are written first, each atomically (through
        ``files_tmp_dir`` when given: one folder to clear of a killed writer's leftovers, see
        :func:`clear_tmp_dir`); the shard that marks the batches done comes last. Batches already committed are
        skipped (a retried task gives the same rows)."""
        if self.paths is None:
            raise TableError("this table was opened for reading (ScoreTable.open); open it with the run's "
                             "paths to write")
        missing = [c for c in self.columns if c not in columns]
        if missing:
            raise ValueError(f"rows to commit lack the column(s) {missing}")
        idx = [int(i) for i in columns["index"]]
        order = sorted(range(len(idx)), key=idx.__getitem__)
        rows = {c: [columns[c][i] for i in order] for c in self.columns}
        rows["index"] = [idx[i] for i in order]
        counts: dict[int, int] = {}
        for i, p in zip(rows["index"], rows["path"]):
            if not 0 <= i < self.n_images or self.paths[i] != p:
                raise ValueError(f"row {i} ({p!r}) is not image {i} of this table's input list")
            counts[i - i % self.batch_size] = counts.get(i - i % self.batch_size, 0) + 1
        partial = [s for s, n in counts.items() if n != self._batch_len(s)]
        if partial:
            raise ValueError(f"rows for batch(es) starting at {partial[:3]} are incomplete: a table commits "
                             "whole batches only")
        keep = [j for j, i in enumerate(rows["index"]) if i - i % self.batch_size not in self._done]
        if not keep:
            return
        rows = {c: [v[j] for j in keep] for c, v in rows.items()}
        if files:
            atomic_write_many(files, files_tmp_dir)
        data = encode_csv(self.columns, rows, self.keys)
        shard = self.root / f"part-{rows['index'][0]:012d}-{hashlib.sha256(data).hexdigest()[:16]}.csv"
        atomic_write(shard, data)
        for s in counts:
            self._done.setdefault(s, shard)

    def export(self, path: str | os.PathLike) -> Path:
        """Write the whole table as one ``.csv`` or ``.parquet`` file, atomically. Refused while batches are
        missing (an export is only ever a finished table)."""
        path = Path(path)
        if path.suffix not in (".csv", ".parquet"):
            raise ValueError(f"an export is a .csv or .parquet file, not {path.name}")
        if not self.is_complete():
            raise TableError(f"{self.root}: {len(self.pending_batches())} batch(es) not scored yet; resume the run "
                             "before exporting")
        if path.suffix == ".csv":
            data = encode_csv(self.columns, self.columns_dict(), self.keys)
        else:
            buf = io.BytesIO()
            try:
                self.frame().to_parquet(buf, index=False)
            except ImportError:
                raise ImportError("writing .parquet needs pyarrow: pip install 'vitfiqa[parquet]'") from None
            data = buf.getvalue()
        atomic_write(path, data)
        return path


def _manifest(paths: list[str], keys: Sequence[str], batch_size: int, run: Mapping | None) -> dict:
    return {"format": FORMAT, "version": VERSION, "columns": table_columns(keys), "n_images": len(paths),
            "batch_size": int(batch_size), "paths_sha256": paths_digest(paths),
            # through JSON, so it compares equal to what a later run reads back (tuples become lists ...)
            "run": json.loads(json.dumps(dict(run or {}), sort_keys=True, default=str))}


def _mismatch(root: Path, old: dict, new: dict) -> str:
    what = {"columns": "score columns", "n_images": "image count", "paths_sha256": "image list",
            "batch_size": "batch size", "run": "model or options"}
    for key, name in what.items():
        if old.get(key) != new.get(key):
            detail = ""
            if key in ("columns", "n_images", "batch_size"):
                detail = f" ({old.get(key)} there, {new.get(key)} now)"
            elif key == "run":
                diff = sorted(k for k in set(old["run"]) | set(new["run"]) if old["run"].get(k) != new["run"].get(k))
                detail = f" ({', '.join(diff)} differ)"
            return (f"{root} was started by a run with another {name}{detail}: resume with the same settings, or "
                    "use overwrite=True (--overwrite) or another output")
    return f"{root} was started by a different run; use overwrite=True (--overwrite) or another output"


def read_scores(path: str | os.PathLike):
    """A pandas DataFrame from a results table folder or its ``.csv`` / ``.parquet`` export (NaN scores for
    unreadable images, ``error`` as text)."""
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        return ScoreTable.open(path).frame()
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    with open(path, newline="", **_ENCODING) as f:
        header = next(csv.reader(f), [])
    # Only score cells are numbers: a file called "nan" or an empty error stays text.
    return pd.read_csv(path, keep_default_na=False, dtype={"path": str, "error": str},
                       na_values={c: ["nan"] for c in header if c not in ("index", "path", "error")})


__all__ = ["ScoreTable", "TableError", "check_batch_size", "atomic_write", "atomic_write_many", "clear_tmp_dir", "read_scores", "table_columns", "encode_csv", "decode_csv",
           "paths_digest"]
