"""Writing output files safely, and remembering which files a run read.

Every output simhete writes (``--trace``, ``--plot``, ``--schedule``, ``--csv``, the sweep's
Pareto PNG, calibration profiles and reports) goes through :func:`write_atomic`:

- the bytes go to a temporary file in the target's directory, which then replaces the target in
  one ``os.replace``: an interrupted or failed write (a full disk) leaves the previous file as it
  was, never half a file;
- the new file gets the previous file's permission bits, or for a new file the user's umask
  applied to 0666 (not the temporary file's 0600);
- a symbolic link is written through: its target is replaced and the link kept (a hard link is
  split: the path gets a new file, other names keep the old content);
- an existing file is replaced with one line on stderr saying so;
- a file this run read as input (same device and inode: the scenario, a profile, the sweep file,
  a DeepSpeed or Hugging Face JSON) is refused, untouched.

Readers call :func:`note_input` for each file they read; the CLI clears the list per command.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from simhete.errors import SimheteError

_INPUTS: dict[tuple[int, int], str] = {}     # (st_dev, st_ino) -> the path it was read as


def note_input(path: str | Path) -> None:
    """Remember that this run read ``path`` (so no output may replace it)."""
    try:
        st = os.stat(path)
    except OSError:
        return
    _INPUTS.setdefault((st.st_dev, st.st_ino), str(path))


def reset_inputs() -> None:
    _INPUTS.clear()


def is_file(p: str | Path) -> bool:
    """``Path.is_file()``, False also for a name the OS refuses (too long for the file system, a
    NUL byte), for which pathlib raises instead: such a name is then "not found", in one line."""
    try:
        return Path(p).is_file()
    except (OSError, ValueError):
        return False


def is_dir(p: str | Path) -> bool:
    """``Path.is_dir()``, False also for a name the OS refuses (see :func:`is_file`)."""
    try:
        return Path(p).is_dir()
    except (OSError, ValueError):
        return False


def input_named(path: str | Path) -> str | None:
    """The input ``path`` is (as it was read), if this run read it."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):     # ValueError: a NUL byte in the name
        return None
    return _INPUTS.get((st.st_dev, st.st_ino))


def check_not_input(path: str | Path, what: str) -> None:
    src = input_named(path)
    if src is not None:
        raise SimheteError(f"{what} {path}: is {src}, an input of this run; refusing to overwrite it "
                           "(nothing was written): give another path")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_fd(fd: int, raw: bytes) -> None:
    view = memoryview(raw)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_atomic(path: str | Path, data: bytes | str, what: str = "output") -> Path:
    """Write ``data`` to ``path`` atomically (see the module doc); ``what`` names the output in
    messages (e.g. ``--plot``). Returns the path written (a link's target)."""
    raw = data.encode() if isinstance(data, str) else data
    check_not_input(path, what)
    target = Path(os.path.realpath(path))
    try:
        old = os.stat(target)
    except FileNotFoundError:
        old = None
    except OSError as e:
        raise SimheteError(f"{what} {path}: cannot write: {e.strerror}") from None
    mode = (old.st_mode & 0o7777) if old is not None else (0o666 & ~_umask())
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    except OSError as e:
        raise SimheteError(f"{what} {path}: cannot write in {target.parent}: {e.strerror}") from None
    try:
        try:
            _write_fd(fd, raw)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        kept = "the previous file is unchanged" if old is not None else "nothing was written"
        raise SimheteError(f"{what} {path}: cannot write: {e.strerror} ({kept})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if old is not None:
        print(f"simhete: replaced {path}" + (f" (through the link, {target})" if os.path.islink(path) else ""),
              file=sys.stderr)
    return target
