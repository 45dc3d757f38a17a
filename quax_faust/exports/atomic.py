"""An export appears whole or not at all: it is written to a temporary file in the same directory
(same filesystem, so the final rename is atomic) and renamed to its name only once complete."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


def refuse_existing(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists: give --force to replace it")


@contextlib.contextmanager
def atomic_output(path: Path, *, force: bool = False) -> Iterator[Path]:
    """Yields a temporary path next to ``path``; on success it becomes ``path``, on any exception
    (Ctrl-C too) it is removed. An existing ``path`` is refused unless ``force``."""
    path = Path(path)
    refuse_existing(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        refuse_existing(path, force)  # created by someone else meanwhile
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it 0600; an export is an ordinary file
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
