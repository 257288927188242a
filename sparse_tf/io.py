"""Crash-safe file output: every artifact is written under a temporary name, then renamed.

A rename within one directory is atomic on POSIX file systems, so a reader (or a resumed run
after SIGKILL) sees either the old complete file or the new complete one, never a partial file
where a good one stood.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TextIO

from sparse_tf.errors import SparseTFError
from sparse_tf.filenames import LOCK_FILE


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside directory `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` is always either absent, old or complete."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, data: Any) -> None:
    """Atomically write `data` as indented JSON (keys in insertion order)."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: Path) -> Any:
    """Parse a JSON file; a missing or malformed file is a ValueError naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Build a directory under a temporary sibling name; rename it to `path` on success.

    Usage:
        with atomic_dir(out / "step-100") as tmp:
            save_file(tensors, tmp / "model.safetensors")

    Every file written into the temporary directory is fsynced before the rename. If the body
    raises, the temporary directory is removed and `path` is untouched. An existing `path` is
    replaced (moved aside first, deleted after the new one is in place).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        publish_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_dir(tmp: Path, path: Path) -> None:
    """Make the complete directory `tmp` (a hidden sibling of `path` whose name ends in .tmp)
    durable and rename it to `path`, replacing any old `path` only once the new one is in
    place. `atomic_dir` ends with this; writers that several processes fill use it directly."""
    for child in tmp.rglob("*"):
        if child.is_file():
            # Some writers (safetensors) create files 0600; artifacts are meant to be shared.
            os.chmod(child, 0o666 & ~_umask())
            with open(child, "rb") as f:
                os.fsync(f.fileno())
        elif child.is_dir():
            fsync_dir(child)
    fsync_dir(tmp)
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old)


def remove_dir(path: Path) -> None:
    """Delete a directory tree so that no half-deleted copy stays under its real name."""
    path = Path(path)
    if not path.exists():
        return
    trash = path.with_name(f".{path.name}.trash-{os.getpid()}")
    os.replace(path, trash)
    shutil.rmtree(trash)


_LEFTOVER = re.compile(r"^\..+(\.tmp|\.old-\d+|\.trash-\d+)$")


def remove_leftovers(folder: Path) -> list[str]:
    """Delete what an interrupted `atomic_*` write or `remove_dir` left in `folder` (hidden
    temporary names only; the real files are never touched). Returns the names removed."""
    removed = []
    for p in Path(folder).iterdir():
        if _LEFTOVER.match(p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p.name)
    return sorted(removed)


def remove_outputs(folder: Path, is_output: Callable[[str], bool]) -> list[str]:
    """Delete the entries of `folder` whose names `is_output` claims (what a job wrote there,
    and the temporaries of its interrupted writes); everything else in the folder, the user's
    own files, stays. A symlink is unlinked, never followed. Returns the names removed."""
    removed = []
    for p in sorted(Path(folder).iterdir()):
        if not (is_output(p.name) or _LEFTOVER.match(p.name)):
            continue
        if p.is_dir() and not p.is_symlink():
            remove_dir(p)
        else:
            p.unlink()
        removed.append(p.name)
    return removed


"""The lock file a job holds in the folder it writes (hidden; never deleted: see FolderLock)."""


def user_entries(folder: Path) -> list[str]:
    """The sorted names in `folder` (none if it does not exist), its lock file left out."""
    folder = Path(folder)
    return (
        sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE) if folder.is_dir() else []
    )


class FolderInUseError(SparseTFError):
    """Another process holds the folder's lock."""


class FolderLock:
    """An exclusive lock on a folder for one job's life (a training run, a pruning run): an OS
    lock (flock) on FOLDER/.sparse_tf.lock, which also records the holder. The OS drops the
    lock when the holder exits in any way (kill -9 included), so a lock left by a dead process
    is never in force: the file stays, the lock does not. The file is never deleted, so two
    processes cannot end up holding locks on two different files of the same name.

        with FolderLock(out, "training run"):
            ...  # a second process entering here raises FolderInUseError, naming the holder
    """

    def __init__(self, folder: Path, what: str) -> None:
        self.folder, self.what = Path(folder), what
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_FILE

    def check_free(self) -> None:
        """Raise FolderInUseError if another process holds the lock now; creates nothing (a
        folder without a lock file is free)."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except (FileNotFoundError, NotADirectoryError):
            return
        try:
            self._lock_or_raise(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def acquire(self) -> FolderLock:
        """Take the lock (the folder must exist) or raise FolderInUseError."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            self._lock_or_raise(fd)
        except BaseException:
            os.close(fd)
            raise
        holder = {
            "what": self.what,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        return self

    def _lock_or_raise(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace")
            raise FolderInUseError(
                f"{self.folder}: in use by {_describe_holder(holder)}; wait for it to end or "
                "choose another folder"
            ) from None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def locked_folder(folder: Path, what: str) -> Iterator[FolderLock]:
    """Create `folder` if needed and hold its FolderLock for the block. If the block fails and
    this call created the folder, which holds nothing but the lock file, the folder goes again:
    a failed job leaves no trace."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with FolderLock(folder, what) as lock:
            yield lock
    except BaseException:
        if created and not user_entries(folder):
            shutil.rmtree(folder, ignore_errors=True)
        raise


@contextlib.contextmanager
def waiting_lock(path: Path, waiting: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing, never removed) for the block,
    waiting for whoever holds it; `waiting` is said on stderr once if that happens. For work
    that several processes of one machine may start at once (tokenising a corpus, measuring
    the GPU) and only one should do: the others wait, then find it done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(waiting, file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def _describe_holder(text: str) -> str:
    """'a training run (pid 12, host h, since T: COMMAND)' from a lock file's contents."""
    try:
        h = json.loads(text)
        return f"{h['what']} (pid {h['pid']} on {h['host']}, since {h['since']}: {h['command']})"
    except (ValueError, KeyError, TypeError):
        return "another process"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 16 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cache_dir() -> Path:
    """Where tokenizers and tokenised corpora are cached: $SPARSE_TF_CACHE, else
    $XDG_CACHE_HOME/sparse_tf, else ~/.cache/sparse_tf."""
    if env := os.environ.get("SPARSE_TF_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sparse_tf"


ProgressMode = Literal["auto", "bar", "lines", "none"]
"""How long work reports on stderr: a tqdm bar, plain lines, nothing, or 'auto' (a bar on a
terminal, lines otherwise). Training and data preparation read it the same way."""


def progress_style(
    mode: ProgressMode, stream: TextIO | None = None
) -> Literal["bar", "lines", "none"]:
    """`mode` with 'auto' resolved for `stream` (default stderr)."""
    if mode == "auto":
        return "bar" if (stream or sys.stderr).isatty() else "lines"
    return mode
