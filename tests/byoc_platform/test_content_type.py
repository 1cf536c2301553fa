"""The JSON content-type rule shared by the runtime's JSON routes (byoc_platform/content_type)."""

from __future__ import annotations

import pytest

from byoc_platform.api_errors import ApiError
from byoc_platform.content_type import json_content_type_problem, require_json


@pytest.mark.parametrize(
    "value",
    [
        "application/json",  # what the official stigg and stigg-api-client-v2 SDKs send
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        'application/json; charset="utf-8"',
        "application/json;charset=utf8",
        "application/json; boundary=x",
    ],
)
def test_json_with_or_without_parameters_is_accepted(value: str) -> None:
    assert json_content_type_problem(value) is None
    require_json({"content-type": value})


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (None, "Missing Content-Type"),
        ("", "Missing Content-Type"),
        ("text/plain", "'text/plain'"),
        ("application/xml", "'application/xml'"),
        ("application/x-www-form-urlencoded", "'application/x-www-form-urlencoded'"),
        ("multipart/form-data; boundary=x", "multipart/form-data"),
        ("json", "'json'"),
        ("application/jsonx", "'application/jsonx'"),
        ("application/json; charset=utf-16", "'utf-16'"),
        ("application/json; charset=latin-1", "'latin-1'"),
    ],
)
def test_anything_else_is_415_naming_what_was_sent_and_what_is_expected(
    value: str | None, named: str
) -> None:
    headers = {} if value is None else {"content-type": value}
    with pytest.raises(ApiError) as refused:
        require_json(headers)
    error = refused.value
    assert error.status == 415 and error.code == "UNSUPPORTED_MEDIA_TYPE"
    assert named in error.message and "application/json" in error.message
    assert error.retryable is False  # the SDK must not resend it unchanged


def test_a_very_long_header_is_not_echoed_whole() -> None:
    problem = json_content_type_problem("text/" + "x" * 10_000)
    assert problem is not None and len(problem) < 300
