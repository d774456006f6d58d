"""Atomic file writes: a kill or a full disk never leaves half a file under the final name.

A file is written to a temporary name in its own folder (same file system), flushed to disk
and renamed over the final name with :func:`os.replace`, which is atomic: readers see the old
file or the new one, never a part. A failed write removes its temporary file. A full disk
(``ENOSPC``, ``EDQUOT``) becomes a one-line :class:`DiskFullError` naming the folder and the space
needed; the previous file under the final name is untouched.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepfake.errors import DeepfakeError, exception_chain

if TYPE_CHECKING:
    import keras

_DISK_FULL = {errno.ENOSPC} | ({errno.EDQUOT} if hasattr(errno, "EDQUOT") else set())
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded")
TMP_MARK = ".tmp"


class DiskFullError(DeepfakeError):
    """No space left where a file was being written; the previous file is intact."""


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a full disk or exceeded quota."""
    for error in exception_chain(exc):
        if isinstance(error, OSError) and error.errno in _DISK_FULL:
            return True
        if any(text in str(error) for text in _DISK_FULL_TEXT):  # h5py and others re-raise without errno
            return True
    return False


def human_size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KB", "MB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GB"


def temporary_name(path: Path) -> Path:
    """``dir/.name.<pid>.tmp.suffix``: hidden, same folder, same suffix (Keras insists on ``.keras``)."""
    return path.with_name(f".{path.stem}.{os.getpid()}{TMP_MARK}{path.suffix}")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporary files that killed writers left in ``folder`` (never a live process's)."""
    removed = []
    for tmp in Path(folder).glob(f".*{TMP_MARK}.*"):
        parts = tmp.name.split(".")
        try:
            pid = int(parts[-3])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not _alive(pid):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    if os.name != "posix":
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def disk_full_message(path: Path, needed: int | None, written: int, hint: str) -> str:
    folder = path.parent
    if needed is None and path.is_file():
        needed = path.stat().st_size  # the previous version of the same file
    try:
        free = f"{human_size(shutil.disk_usage(folder).free)} free"
    except OSError:
        free = "free space unknown"
    if needed and needed > written:
        need = f"about {human_size(needed)}"
    else:
        need = f"more than {human_size(written)}" if written else "more space"
    return f"no space left on device in {folder}: writing {path.name} needs {need} ({free}); {hint}"


@contextmanager
def atomic_path(path: str | Path, *, needed: int | None = None,
                hint: str = "free some space there and run the command again") -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` atomically.

    ``needed`` estimates the file's size for the full-disk message (default: the size of the
    file being replaced).
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        written = tmp.stat().st_size if tmp.is_file() else 0
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if is_disk_full(exc):
            raise DiskFullError(disk_full_message(path, needed, written, hint)) from None
        raise


def write_text(path: str | Path, text: str, **kwargs: Any) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`atomic_path` for ``kwargs``."""
    with atomic_path(path, **kwargs) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_csv(path: str | Path, rows: Iterable[dict[str, Any]], columns: Sequence[str] | None = None,
              **kwargs: Any) -> Path:
    """Write a table atomically as CSV: a header of ``columns`` (default: the first row's keys), then one line a row
    (``csv.DictWriter``'s text of each value); see :func:`atomic_path` for ``kwargs``."""
    rows = list(rows)
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(columns if columns is not None else rows[0] if rows else []))
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path, **kwargs) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8", newline="")
    return Path(path)


def save_model(model: keras.Model, path: str | Path, **kwargs: Any) -> Path:
    """``model.save(path)`` atomically (a ``.keras`` file); see :func:`atomic_path` for ``kwargs``."""
    with atomic_path(path, **kwargs) as tmp:
        model.save(tmp)
    return Path(path)


def copy_file(src: str | Path, dst: str | Path, **kwargs: Any) -> Path:
    """Copy ``src`` over ``dst`` atomically."""
    with atomic_path(dst, needed=Path(src).stat().st_size, **kwargs) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)
