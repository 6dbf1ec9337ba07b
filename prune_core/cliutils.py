"""Command-line helpers shared by ``python -m prune_core`` and the sweep modules: a one-line
argparse parser, checks that a folder or file can be written, made before any work starts, and
the one-line form of an error.

Standard library only (no torch): the commands import it before they check their flags."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

# Longest error line shown or stored (MLflow tags, log lines); the cause is in its first words.
ERROR_LINE_MAX = 500
# Seeds go to NumPy and Optuna's samplers, which take 0 <= seed < 2**32 (torch takes more).
SEED_MAX = 2**32 - 1


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage dump) and exits with status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE`` on stderr and exit 2."""
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def first_line(err: BaseException) -> str:
    """``Type: first non-empty line of the message`` (just ``Type`` for an empty message), cut to
    500 characters: e.g. ``OSError: [Errno 28] No space left on device``."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return text[:ERROR_LINE_MAX]


def check_seed(flag: str, seed: int, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` (one line naming ``flag``) unless ``0 <= seed <= 2**32 - 1``."""
    if not 0 <= seed <= SEED_MAX:
        raise error(f"{flag} {seed}: must be an integer 0..{SEED_MAX} (2**32 - 1)")


def check_writable_dir(
    flag: str, path: str | os.PathLike, error: type[Exception] = ValueError, _value: str = ""
) -> None:
    """Check, before any work, that folder ``path`` exists or can be created and that a file can
    be written in it; raise ``error`` with one line naming ``flag`` and the folder otherwise.

    It really tries (as root, ``os.access`` says yes to almost everything): missing folders are
    created and a probe file is written, and both are removed again, so the check leaves no trace.
    """
    folder = Path(path).expanduser().absolute()
    value = _value or str(path)  # what the user typed after the flag
    missing: list[Path] = []  # folders that do not exist yet, innermost first
    created: list[Path] = []
    try:
        existing = folder
        while not existing.exists():
            missing.append(existing)
            if existing.parent == existing:
                break
            existing = existing.parent
        if existing.exists() and not existing.is_dir():
            what = "is a file, not a folder" if existing == folder else f"{existing} is a file"
            raise error(f"{flag} {value}: cannot write to the folder {folder} ({what})")
        for parent in reversed(missing):
            parent.mkdir()
            created.append(parent)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise error(
            f"{flag} {value}: cannot write to the folder {folder} ({err.strerror or err}); "
            "pass a writable folder"
        ) from None
    finally:
        for made in reversed(created):  # innermost first; only the (empty) folders made above
            try:
                made.rmdir()
            except OSError:
                pass  # another process put something there meanwhile: it is theirs now


def check_writable_file(
    flag: str, path: str | os.PathLike, error: type[Exception] = ValueError
) -> None:
    """Check, before any work, that file ``path`` can be written: not a folder, its folder can be
    created and written (``check_writable_dir``), and an existing file opens for writing (it is
    not changed). Raises ``error`` with one line naming ``flag`` and the path otherwise."""
    file = Path(path).expanduser().absolute()
    if file.is_dir():
        raise error(f"{flag} {path}: is a folder; give a file path")
    check_writable_dir(flag, file.parent, error, _value=str(path))
    if file.exists():
        try:
            with open(file, "ab"):  # append mode without a write leaves content and mtime alone
                pass
        except OSError as err:
            raise error(
                f"{flag} {path}: cannot write the file ({err.strerror or err}); "
                "pass a writable path"
            ) from None
