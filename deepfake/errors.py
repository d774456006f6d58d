"""Errors that the command line turns into a one-line message and exit code 2."""


class DeepfakeError(Exception):
    """A user-facing error: bad input, bad option, unreachable service.

    The CLI prints ``Error: <message>`` on one line and exits with code 2, without a
    traceback. The message should name the file or option at fault and say what to do.
    """

    exit_code = 2


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
