"""SPEC.md "Auth": API keys with scopes, admin implies all; Bearer or Basic (Segment write key)."""

from __future__ import annotations

import base64

import pytest
from starlette.requests import Request

from libs.common.auth import ApiKeys, key_from_authorization, key_from_headers, parse_api_keys
from libs.common.http import ApiError

KEYS = "k-admin:admin;k-ingest:ingest;k-reader:read,campaigns"


def request_with(authorization: str | None) -> Request:
    headers = [] if authorization is None else [(b"authorization", authorization.encode("latin-1"))]
    return Request({"type": "http", "method": "POST", "path": "/v1/events", "headers": headers})


def basic(credentials: bytes) -> str:
    return "Basic " + base64.b64encode(credentials).decode()


# --- parse_api_keys -------------------------------------------------------------------------------


def test_parses_several_keys_with_their_scopes():
    assert parse_api_keys(KEYS) == {
        "k-admin": frozenset({"admin"}),
        "k-ingest": frozenset({"ingest"}),
        "k-reader": frozenset({"read", "campaigns"}),
    }


def test_whitespace_and_empty_entries_are_ignored():
    assert parse_api_keys("  k1 : read , ingest ;; k2:admin ; ") == {
        "k1": frozenset({"read", "ingest"}),
        "k2": frozenset({"admin"}),
    }


def test_an_empty_setting_gives_no_keys():
    assert parse_api_keys("") == {}


def test_unknown_scope_is_an_error_naming_the_entry_by_position_only():
    with pytest.raises(ValueError) as error:
        parse_api_keys("k0:admin;s3cret-k1:read,writ")
    assert str(error.value) == ("SHOPLOOP_API_KEYS entry 2: 1 unknown scope(s); "
                                "scopes are admin, campaigns, ingest, read")


def test_positions_count_only_non_empty_entries():
    with pytest.raises(ValueError, match="entry 2:"):
        parse_api_keys(";k0:admin;; s3cret:zeta ;")


@pytest.mark.parametrize("entry", ["s3cret", "s3cret:", ":read", "s3cret: , "])
def test_malformed_entry_is_an_error_naming_its_position(entry):
    with pytest.raises(ValueError) as error:
        parse_api_keys(f"k0:read;{entry}")
    assert str(error.value) == "SHOPLOOP_API_KEYS entry 2 must look like key:scope[,scope]"


@pytest.mark.parametrize("spec", ["s3cret:writ", "s3cret:read;s3cret:ingest", "k0:read;s3cret", "s3cret:s3cret"])
def test_no_error_about_the_setting_echoes_a_key(spec):
    with pytest.raises(ValueError) as error:
        parse_api_keys(spec)
    assert "s3cret" not in str(error.value)


# --- ApiKeys.authorize ----------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "", "nope", "k-ingest ", "K-INGEST", "k-ingest-2", "k-inges"])
def test_unknown_or_missing_key_is_401(key):
    with pytest.raises(ApiError) as error:
        ApiKeys(KEYS).authorize(key, "ingest")
    assert error.value.status == 401
    assert error.value.code == "unauthorized"
    assert error.value.headers == {"WWW-Authenticate": 'Bearer realm="shoploop"'}


def test_key_holding_the_scope_is_returned():
    assert ApiKeys(KEYS).authorize("k-ingest", "ingest") == "k-ingest"
    assert ApiKeys(KEYS).authorize("k-reader", "campaigns") == "k-reader"


def test_key_without_the_scope_is_403_naming_the_scope():
    with pytest.raises(ApiError) as error:
        ApiKeys(KEYS).authorize("k-ingest", "read")
    assert error.value.status == 403
    assert error.value.code == "forbidden"
    assert error.value.detail == "this API key lacks the 'read' scope"


def test_a_key_holding_any_of_the_accepted_scopes_passes():
    keys = ApiKeys("k-shop:ingest;k-ops:campaigns;k-reader:read")
    assert keys.authorize("k-shop", "ingest", "campaigns") == "k-shop"
    assert keys.authorize("k-ops", "ingest", "campaigns") == "k-ops"
    with pytest.raises(ApiError) as error:
        keys.authorize("k-reader", "ingest", "campaigns")
    assert error.value.detail == "this API key lacks the 'ingest' or 'campaigns' scope"


def test_an_ingest_key_cannot_administer():
    with pytest.raises(ApiError) as error:
        ApiKeys(KEYS).authorize("k-reader", "admin")
    assert error.value.status == 403


@pytest.mark.parametrize("scope", ["ingest", "read", "campaigns", "admin"])
def test_admin_implies_every_scope(scope):
    assert ApiKeys(KEYS).authorize("k-admin", scope) == "k-admin"


def test_a_bad_setting_fails_when_the_keys_are_built():
    with pytest.raises(ValueError, match="unknown scope"):
        ApiKeys("k1:superuser")


# --- key_from_headers -----------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["Bearer k-ingest", "bearer k-ingest", "BEARER  k-ingest  "])
def test_bearer_token_is_the_key(header):
    assert key_from_headers(request_with(header)) == "k-ingest"


@pytest.mark.parametrize("credentials", [b"write-key:", b"write-key:password", b"write-key", b"write-key:a:b"])
def test_basic_user_name_is_the_key(credentials):
    assert key_from_headers(request_with(basic(credentials))) == "write-key"


def test_basic_scheme_is_case_insensitive():
    assert key_from_headers(request_with("basic " + base64.b64encode(b"wk:").decode())) == "wk"


@pytest.mark.parametrize(
    "header",
    [
        "Basic !!!not-base64!!!",
        "Basic d2s6c",  # bad padding
        basic(b"\xff\xfe:"),  # not UTF-8
        basic(b":password"),  # no user name
        "Basic ",
        "Bearer ",
        "Bearer",
        "Token k-ingest",
        "k-ingest",
        "",
    ],
)
def test_malformed_or_unsupported_authorization_gives_no_key(header):
    assert key_from_headers(request_with(header)) is None


def test_no_authorization_header_gives_no_key():
    assert key_from_headers(request_with(None)) is None


def test_keys_from_headers_authorize_end_to_end():
    keys = ApiKeys(KEYS)
    assert keys.authorize(key_from_headers(request_with(basic(b"k-ingest:"))), "ingest") == "k-ingest"
    with pytest.raises(ApiError) as error:
        keys.authorize(key_from_headers(request_with("Basic %%%")), "ingest")
    assert error.value.status == 401


def test_a_key_listed_twice_is_refused():
    with pytest.raises(ValueError, match="entry 2 repeats the key of an earlier entry"):
        parse_api_keys("k1:read;k1:ingest")


def test_basic_credentials_count_only_where_a_route_allows_them():
    header = basic(b"k-ingest:")
    assert key_from_authorization(header, basic=True) == "k-ingest"
    assert key_from_authorization(header, basic=False) is None
    assert key_from_authorization("Bearer k-ingest", basic=False) == "k-ingest"
