"""prune_core.cliutils.first_line: the one-line form of an error for logs, tags and messages."""

from __future__ import annotations

import pytest

from prune_core.cliutils import ERROR_LINE_MAX, first_line


@pytest.mark.parametrize(
    "err, line",
    [
        (OSError(28, "No space left on device"), "OSError: [Errno 28] No space left on device"),
        (RuntimeError("no graph\nlong traceback"), "RuntimeError: no graph"),
        (ValueError("\n  \n  the cause  \nmore"), "ValueError: the cause"),  # first non-empty
        (ValueError(), "ValueError"),
        (ValueError("   "), "ValueError"),
        (KeyError("a"), "KeyError: 'a'"),
    ],
)
def test_first_line(err, line):
    assert first_line(err) == line


def test_first_line_is_cut():
    line = first_line(ValueError("x" * 2000))
    assert len(line) == ERROR_LINE_MAX == 500
    assert line == "ValueError: " + "x" * (500 - len("ValueError: "))
