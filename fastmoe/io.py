"""Reading files that reach fastmoe: data tables, .npz archives, .npy and JSON.

Every file is untrusted. Before anything is decompressed or allocated, the
file's size and every array's declared size are checked against a limit
(``MAX_DATA_BYTES`` for data, smaller ones for models and messages), object
arrays are refused (nothing is ever unpickled), and a truncated, foreign or
malformed file gives a ValueError of one line that names the file. Limits
are module constants; the readers take them as arguments.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import stat
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["read_table", "write_table"]

#: largest data file (and largest array in one) that fastmoe reads
MAX_DATA_BYTES = 8 * 2**30
#: largest JSON text fastmoe parses (models and messages written as .json)
MAX_JSON_BYTES = 256 * 2**20
#: dtype kinds an archive may hold: bool, integers, floats, text (no objects)
_KINDS = "biufU"


def check_file(path, what: str, max_bytes: int) -> Path:
    """An existing regular file no larger than ``max_bytes`` (a device, a
    FIFO or a folder is refused before it is opened: /dev/zero would never
    end, a FIFO would hang)."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"cannot read {what} {str(path)!r}: it does not exist.") from None
    except OSError as exc:
        raise ValueError(f"cannot read {what} {str(path)!r}: {exc.strerror}.") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"cannot read {what} {str(path)!r}: it is not a regular file.")
    size = info.st_size
    if size > max_bytes:
        raise ValueError(f"cannot read {what} {str(path)!r}: it has {size} bytes, more than "
                         f"the limit of {max_bytes}.")
    if size == 0:
        raise ValueError(f"cannot read {what} {str(path)!r}: it is empty.")
    return path


def _read_exact(f, size: int) -> bytearray:
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        k = f.readinto(view[got:])
        if not k:
            break
        got += k
    if got != size:
        raise ValueError(f"truncated array data ({got} of {size} bytes)")
    return buf


def read_npy_stream(f, budget: int) -> np.ndarray:
    """One .npy array from the open binary stream ``f``, refused before any
    allocation when its declared size exceeds ``budget`` bytes or its dtype
    holds objects. Raises ValueError."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as exc:  # numpy's header parser, or the stream under it, failed
        raise ValueError(f"not a valid .npy array ({type(exc).__name__}: {exc})") from None
    if dtype.hasobject or dtype.kind not in _KINDS or dtype.fields is not None:
        raise ValueError(f"arrays of dtype {dtype} are not accepted (numbers or text only)")
    count = math.prod(int(s) for s in shape)
    size = count * dtype.itemsize
    if size > budget:
        raise ValueError(f"an array declares shape {tuple(shape)} ({size} bytes), more than "
                         f"the {budget} bytes allowed")
    try:
        buf = _read_exact(f, size)
        extra = f.read(1)
    except ValueError:
        raise
    except Exception as exc:  # zlib, bz2, lzma, CRC and I/O errors of a corrupt member
        raise ValueError(f"corrupt array data ({type(exc).__name__}: {exc})") from None
    if extra:
        raise ValueError("array data longer than its declared shape")
    arr = np.frombuffer(buf, dtype=dtype, count=count)
    return arr.reshape(shape, order="F" if fortran else "C")


def read_npz(source, what: str, max_bytes: int) -> dict:
    """The arrays of a .npz archive (a path or its bytes) as a dict, at most
    ``max_bytes`` declared in all (see :func:`read_npy_stream`). Errors name
    the file (for bytes, the caller names them)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) > max_bytes:
            raise ValueError(f"{what} has {len(source)} bytes, more than the limit of "
                             f"{max_bytes}.")
        handle, label = io.BytesIO(source), None
    else:
        handle, label = check_file(source, what, max_bytes), f"{what} {str(source)!r}"
    try:
        with zipfile.ZipFile(handle) as z:
            infos = z.infolist()
            if len(infos) > 64:
                raise ValueError(f"{len(infos)} members; at most 64 are accepted")
            names = [info.filename for info in infos]
            if len(set(names)) != len(names):
                twice = sorted({n for n in names if names.count(n) > 1})
                raise ValueError(f"member {twice[0]!r} appears more than once")
            budget = max_bytes
            out = {}
            for info in infos:
                if not info.filename.endswith(".npy") or info.is_dir():
                    raise ValueError(f"member {info.filename!r} is not a .npy array")
                if info.file_size > budget + 4096:
                    raise ValueError(f"member {info.filename!r} declares {info.file_size} "
                                     f"bytes, more than the {max_bytes} allowed")
                with z.open(info) as f:
                    arr = read_npy_stream(f, budget)
                budget -= arr.nbytes
                out[info.filename[:-4]] = arr
            return out
    except ValueError as exc:
        detail = str(exc)
    except Exception as exc:  # zipfile's own errors on a corrupt archive
        detail = f"not a valid .npz archive ({type(exc).__name__}: {exc})"
    raise ValueError(detail if label is None else f"cannot read {label}: {detail}.")


