from __future__ import annotations

import pytest

from lorafleet.errors import InvalidNameError
from lorafleet.refs import AdapterRef, parse_ref, validate_name


@pytest.mark.parametrize("ref, expected", [
    ("support-intents", AdapterRef("support-intents", None)),
    ("support-intents@v3", AdapterRef("support-intents", "v3")),
    ("clauses@prod", AdapterRef("clauses", "prod")),
    ("a.b_c-1@canary", AdapterRef("a.b_c-1", "canary")),
])
def test_parse_valid_refs(ref: str, expected: AdapterRef) -> None:
    parsed = parse_ref(ref)
    assert parsed == expected
    assert str(parsed) == ref


@pytest.mark.parametrize("ref", [
    "", "../etc", "a/b", "a\\b", "..", "a..b", "A", "-lead", "name@", "name@v0", "name@V3", "name@a@b",
    "name@../x", "x" * 65, "name@" + "a" * 40, "name@1abc", "na me", ".hidden",
])
def test_parse_rejects_bad_refs(ref: str) -> None:
    with pytest.raises(InvalidNameError):
        parse_ref(ref)


def test_versioned_ref_has_no_alias() -> None:
    assert parse_ref("x@v2").is_version
    assert parse_ref("x").alias == "latest"
    assert parse_ref("x@prod").alias == "prod"


def test_validate_name_limits() -> None:
    assert validate_name("a" * 64)
    with pytest.raises(InvalidNameError):
        validate_name("a" * 65)


@pytest.mark.parametrize("ref", ["alpha\n", "alpha@v3\n", "alpha@prod\n", "alpha\n@v3"])
def test_repro_name_re_trailing_newline(ref: str) -> None:
    # `$` matches before a trailing newline: `alpha\n` used to pass and become part of a path
    with pytest.raises(InvalidNameError):
        parse_ref(ref)


def test_repro_validate_name_trailing_newline() -> None:
    with pytest.raises(InvalidNameError):
        validate_name("alpha\n")
