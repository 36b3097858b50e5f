import base64
import json
import random
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.campaigns.domain.webhooks import (
    DEFAULT_SCHEDULE,
    JITTER,
    classify,
    headers,
    new_secret,
    next_attempt_delay,
    parse_retry_after,
    sign,
    url_allowed,
)

touch_data = st.fixed_dictionaries(
    {
        "touch_id": st.uuids().map(str),
        "person_key": st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=64),
        "variant": st.sampled_from(["a", "b", "满减券"]),
        "coupon_code": st.none() | st.text(alphabet="ABCDEFGHJKMNPQRSTUVWXYZ23456789", min_size=16, max_size=16),
        "message": st.none() | st.text(max_size=200),
    }
)


def test_a_new_secret_is_whsec_and_at_least_24_random_bytes():
    secrets = {new_secret() for _ in range(200)}

    assert len(secrets) == 200
    for secret in secrets:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) >= 24


@settings(max_examples=100)
@given(touch_data)
def test_the_standardwebhooks_package_verifies_every_signed_touch(data):
    secret = new_secret()
    body = json.dumps({"type": "campaign.touch", "timestamp": "2026-06-01T10:00:00Z", "data": data}, ensure_ascii=False)
    sent = headers(secret, data["touch_id"], int(time.time()), body.encode())

    assert Webhook(secret).verify(body.encode(), sent) == json.loads(body)


def test_a_signature_does_not_verify_with_another_secret_id_or_body():
    secret = new_secret()
    body = b'{"type":"campaign.touch","data":{"person_key":"\xe5\xbc\xa0\xe4\xbc\x9f"}}'
    sent = headers(secret, "touch-1", int(time.time()), body)

    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, sent)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, {**sent, "webhook-id": "touch-2"})
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"campaign", b"campaigns"), sent)


def test_the_signature_is_the_hmac_of_id_timestamp_and_body_in_the_spec_order():
    # The Standard Webhooks reference example: this secret, id, timestamp and body give this signature.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'

    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_every_attempt_carries_the_touch_id_its_own_timestamp_and_a_fresh_signature():
    secret = new_secret()
    first = headers(secret, "touch-1", 1_800_000_000, b"{}")
    retry = headers(secret, "touch-1", 1_800_000_300, b"{}")

    assert first["webhook-id"] == retry["webhook-id"] == "touch-1"
    assert (first["webhook-timestamp"], retry["webhook-timestamp"]) == ("1800000000", "1800000300")
    assert first["webhook-signature"] != retry["webhook-signature"]


@pytest.mark.parametrize(
    ("status_code", "outcome"),
    [(200, "delivered"), (201, "delivered"), (204, "delivered"), (299, "delivered"), (410, "disable")]
    + [(code, "retry") for code in (100, 199, 300, 301, 302, 304, 400, 401, 403, 404, 408, 409, 429, 500, 502, 503, 504)],
)
def test_only_2xx_delivers_410_disables_and_everything_else_is_retried(status_code, outcome):
    assert classify(status_code) == outcome


class Extreme:
    def __init__(self, pick):
        self.pick = pick

    def uniform(self, low, high):
        return low if self.pick == "low" else high


@pytest.mark.parametrize("attempt", range(1, len(DEFAULT_SCHEDULE) + 1))
def test_each_retry_waits_its_scheduled_delay_within_the_jitter(attempt):
    scheduled = DEFAULT_SCHEDULE[attempt - 1]
    seen = [next_attempt_delay(attempt, DEFAULT_SCHEDULE, None, random.Random(seed)) for seed in range(50)]

    assert all(scheduled * (1 - JITTER) <= delay <= scheduled * (1 + JITTER) for delay in seen)
    assert len(set(seen)) > 1
    assert next_attempt_delay(attempt, DEFAULT_SCHEDULE, None, Extreme("low")) == scheduled * (1 - JITTER)
    assert next_attempt_delay(attempt, DEFAULT_SCHEDULE, None, Extreme("high")) == scheduled * (1 + JITTER)


def test_retries_end_after_the_last_scheduled_delay():
    assert next_attempt_delay(len(DEFAULT_SCHEDULE) + 1, DEFAULT_SCHEDULE, None, random.Random(1)) is None
    assert next_attempt_delay(0, DEFAULT_SCHEDULE, None, random.Random(1)) is None