def read_npy(path, what: str = "array file", max_bytes: int = MAX_DATA_BYTES) -> np.ndarray:
    """One .npy file, with the checks of :func:`read_npy_stream`."""
    path = check_file(path, what, max_bytes)
    with open(path, "rb") as f:
        try:
            return read_npy_stream(f, max_bytes)
        except ValueError as exc:
            raise ValueError(f"cannot read {what} {str(path)!r}: {exc}.") from None


def read_json(path, what: str, max_bytes: int = MAX_JSON_BYTES):
    """A JSON document from a file of at most ``max_bytes``."""
    path = check_file(path, what, max_bytes)
    try:
        return parse_json(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"cannot read {what} {str(path)!r}: not valid JSON ({exc}).") from None


def parse_json(data: bytes):
    """JSON text -> Python objects; NaN and Infinity are refused (they are
    not JSON), and so are a key given twice in one object (which would win
    is a guess) and nesting too deep to parse."""
    def constant(name):
        raise ValueError(f"{name} is not a JSON number")

    def unique(pairs):
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            twice = sorted({k for k in keys if keys.count(k) > 1})
            raise ValueError(f"the key {twice[0]!r} appears more than once")
        return dict(pairs)

    try:
        return json.loads(data, parse_constant=constant, object_pairs_hook=unique)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason})") from None


# ----------------------------------------------------------------------------
# writing: whole or not at all
# ----------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path, what: str = "file"):
    """A temporary path beside ``path`` (same folder, same suffix) to write
    to; on success it is renamed over ``path`` in one step, on any failure it
    is removed and ``path`` is left as it was. OSErrors come back as one line
    that names ``path``.

    >>> from pathlib import Path
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "out.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("whole")
    >>> target.read_text()
    'whole'
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}",
                                    dir=folder)
    except OSError as exc:
        raise OSError(f"cannot write {what} {str(path)!r}: {exc.strerror or exc}.") from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(f"cannot write {what} {str(path)!r}: {exc.strerror or exc}; it was "
                      "left as it was.") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path, data: bytes, what: str = "file") -> int:
    """Write ``data`` to ``path`` whole or not at all (:func:`atomic_path`)."""
    with atomic_path(path, what) as tmp:
        return tmp.write_bytes(data)


def check_writable(path, what: str = "output") -> Path:
    """Before any work: ``path``'s folder exists and can be written, and
    ``path`` is not a folder."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"cannot write {what} {str(path)!r}: its folder {str(folder)!r} does "
                         "not exist.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {what} {str(path)!r}: its folder {str(folder)!r} is "
                         "not writable.")
    if path.is_dir():
        raise ValueError(f"cannot write {what} {str(path)!r}: it is a folder.")
    return path


