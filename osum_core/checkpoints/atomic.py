"""Saving so that a reader finds the previous file (or folder) or the new one, never part of one.

- `atomic_write(path, write)`: `write` fills a temporary sibling ``.NAME.partial-HOST-PID-XXXXXX`` (hidden, and
  ending in neither ``.ckpt`` nor ``.safetensors``, so no checkpoint glob finds it). It is flushed and fsynced,
  renamed over NAME (``os.replace``: one step on POSIX) and the folder is fsynced so the rename survives a
  power cut. On any error the temporary file is removed and the error raised again.
- `atomic_directory(path)`: the same for a folder. It is built in a temporary sibling, every file in it is
  fsynced, and it takes `path`'s place in one rename (an existing folder is swapped out in one step where
  Linux's renameat2 can; see `atomic_directory`).
- `AtomicCheckpointIO`: Lightning's TorchCheckpointIO, with local ``.ckpt`` files written by `atomic_write`.
- `DiskFullError`: an `OSError` (errno ENOSPC or EDQUOT) whose message names the file or folder and says that
  what was there before is intact, or that nothing was there.

A process killed while saving leaves its temporary behind. The next save to the same path on the same host
removes the ones whose process is gone, so a resumed run does not keep a dead run's half checkpoint on disk.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import shutil
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

PARTIAL = ".partial-"  # marks a temporary file or folder that is still being written
PREVIOUS = ".previous-"  # marks a replaced folder; kept when a crash left no folder at the path (see atomic_directory)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """The disk (or the quota) filled while `path` was being saved. `previous_intact`: a previous file or
    folder was there and is unchanged; False means nothing was there and nothing was left there."""

    def __init__(self, path: Path, previous_intact: bool, code: int, what: str = "file") -> None:
        kept = (f"the previous {what} at that path is intact and unchanged" if previous_intact
                else f"there was no {what} at that path before, and none was left there")
        super().__init__(code, f"{os.strerror(code)} while saving {path}: the save was abandoned and its partial "
                               f"{what} removed; {kept}. Free space, then save again")
        self.path = path
        self.previous_intact = previous_intact


def disk_full_errno(error: BaseException | None) -> int | None:
    """ENOSPC or EDQUOT when `error` or an error it came from says the disk or quota is full, else None.
    torch.save turns a failed write into a RuntimeError (the OSError is its context); safetensors and
    save_pretrained raise a SafetensorError that only says ``(os error 28)``."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            return error.errno
        text = str(error)
        for code in DISK_FULL:
            if f"os error {code})" in text or os.strerror(code) in text:
                return code
        error = error.__cause__ or error.__context__
    return None


def partial_path(path: Path, marker: str = PARTIAL) -> Path:
    """A fresh temporary sibling of `path`, named after it, this host and this process."""
    return path.with_name(f".{path.name}{marker}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_partials(path: Path) -> list[Path]:
    """Remove the temporaries of `path` that a process of this host left when it was killed; returns them."""
    prefix = f".{path.name}{PARTIAL}{socket.gethostname()}-"
    if not path.parent.is_dir():
        return []
    removed = []
    for sibling in path.parent.iterdir():
        pid = sibling.name[len(prefix):].split("-")[0] if sibling.name.startswith(prefix) else ""
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            _remove(sibling)
            removed.append(sibling)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def fsync_directory(path: Path) -> None:
    """Make the entries of folder `path` (a rename into it) durable."""
    if os.name == "nt":  # Windows cannot open a folder; its renames are journalled
        return
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(descriptor)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # filesystems that cannot sync a folder
            raise
    finally:
        os.close(descriptor)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root` (files first, then the folders that name them)."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            file = Path(folder, name)
            if file.is_symlink():
                continue
            with file.open("rb") as stream:
                os.fsync(stream.fileno())
        fsync_directory(Path(folder))


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """Write `path` with `write(stream)` so that it is the previous file or the new one, whole, also after a
    crash or power cut. Raises `DiskFullError` when the disk fills, any other error as it was."""
    path = Path(path)
    remove_stale_partials(path)
    existed = path.exists()
    temporary = partial_path(path)
    try:
        with temporary.open("xb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        code = disk_full_errno(error)
        if code is not None:
            raise DiskFullError(path, existed, code) from error
        raise
    fsync_directory(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    atomic_write(path, lambda stream: stream.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _exchange(a: Path, b: Path) -> bool:
    """Swap `a` and `b` in one step (Linux renameat2 RENAME_EXCHANGE); False where the system or the
    filesystem cannot (then nothing was changed)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library without renameat2 (glibc < 2.28, musl < 1.2.?)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_cwd, exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], replace: bool = False) -> Iterator[Path]:
    """Build folder `path` all at once: yields an empty temporary sibling to write into; when the block ends
    without an error, everything in it is fsynced and it is renamed to `path`. On an error it is removed
    (`DiskFullError` when the disk filled) and `path` is as it was.

    An existing `path` is an error unless `replace`; then the new folder and the old one are swapped in one
    step (renameat2 RENAME_EXCHANGE: ext4, xfs, btrfs, tmpfs) and the old one is deleted afterwards. Where the
    filesystem cannot swap (NFS, say) the old folder is first renamed to ``.NAME.previous-HOST-PID-XXXXXX``: a
    crash between that rename and the next leaves no folder at `path` and the previous one, whole, under that
    name (never one half written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    existed = path.exists() or path.is_symlink()
    if existed and not replace:
        raise FileExistsError(errno.EEXIST, "exists; atomic_directory(replace=False) will not replace it", str(path))
    staging = partial_path(path)
    staging.mkdir()
    old: Path | None = None
    try:
        yield staging
        fsync_tree(staging)
        if not existed:
            os.rename(staging, path)
        elif _exchange(staging, path):
            old = staging  # now holds the previous folder
        else:
            old = partial_path(path, PREVIOUS)
            os.rename(path, old)
            try:
                os.rename(staging, path)
            except BaseException:
                os.rename(old, path)
                raise
    except BaseException as error:
        if old is not staging:
            shutil.rmtree(staging, ignore_errors=True)
        code = disk_full_errno(error)
        if code is not None:
            raise DiskFullError(path, existed, code, "folder") from error
        raise
    fsync_directory(path.parent)
    if old is not None:
        _remove(old)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's TorchCheckpointIO, with checkpoints on a local disk written by `atomic_write` (streamed by
    ``torch.save`` into the temporary file, not first into memory). Other URLs (s3://, ...) are Lightning's.

    Give it to the Trainer as ``lightning.Trainer(plugins=[AtomicCheckpointIO()])``: every strategy that saves
    through ``strategy.checkpoint_io`` then uses it (single device, DDP, FSDP and ModelParallelStrategy with
    full, not distributed, checkpoints); DeepSpeed writes its own folder and does not."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path,
                        storage_options: Any | None = None) -> None:
        from fsspec.core import url_to_fs
        from fsspec.implementations.local import LocalFileSystem

        fs, local = url_to_fs(str(path))
        if not isinstance(fs, LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options (got {storage_options!r})")
        target = Path(local)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda stream: torch.save(checkpoint, stream))