def test_retry_after_longer_than_the_schedule_step_is_honoured_up_to_the_longest_step():
    schedule = (5.0, 300.0, 1800.0)

    assert next_attempt_delay(1, schedule, 120.0, Extreme("high")) == 120.0
    assert next_attempt_delay(1, schedule, 99_999.0, Extreme("high")) == 1800.0
    assert next_attempt_delay(2, schedule, 10.0, Extreme("low")) == 300.0 * (1 - JITTER)


def test_retry_after_reads_seconds_or_an_http_date():
    now = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)

    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after("Mon, 01 Jun 2026 10:02:00 GMT", now) == 120.0
    assert parse_retry_after("Mon, 01 Jun 2026 09:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-5", now) is None
    assert parse_retry_after(None, now) is None


PUBLIC = ["93.184.216.34"]


@pytest.mark.parametrize(
    ("url", "resolved", "local_mode", "reason"),
    [
        ("http://127.0.0.1:9000/hook", [], True, None),
        ("http://localhost:8080/hook", ["127.0.0.1"], True, None),
        ("https://hooks.example.com/shoploop", PUBLIC, False, None),
        ("https://[2606:2800:220:1:248:1893:25c8:1946]/hook", [], False, None),
        ("ftp://hooks.example.com/x", PUBLIC, True, "http(s)"),
        ("hooks.example.com/x", PUBLIC, True, "http(s)"),
        ("https:///path-only", [], True, "no host"),
        ("https://user:pass@hooks.example.com/x", PUBLIC, True, "credentials"),
        ("https://hooks.example.com:99999/x", PUBLIC, True, "not a valid URL"),
        ("https://hooks.example.com/" + "x" * 2048, PUBLIC, True, "longer than"),
        ("http://hooks.example.com/x", PUBLIC, False, "https"),
        ("https://nowhere.example/x", [], False, "did not resolve"),
        ("https://hooks.example.com/x", ["127.0.0.1"], False, "loopback"),
        ("https://hooks.example.com/x", ["127.8.9.10"], False, "loopback"),
        ("https://hooks.example.com/x", ["::1"], False, "loopback"),
        ("https://hooks.example.com/x", ["10.0.0.1"], False, "private"),
        ("https://hooks.example.com/x", ["10.255.255.255"], False, "private"),
        ("https://hooks.example.com/x", ["172.16.0.1"], False, "private"),
        ("https://hooks.example.com/x", ["172.31.255.254"], False, "private"),
        ("https://hooks.example.com/x", ["192.168.1.20"], False, "private"),
        ("https://hooks.example.com/x", ["169.254.169.254"], False, "link-local"),
        ("https://hooks.example.com/x", ["fe80::1"], False, "link-local"),
        ("https://hooks.example.com/x", ["fe80::1%eth0"], False, "link-local"),
        ("https://hooks.example.com/x", ["100.64.0.1"], False, "CGNAT"),
        ("https://hooks.example.com/x", ["100.127.255.254"], False, "CGNAT"),
        ("https://hooks.example.com/x", ["fc00::1"], False, "unique-local"),
        ("https://hooks.example.com/x", ["fd12:3456:789a::1"], False, "unique-local"),
        ("https://hooks.example.com/x", ["::ffff:10.0.0.1"], False, "private"),
        ("https://hooks.example.com/x", ["::ffff:127.0.0.1"], False, "loopback"),
        ("https://hooks.example.com/x", ["::ffff:169.254.169.254"], False, "link-local"),
        ("https://hooks.example.com/x", ["0.0.0.0"], False, "unspecified"),
        ("https://hooks.example.com/x", ["224.0.0.1"], False, "multicast"),
        ("https://hooks.example.com/x", [*PUBLIC, "10.1.2.3"], False, "private"),
        ("https://10.0.0.1/x", [], False, "private"),
        ("https://[::1]/x", [], False, "loopback"),
        ("https://hooks.example.com/x", ["not-an-ip"], False, "not an IP address"),
    ],
)
def test_webhook_url_rules(url, resolved, local_mode, reason):
    answer = url_allowed(url, resolved, local_mode)

    if reason is None:
        assert answer is None
    else:
        assert answer is not None and reason in answer


@pytest.mark.parametrize(
    ("low", "high"),
    [("172.15.255.255", "172.32.0.0"), ("100.63.255.255", "100.128.0.0"), ("169.253.255.255", "169.255.0.0")],
)
def test_addresses_just_outside_the_forbidden_ranges_are_allowed(low, high):
    assert url_allowed("https://hooks.example.com/x", [low], False) is None
    assert url_allowed("https://hooks.example.com/x", [high], False) is None