def same_file(a, b) -> bool:
    """Whether two paths name one file (through links and relative paths)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


# ----------------------------------------------------------------------------
# data tables
# ----------------------------------------------------------------------------
def read_table(path, max_bytes: int = MAX_DATA_BYTES) -> tuple[np.ndarray, np.ndarray | None]:
    """(X, y) from a data file.

    ``.npz`` with arrays "X" and "y"; ``.csv`` (with a header line) or
    ``.parquet`` with the response in the column named "y" and covariates in
    all the others. Values are not checked here (``check_X`` does); shapes and
    sizes are, and a bad file is refused with one line that names it.

    Parameters
    ----------
    path : str or path-like
        The file.
    max_bytes : int, default=8 GiB
        The largest file read.

    Returns
    -------
    X : ndarray of shape (n, d)
        The covariates.
    y : ndarray of shape (n,) or None
        The responses, or None when the file has none.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot read data file {str(path)!r}: it is a folder; name a .npz, "
                         ".csv or .parquet file.")
    if path.suffix not in (".npz", ".csv", ".parquet"):
        raise ValueError(f"unknown data file type {path.suffix!r} ({str(path)!r}); use .npz, "
                         ".csv or .parquet.")
    path = check_file(path, "data file", max_bytes)
    if path.suffix == ".npz":
        z = read_npz(path, "data file", max_bytes)
        if "X" not in z:
            raise ValueError(f"data file {str(path)!r} must hold an array named 'X' (and 'y'); "
                             f"it has {sorted(z)}.")
        X, y = z["X"], z.get("y")
        if X.ndim != 2:
            raise ValueError(f"data file {str(path)!r}: X must be 2-D; got shape {X.shape}.")
        if y is not None and y.shape != (X.shape[0],):
            raise ValueError(f"data file {str(path)!r}: y must have shape ({X.shape[0]},) to "
                             f"match X; got {y.shape}.")
        return X, y
    if path.suffix == ".csv":
        header, data = _read_csv(path)
    else:
        header, data = _read_parquet(path)
    if len(set(header)) != len(header):
        raise ValueError(f"data file {str(path)!r} has repeated column names.")
    if data.shape[0] == 0:
        raise ValueError(f"data file {str(path)!r} has a header but no data rows.")
    if "y" not in header:
        return data, None
    if len(header) < 2:
        raise ValueError(f"data file {str(path)!r} has the response 'y' but no covariate.")
    j = header.index("y")
    return np.delete(data, j, axis=1), data[:, j]


#: the longest line a CSV table may have (a file of NUL bytes, or a table
#: without line breaks, would otherwise be read whole as one line)
MAX_CSV_LINE = 2**20


def _scan_csv(path: Path) -> None:
    """Refuse, in one bounded pass before parsing, a CSV with NUL bytes (a
    binary or sparse file) or a line longer than MAX_CSV_LINE."""
    run = 0
    with open(path, "rb") as f:
        while block := f.read(2**20):
            if b"\0" in block:
                raise ValueError(f"data file {str(path)!r} holds NUL bytes: it is not a CSV "
                                 "text table.")
            lines = block.split(b"\n")
            first = run + len(lines[0])  # the line the last block left open
            if first > MAX_CSV_LINE or max(map(len, lines[1:]), default=0) > MAX_CSV_LINE:
                raise ValueError(f"data file {str(path)!r} has a line longer than "
                                 f"{MAX_CSV_LINE} bytes: it is not a CSV table of this kind.")
            run = first if len(lines) == 1 else len(lines[-1])


def _read_csv(path: Path):
    _scan_csv(path)
    try:
        # utf-8-sig: a byte-order mark (spreadsheet exports) is not part of the header
        with open(path, encoding="utf-8-sig") as f:
            header = [_column_name(h) for h in f.readline().strip().split(",")]
            with warnings.catch_warnings():  # no rows: said below, not warned
                warnings.filterwarnings("ignore", ".*input contained no data")
                data = np.loadtxt(f, delimiter=",", ndmin=2, dtype=np.float64)
    except UnicodeDecodeError as exc:
        raise ValueError(f"data file {str(path)!r} is not UTF-8 text ({exc.reason}).") from None
    except ValueError as exc:
        raise ValueError(f"data file {str(path)!r}: {_first_bad_cell(path) or exc}") from None
    if data.size and data.shape[1] != len(header):
        raise ValueError(f"data file {str(path)!r} has {len(header)} column names but "
                         f"{data.shape[1]} columns of data.")
    return header, data.reshape(-1, len(header)) if data.size == 0 else data


