from datetime import UTC, datetime

import orjson

from libs.common.privacy import ErasureRequest


def test_an_erasure_request_has_exactly_the_documented_shape_and_round_trips():
    request = ErasureRequest.new("anon:a-9", datetime(2026, 5, 1, 2, 3, 4, tzinfo=UTC))

    body = orjson.loads(request.to_json())

    assert body == {"person_key": "anon:a-9", "requested_at": "2026-05-01T02:03:04.000000Z",
                    "request_id": request.request_id}
    assert ErasureRequest.model_validate_json(request.to_json()) == request


def test_each_request_has_its_own_id():
    at = datetime(2026, 5, 1, tzinfo=UTC)

    assert ErasureRequest.new("u-1", at).request_id != ErasureRequest.new("u-1", at).request_id
