"""Payment callbacks: signed, fresh and well-formed callbacks credit exactly once."""

from __future__ import annotations

import json

import pytest

from control.payments import PaymentRejected, credit, sign
from twin.ledger import Ledger

SECRETS = {"wxpay": b"s3cret-wx", "alipay": b"s3cret-ali"}
NOW = 1_767_225_600.0


def callback(provider: str, body: dict, ts: float = NOW, secret: bytes | None = None) -> tuple[dict, bytes]:
    raw = json.dumps(body).encode()
    headers = {"X-MeterTwin-Provider": provider, "X-MeterTwin-Timestamp": str(int(ts)),
               "X-MeterTwin-Signature": sign(secret or SECRETS[provider], int(ts), raw)}
    return headers, raw


@pytest.fixture
def ledger(tmp_path):
    book = Ledger(tmp_path / "ledger.sqlite")
    yield book
    book.close()


def test_a_signed_callback_credits_once_and_a_replay_returns_the_first(ledger):
    """A good callback credits the account; the same callback again credits nothing and
    returns the first result; the same transaction id at another provider is another payment."""
    headers, body = callback("wxpay", {"transaction_id": "420001", "account": "A-1", "amount_fen": 5000})
    first = credit(ledger, SECRETS, headers, body, NOW, {"A-1"})
    again = credit(ledger, SECRETS, headers, body, NOW + 10, {"A-1"})
    assert not first.replay and again.replay and ledger.balance("A-1") == 5000
    headers, body = callback("alipay", {"transaction_id": "420001", "account": "A-1", "amount_fen": 5000})
    credit(ledger, SECRETS, headers, body, NOW, {"A-1"})
    assert ledger.balance("A-1") == 10000


@pytest.mark.parametrize(("change", "message"), [
    ("signature", "bad signature"), ("stale", "from our clock"), ("provider", "unknown payment provider"),
    ("body", "must be JSON"), ("amount", "whole number of fen"), ("account", "no account"),
    ("reuse", "was recorded as"),
])
def test_bad_callbacks_credit_nothing(ledger, change, message):
    """A bad signature, a stale timestamp, an unknown provider, a malformed body, a bad
    amount, an unknown account or a reused id with another amount credit nothing."""
    body = {"transaction_id": "t-9", "account": "A-1", "amount_fen": 700}
    if change == "reuse":
        headers, raw = callback("wxpay", body)
        credit(ledger, SECRETS, headers, raw, NOW, {"A-1"})
        body["amount_fen"] = 900
    headers, raw = callback("wxpay", body, ts=NOW - 400 if change == "stale" else NOW,
                            secret=b"wrong" if change == "signature" else None)
    if change == "provider":
        headers["X-MeterTwin-Provider"] = "paypal"
    if change == "body":
        raw = b"{not json"
        headers["X-MeterTwin-Signature"] = sign(SECRETS["wxpay"], int(NOW), raw)
    if change == "amount":
        raw = json.dumps({**body, "amount_fen": -5}).encode()
        headers["X-MeterTwin-Signature"] = sign(SECRETS["wxpay"], int(NOW), raw)
    if change == "account":
        raw = json.dumps({**body, "account": "A-404"}).encode()
        headers["X-MeterTwin-Signature"] = sign(SECRETS["wxpay"], int(NOW), raw)
    before = ledger.balance("A-1")
    with pytest.raises(PaymentRejected, match=message):
        credit(ledger, SECRETS, headers, raw, NOW, {"A-1"})
    assert ledger.balance("A-1") == before
    ledger.check()
