"""Atomic writes, hashing and JSONL helpers shared by every stage.

Temporary entries are named ``.NAME.lexlora-PID.XXXXXXXX.tmp`` next to their target, so a later
write of the same target recognises and removes the ones a killed lexlora process left (and only
those).
A folder written by :func:`atomic_directory` carries a marker file, :data:`MADE_BY_LEXLORA`:
lexlora replaces an existing folder only when it carries the marker and the caller asked to.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from lexlora.errors import LexloraError

MADE_BY_LEXLORA = ".lexlora-made"
CRASH_ENV = "LEXLORA_TEST_CRASH_AT"  # crash tests: os._exit at the named point (see crash_point)
_MARKER_TEXT = "written by lexlora; lexlora may replace this folder when asked to\n"


def crash_point(name: str) -> None:
    """Exit at once, as a killed process would, when ``LEXLORA_TEST_CRASH_AT`` names this point.

    Points: ``write:FILE`` (a file renamed in), ``directory-written:NAME`` (a folder complete, not
    yet swapped in), ``directory-swapped:NAME`` (swapped in, the old one not yet removed).
    """
    if os.environ.get(CRASH_ENV) == name:
        os._exit(137)


def _temp_prefix(name: str) -> str:
    return f".{name}.lexlora-{os.getpid()}."


def remove_stale_temps(folder: Path, name: str | None = None) -> list[Path]:
    """Remove the temporary entries in ``folder`` (for target ``name``, or for any target) whose
    lexlora process is no longer alive.

    Only ``.NAME.lexlora-PID.XXXXXXXX.tmp`` entries with a dead PID go; a temporary folder also
    has to carry lexlora's marker. Returns what was removed.
    """
    target = ".+" if name is None else re.escape(name)
    pattern = re.compile(rf"\.{target}\.lexlora-(\d+)\.[a-z0-9_]{{8}}\.tmp")
    removed = []
    for entry in Path(folder).glob(f".{'*' if name is None else glob.escape(name)}.lexlora-*.tmp"):
        match = pattern.fullmatch(entry.name)
        if match is None or _process_alive(int(match[1])):
            continue
        if entry.is_symlink() or not entry.is_dir():
            entry.unlink(missing_ok=True)
        elif (entry / MADE_BY_LEXLORA).is_file():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            continue
        removed.append(entry)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


@contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; rename it over ``path`` only if the block succeeds.

    An interrupted write never leaves a half-written ``path`` behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding, newline=None if "b" in mode else "\n") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    crash_point(f"write:{path.name}")


_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def check_directory_target(
    path: str | Path, *, replace: bool = False, replace_option: str = "--overwrite"
) -> Path:
    """``path`` if :func:`atomic_directory` may write it, else a LexloraError saying why.

    A new path is fine; an existing one only when ``replace`` is set and it is a folder lexlora
    made (it carries the marker). ``.``, ``..``, ``/`` and any folder holding the current
    directory are refused. ``replace_option`` names how the user asks to replace.
    """
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise LexloraError(f"{str(path)!r}: not a folder lexlora can write; name a new folder")
    if not os.path.lexists(path):
        return path
    if path.is_symlink() or not path.is_dir() or not (path / MADE_BY_LEXLORA).is_file():
        raise LexloraError(
            f"{path} exists and was not made by lexlora; choose a new path or move it away "
            "(lexlora never deletes what it did not create)"
        )
    if Path.cwd().resolve().is_relative_to(path.resolve()):
        raise LexloraError(f"{path} holds the current folder; run from elsewhere to replace it")
    if not replace:
        raise LexloraError(f"{path} exists; choose a new path or pass {replace_option}")
    return path


@contextmanager
def atomic_directory(path: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; if the block succeeds it becomes ``path``,
    otherwise it is deleted.

    The folder gets lexlora's marker. An existing ``path`` is an error (checked before and after
    the block, see :func:`check_directory_target`) unless ``replace`` is set and lexlora made it;
    then the new folder is swapped in (atomically where the OS can) before the old one is removed.
    """
    path = check_directory_target(path, replace=replace)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent))
    try:
        tmp.chmod(0o755)
        (tmp / MADE_BY_LEXLORA).write_text(_MARKER_TEXT, encoding="utf-8")
        yield tmp
        crash_point(f"directory-written:{path.name}")
        if os.path.lexists(check_directory_target(path, replace=replace)):
            _swap_in(tmp, path)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(new: Path, path: Path) -> None:
    """Put folder ``new`` at ``path`` and remove the (lexlora-made) folder that was there."""
    if _exchange(new, path):
        old = new
    else:  # no atomic exchange here: move the old folder aside first, then the new one in
        old = Path(tempfile.mkdtemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent))
        os.replace(path, old)
        os.rename(new, path)
    crash_point(f"directory-swapped:{path.name}")
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def dumps_canonical(obj: Any) -> str:
    """JSON with sorted keys and no ASCII escaping: the same object always gives the same bytes.

    The Unicode line breaks that JSON leaves raw (U+0085, U+2028, U+2029) are escaped, so a JSONL
    line never splits for readers that honour them (``str.splitlines``, many editors).
    """
    text = json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return text.translate(_LINE_BREAKS)


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write ``rows`` as canonical JSON lines, atomically. Returns the number of rows."""
    n = 0
    with atomic_write(path) as f:
        for row in rows:
            f.write(dumps_canonical(row))
            f.write("\n")
            n += 1
    return n


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a JSONL file; a malformed line is a LexloraError naming it."""
    path = Path(path)
    if not path.is_file():
        raise LexloraError(f"{path}: file not found")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LexloraError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise LexloraError(f"{path}:{lineno}: expected a JSON object per line")
            yield row


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    with atomic_write(path) as f:
        json.dump(obj, f, ensure_ascii=False, sort_keys=True, indent=2)
        f.write("\n")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    return sha256_bytes(text.encode("utf-8"))


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()
