"""Errors that the command line turns into a one-line message and exit code 2."""

from __future__ import annotations

from collections.abc import Iterator


class DeepfakeError(Exception):
    """A user-facing error: bad input, bad option, unreachable service.

    The CLI prints ``Error: <message>`` on one line and exits with code 2, without a
    traceback. The message should name the file or option at fault and say what to do.
    """

    exit_code = 2


class TooLarge(ValueError):
    """An input over a size limit (bytes, pixels): its own error, as for any unusable input, which a server
    answers with 413 rather than 422."""


def exception_chain(exc: BaseException | None, *, suppressed_context: bool = True) -> Iterator[BaseException]:
    """``exc``, then each exception it was raised from (``__cause__``) or while handling (``__context__``),
    each once. ``suppressed_context=False`` stops where ``raise ... from None`` hid the context."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        hidden = exc.__suppress_context__ and not suppressed_context
        exc = exc.__cause__ or (None if hidden else exc.__context__)


def outage_cause(exc: BaseException | None, *, suppressed_context: bool = True) -> BaseException | None:
    """The network or database error behind ``exc`` (``exc`` itself or one in its :func:`exception_chain`) when
    it means a service cannot be reached or is busy: a refused, reset or timed-out connection, an HTTP client's
    retries exhausted, a database that is down, locked or dropped the connection. None for any other error.

    The one rule for what counts as an outage: the MLflow tracking store's (:func:`deepfake.tracking.unreachable`)
    and the Optuna database's (retried by the tuning storage) alike."""
    if exc is None:
        return None
    import requests  # imported here: this module stays light to import
    import sqlalchemy.exc

    outages = (ConnectionError, TimeoutError,  # socket errors: refused, reset, timed out
               requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.RetryError,
               sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,  # database down, locked, gone
               sqlalchemy.exc.DisconnectionError, sqlalchemy.exc.TimeoutError)  # connection dropped, pool timeout
    for error in exception_chain(exc, suppressed_context=suppressed_context):
        if isinstance(error, outages):
            return error
        if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
            return error
    return None


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
