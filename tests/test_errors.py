"""The one rule for what counts as an outage (:func:`deepfake.errors.outage_cause`)."""

import pytest
import requests
import sqlalchemy.exc

from deepfake.errors import outage_cause


def raised_while_handling(behind: BaseException, error: BaseException) -> BaseException:
    """``error``, raised while ``behind`` was being handled (as MLflow and Optuna wrap errors)."""
    try:
        try:
            raise behind
        except type(behind):
            raise error  # noqa: B904 - the implicit context is the point
    except type(error) as exc:
        return exc


def test_finds_a_database_error_behind_another_error():
    database = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))
    wrapped = raised_while_handling(database, RuntimeError("could not record the trial"))
    assert outage_cause(wrapped) is database


def test_finds_a_network_error():
    refused = requests.exceptions.ConnectionError("Connection refused")
    assert outage_cause(refused) is refused
    wrapped = raised_while_handling(refused, RuntimeError("API request to http://x/api failed"))
    assert outage_cause(wrapped) is refused


@pytest.mark.parametrize("error", [ValueError("bad value"), KeyError("x"), None])
def test_other_errors_are_not_outages(error):
    assert outage_cause(error) is None


def test_from_none_hides_the_error_only_when_asked():
    refused = ConnectionRefusedError("refused")
    try:
        try:
            raise refused
        except ConnectionRefusedError:
            raise ValueError("bad answer") from None
    except ValueError as exc:
        hidden = exc
    assert outage_cause(hidden) is refused
    assert outage_cause(hidden, suppressed_context=False) is None
