"""Atomic file writes and provenance records for every artifact we write.

Readers must never see a half-written file: we write to a temporary name in the same
folder, fsync, then rename over the target (rename is atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import platform
import re
import subprocess
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from repro.errors import ReproError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success fsync it and rename it over `target`.

    On any exception the temporary file is removed and `target` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Temp name keeps the extension (some writers check it) and starts with a dot (hidden).
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.tmp-", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give ours the usual permissions (0666 less the umask).
        umask = os.umask(0)
        os.umask(umask)
        if tmp_path.is_file():
            os.chmod(tmp_path, 0o666 & ~umask)
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        if (refused := os_error(exc, target)) is not None and refused is not exc:
            raise refused from exc
        raise


_OS_ERROR_TEXT = re.compile(r"\(os error (\d+)\)")  # how safetensors (Rust) reports an I/O error


def os_error(exc: BaseException, path: str | os.PathLike) -> OSError | None:
    """`exc` as an OSError naming `path` when the machine refused a write (full disk, no
    permission, read-only), also when a library reported it in its own words (safetensors: "No
    space left on device (os error 28)"); None for any other error. Lets the CLI say it in one line."""
    if isinstance(exc, OSError) and exc.errno is not None:
        if exc.filename:
            return exc
        return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), os.fspath(path))
    match = _OS_ERROR_TEXT.search(str(exc)) if type(exc).__name__ == "SafetensorError" else None
    if match:
        code = int(match.group(1))
        return OSError(code, os.strerror(code), os.fspath(path))
    return None


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it replaces `target` (old one removed).

    On any exception the temporary folder is removed and `target` is left untouched; a
    reader sees the old folder or the new one, never a half-written one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class FolderLock:
    """Advisory `flock`s on files in folders, held until `close()` (or the process ends: the
    kernel releases them even on SIGKILL, so a killed run never leaves a stale lock).

    `locks` is [(folder, file name, shared)]: exclusive for the one writer of a folder, shared
    for cooperating writers (the ranks of one distributed run) that each also hold an
    exclusive lock of their own. A lock already held elsewhere raises ReproError(`busy`)
    and releases what this object had taken.
    """

    def __init__(self, locks: list[tuple[str | os.PathLike, str, bool]], busy: str):
        self._files = []
        try:
            for folder, name, shared in locks:
                Path(folder).mkdir(parents=True, exist_ok=True)
                fh = open(Path(folder) / name, "a+")
                self._files.append(fh)
                try:
                    fcntl.flock(fh, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise ReproError(busy) from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for fh in reversed(self._files):
            if not fh.closed:
                fcntl.flock(fh, fcntl.LOCK_UN)
                fh.close()
        self._files = []

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every filesystem allows opening a directory.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def writable_folder(folder: str | os.PathLike, flag: str = "--out") -> Path:
    """Create `folder` if needed and prove a file can be written in it, else one ReproError.

    Called before expensive work (loading a model, generating, training), so that a bad
    output path fails in a second instead of after the run, with nothing written.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ReproError(f"{flag} {folder} is a file: give {flag} a new or existing folder")
    if problem := _cannot_write(folder):
        raise ReproError(f"cannot write into {flag} {folder} ({problem}): give {flag} a folder you can write to")
    return folder


def writable_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Check that the file `path` can be (re)written atomically: not a folder, its folder writable."""
    path = Path(path)
    if path.is_dir():
        raise ReproError(f"{flag} {path} is a folder: give {flag} a file name, e.g. {path / 'results.jsonl'}")
    if problem := _cannot_write(path.parent):
        raise ReproError(f"cannot write {flag} {path} into {path.parent} ({problem}): give {flag} a path you can write to")
    return path


def _cannot_write(folder: Path) -> str | None:
    """Why no file can be created in `folder` (made if missing), or None if one can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def read_checked(path: str | os.PathLike, read, fix: str):
    """`read()` of the file `path`; a file that cannot be parsed (truncated, overwritten, not
    what it should be) becomes one ReproError naming it and saying `fix`."""
    from safetensors import SafetensorError

    try:
        return read()
    except (SafetensorError, RuntimeError, EOFError, UnicodeDecodeError, ValueError) as exc:
        text = str(exc).strip()
        reason = text.splitlines()[0][:120] if text else type(exc).__name__
        raise ReproError(f"{path} is damaged ({reason}): {fix}") from None


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_json_atomic(target: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as sorted, indented JSON atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"
    return write_bytes_atomic(target, text.encode())


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays, paths and tensors show up in results dicts.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def git_commit(folder: str | os.PathLike | None = None) -> str | None:
    """The git commit of the checkout holding `folder` (default: this package), or None."""
    folder = Path(folder) if folder else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance(**extra: Any) -> dict:
    """What produced an artifact: the command line, package version, git commit, device, time, plus `extra`."""
    import torch

    from repro import __version__

    record = {
        "argv": command_line(),
        "repro_version": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "device": device_name(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    record.update(extra)
    return record


def command_line() -> list[str]:
    """The whole command line, interpreter and -m included; in a chapter's kernel, the runner's
    (`repro.notebooks` starts the kernel with it as REPRO_COMMAND, a JSON list)."""
    with contextlib.suppress(KeyError, ValueError):
        given = json.loads(os.environ["REPRO_COMMAND"])
        if isinstance(given, list) and all(isinstance(a, str) for a in given):
            return given
    return list(sys.orig_argv)


def device_name() -> str:
    """The machine's accelerator: the current CUDA device's name, else the CPU model and how many CPUs.

    Only a process that has already started CUDA names its GPU: asking would start CUDA (seconds,
    memory on the device) in processes that never use it, such as a CPU run's artifact writes."""
    import torch

    if torch.cuda.is_initialized():
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} CPUs"