def _column_name(text: str) -> str:
    """A header cell without its white space and quotes ('"y"' is y)."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def _first_bad_cell(path: Path) -> str | None:
    """Where a numeric CSV table first fails: the line, the column and the
    text, or None."""
    with open(path, encoding="utf-8-sig") as f:
        header = [_column_name(h) for h in f.readline().strip().split(",")]
        for line_no, line in enumerate(f, start=2):
            cells = line.rstrip("\r\n").split(",")
            if not line.strip():
                continue
            if len(cells) != len(header):
                return (f"line {line_no} has {len(cells)} fields but the header names "
                        f"{len(header)} columns.")
            for name, cell in zip(header, cells):
                try:
                    float(cell)
                except ValueError:
                    what = "an empty field" if not cell.strip() else repr(cell.strip()[:40])
                    return (f"line {line_no}, column {name!r}: {what} is not a number (fastmoe "
                            "reads numeric tables without missing values: remove or impute "
                            "them).")
    return None


def _read_parquet(path: Path):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("reading .parquet needs pyarrow (pip install pyarrow).") from None
    try:
        meta = pq.read_metadata(path)
        declared = meta.num_rows * meta.num_columns * 8
        if declared > MAX_DATA_BYTES:
            raise ValueError(f"it declares {meta.num_rows} x {meta.num_columns} values, more "
                             f"than {MAX_DATA_BYTES} bytes")
        table = pq.read_table(path)
        header = [str(c) for c in table.column_names]
        if len(set(header)) != len(header):
            twice = sorted({h for h in header if header.count(h) > 1})
            raise ValueError(f"the column name {twice[0]!r} appears more than once")
        for name, column in zip(header, table.columns):
            kind = column.type
            if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)
                    or pa.types.is_boolean(kind)):
                raise ValueError(f"column {name!r} has type {kind}; fastmoe reads numeric "
                                 "columns only (convert it to numbers first)")
            if column.null_count:
                raise ValueError(f"column {name!r} has {column.null_count} missing values; "
                                 "remove or impute them")
        cols = [c.to_numpy() for c in table.columns]
        data = (np.column_stack(cols).astype(np.float64) if cols
                else np.empty((0, 0)))
    except ValueError as exc:
        raise ValueError(f"data file {str(path)!r} cannot be read: {exc}") from None
    except Exception as exc:  # pyarrow's own errors on a corrupt file
        raise ValueError(f"data file {str(path)!r} is not a readable numeric parquet table "
                         f"({type(exc).__name__}: {exc})") from None
    return header, data


def write_table(path, X, y=None) -> None:
    """Write (X, y) as read by :func:`read_table` (.npz, .csv or .parquet).

    The file is written whole or not at all (a temporary file, then a rename).

    Parameters
    ----------
    path : str or path-like
        The file; its suffix chooses the format.
    X : ndarray of shape (n, d)
        The covariates.
    y : ndarray of shape (n,), optional
        The responses (the column "y").
    """
    path = Path(path)
    if path.suffix not in (".npz", ".csv", ".parquet"):
        raise ValueError(f"unknown data file type {path.suffix!r}; use .npz, .csv or .parquet.")
    with atomic_path(path, "data file") as tmp:
        _write_table(tmp, X, y)


def _write_table(path: Path, X, y) -> None:
    X = np.asarray(X, dtype=float)
    names = [f"x{j}" for j in range(X.shape[1])]
    if path.suffix == ".npz":
        np.savez(path, X=X, **({} if y is None else {"y": np.asarray(y, float)}))
        return
    cols = [X[:, j] for j in range(X.shape[1])]
    if y is not None:
        names.append("y")
        cols.append(np.asarray(y, float))
    if path.suffix == ".csv":
        np.savetxt(path, np.column_stack(cols), delimiter=",", header=",".join(names),
                   comments="", fmt="%.17g")
    elif path.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError("writing .parquet needs pyarrow (pip install pyarrow).") from None
        pq.write_table(pa.table(dict(zip(names, cols))), path)
