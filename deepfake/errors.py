"""Errors that the command line turns into a one-line message and exit code 2."""

from __future__ import annotations

from collections.abc import Iterator


class DeepfakeError(Exception):
    """A user-facing error: bad input, bad option, unreachable service.

    The CLI prints ``Error: <message>`` on one line and exits with code 2, without a
    traceback. The message should name the file or option at fault and say what to do.
    """

    exit_code = 2


def exception_chain(exc: BaseException | None, *, suppressed_context: bool = True) -> Iterator[BaseException]:
    """``exc``, then each exception it was raised from (``__cause__``) or while handling (``__context__``),
    each once. ``suppressed_context=False`` stops where ``raise ... from None`` hid the context."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        hidden = exc.__suppress_context__ and not suppressed_context
        exc = exc.__cause__ or (None if hidden else exc.__context__)


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
