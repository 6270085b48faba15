"""Atomic file and folder writes, content hashes, JSON helpers and a per-stage lock.

Everything a stage writes goes through here: a temp name first, then `os.replace`, so a killed
run never leaves a file or folder that looks complete. A write that fails because the disk is
full, over quota, read-only or not writable removes its temp file and becomes an `AlignError`
naming the file: the user can fix it, and a re-run resumes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from align.core.errors import AlignError

# errno values a user fixes on their side (space, quota, permissions), not bugs in align
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def canonical_json(obj: Any) -> str:
    """Stable JSON (sorted keys, no spaces): the form every hash is taken over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def is_local_file(path: str | Path) -> bool:
    """True when `path` names a regular file here; False also for a name the OS cannot look up
    (too long, a NUL byte), which Path.is_file raises on."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_tree(folder: Path) -> str:
    """Hash of every file's relative path and content under `folder`, in sorted order."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(sha256_file(path).encode())
    return h.hexdigest()


def disk_error(exc: OSError, path: Path | str) -> AlignError | None:
    """The one-line error for a write that failed on the user's side of the disk, else None."""
    if exc.errno not in DISK_ERRORS:
        return None
    reason = os.strerror(exc.errno).lower()
    fix = (
        "fix the folder's permissions"
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
        else "free disk space"
    )
    return AlignError(f"{path}: cannot write ({reason}); {fix} and re-run (finished work is kept)")


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: not every file system allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file and one rename; on failure nothing under
    `path`'s name changes and the temp file is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise (disk_error(exc, path) or exc) from None
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def json_safe(obj: Any) -> Any:
    """`obj` with every NaN and infinity (in nested dicts, lists and tuples) replaced by None:
    JSON has neither, and a bare `NaN` makes the file unreadable to strict parsers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    """Strict JSON (non-finite numbers as null), indented, keys sorted."""
    text = json.dumps(json_safe(obj), indent=2, sort_keys=True, default=str, allow_nan=False)
    atomic_write_text(path, text + "\n")


def link_or_copy(src: Path, dst: Path) -> None:
    """Put file `src` at `dst`: weights (`*.safetensors`) as a hard link (no extra disk; stages
    never rewrite a weight file in place, they write new files and wipe old folders), anything
    else, or a link the file system refuses, as a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix == ".safetensors":
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or links not allowed: copy
            pass
    shutil.copy2(src, dst)


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp folder beside `final`; on success it replaces `final` in one rename.

    An existing `final` is first renamed aside (then deleted), so at every moment `final` is
    either the old complete folder, absent, or the new complete folder."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and (err := disk_error(exc, final)):
            raise err from None
        raise
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(final.parent)


@contextlib.contextmanager
def exclusive_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` for the block. Another holder makes us wait (with a
    one-line notice on stderr); the kernel drops the lock when its process dies, so a killed run
    never leaves a stale lock behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            print(
                f"align: {what} is running in another process (pid {holder}); waiting for it",
                file=sys.stderr,
                flush=True,
            )
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
