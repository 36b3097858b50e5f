"""A local webhook receiver for trying campaigns out: prints each touch it receives and whether its Standard
Webhooks signature is valid for the secret given (stdlib only, so it runs anywhere Python does).

    python -m deploy.webhook_receiver --port 9000 --secret whsec_...
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def signature_valid(secret: str, headers: dict[str, str], body: bytes, tolerance_seconds: int = 300) -> bool:
    """Standard Webhooks v1: HMAC-SHA256 over "{id}.{timestamp}.{body}" keyed by the base64 part of the secret."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, timestamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "0")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance_seconds:
        return False
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest())
    offered = [part.split(",", 1)[1] for part in headers.get("webhook-signature", "").split() if part.startswith("v1,")]
    return any(hmac.compare_digest(expected.decode(), candidate) for candidate in offered)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", required=True, help="the campaign's webhook_secret (shown once at creation)")
    args = parser.parse_args()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            headers = {name.lower(): value for name, value in self.headers.items()}
            valid = signature_valid(args.secret, headers, body)
            touch = json.loads(body)["data"]
            print(json.dumps({"webhook-id": headers.get("webhook-id"), "signature_valid": valid,
                              "person_key": touch["person_key"], "variant": touch["variant"],
                              "coupon_code": touch.get("coupon_code")}, ensure_ascii=False), flush=True)
            self.send_response(204 if valid else 400)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    print(f"receiving webhooks on http://127.0.0.1:{args.port}/hook", flush=True)
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
