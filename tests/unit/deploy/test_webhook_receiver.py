"""The demo receiver's signature check (deploy/webhook_receiver.py) agrees with the standardwebhooks package."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from standardwebhooks.webhooks import Webhook

from deploy.webhook_receiver import signature_valid

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = b'{"type":"campaign.touch","data":{"touch_id":"msg_1"}}'


def _headers(moment: datetime, body: bytes = BODY) -> dict[str, str]:
    signature = Webhook(SECRET).sign("msg_1", moment, body.decode())
    return {"webhook-id": "msg_1", "webhook-timestamp": str(int(moment.timestamp())), "webhook-signature": signature}


def test_accepts_what_standardwebhooks_signs_and_refuses_a_changed_body_or_an_old_timestamp():
    now = datetime.now(UTC)
    assert signature_valid(SECRET, _headers(now), BODY)
    assert not signature_valid(SECRET, _headers(now), BODY + b" ")
    assert not signature_valid(SECRET, _headers(now - timedelta(minutes=10)), BODY)
    assert not signature_valid("whsec_" + "A" * 32, _headers(now), BODY)
