"""The REST parsers agree with the patterns and formats the OpenAPI document declares."""

from __future__ import annotations

import json
import re

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import QueryParams

from byoc_platform.api_errors import ApiError
from enforcement import rest_params as p
from enforcement.openapi import _TIME

DATE_TIME = jsonschema_rs.validator_for(_TIME, validate_formats=True)
# Strings shaped like date-times, with out-of-range fields, leap seconds and odd offsets.
TIME_LIKE = st.from_regex(
    r"\A(18|19|20|29|30)[0-9]{2}-[01][0-9]-[0-3][0-9][Tt ][0-2][0-9]:[0-6][0-9]:[0-6][0-9]"
    r"(\.[0-9]{1,9})?([Zz]|[+-][0-2][0-9]:[0-6][0-9])?\Z"
)


@settings(max_examples=2000)
@given(TIME_LIKE)
def test_time_parser_accepts_exactly_what_the_documented_format_accepts(value: str) -> None:
    try:
        p.time_datetime(value, "t")
        parsed = True
    except Exception:
        parsed = False
    assert parsed == DATE_TIME.is_valid(value), value


@pytest.mark.parametrize(
    "value",
    ["2016-12-31T23:59:60Z", "2016-12-31T22:59:60-01:00", "2025-02-28t10:00:00.123456789z"],
)
def test_leap_seconds_and_lower_case_are_times(value: str) -> None:
    assert DATE_TIME.is_valid(value)
    assert p.time_datetime(value, "t").year in (2016, 2017, 2025)


METADATA = re.compile(p.STRING_MAP_PATTERN)


@settings(max_examples=500)
@given(st.from_regex(p.STRING_MAP_PATTERN, fullmatch=True))
def test_every_string_matching_the_metadata_pattern_decodes_to_a_string_map(raw: str) -> None:
    data = p.json_string_map(raw, "reservationMetadata")
    assert isinstance(data, dict) and all(isinstance(v, str) for v in data.values())


@settings(max_examples=500)
@given(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4), st.booleans())
def test_every_json_object_of_strings_matches_the_metadata_pattern(
    data: dict[str, str], ascii_only: bool
) -> None:
    raw = json.dumps(data, ensure_ascii=ascii_only)
    assert p.json_string_map(raw, "reservationMetadata") == data


@pytest.mark.parametrize("raw", ['{"a": 1}', '["a"]', '{"a": "\\ud800"}', "{", '{"a":"b"} x'])
def test_other_metadata_is_refused_naming_the_parameter(raw: str) -> None:
    with pytest.raises(Exception, match="reservationMetadata must be a JSON object"):
        p.json_string_map(raw, "reservationMetadata")


def test_a_cursor_of_more_than_18_digits_is_refused() -> None:
    from starlette.datastructures import QueryParams

    assert p.query_cursor(QueryParams("after=" + "9" * 18), "after") == "9" * 18
    for raw in ("9" * 19, "", "\u00b2", "1 "):
        with pytest.raises(Exception, match="after must be a cursor"):
            p.query_cursor(QueryParams({"after": raw}), "after")


@pytest.mark.parametrize("raw", ["+5", "5_0", " 5", "5 ", "inf", "nan", "0x10", ".5", "5."])
def test_query_numbers_are_json_numbers(raw: str) -> None:
    with pytest.raises(ApiError) as number:
        p.query_number(QueryParams({"requestedUsage": raw}), "requestedUsage")
    assert number.value.status == 400 and "must be a number" in number.value.message
    with pytest.raises(ApiError) as integer:
        p.query_int(QueryParams({"limit": raw}), "limit", 1, 100)
    assert integer.value.status == 400 and "must be an integer" in integer.value.message


@pytest.mark.parametrize(
    ("raw", "number"), [("5", 5.0), ("-0.5", -0.5), ("1e-05", 0.00001), ("2E3", 2000.0)]
)
def test_query_numbers_as_clients_write_them(raw: str, number: float) -> None:
    assert p.query_number(QueryParams({"n": raw}), "n") == number


def test_a_very_long_query_integer_is_out_of_range_not_a_crash() -> None:
    with pytest.raises(ApiError) as long:
        p.query_int(QueryParams({"limit": "9" * 5000}), "limit", 1, 100)
    assert "between 1 and 100" in long.value.message
    assert p.query_int(QueryParams({"limit": "007"}), "limit", 1, 100) == 7
