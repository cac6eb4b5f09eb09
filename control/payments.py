"""Payment-provider callbacks: verify, then credit exactly once.

A provider (WeChat Pay, Alipay, a bank) POSTs a JSON body announcing a payment. It signs
the raw body with HMAC-SHA256 under the secret it shares with us, and sends:

    X-MeterTwin-Provider: wxpay
    X-MeterTwin-Timestamp: 1767225600          (UTC epoch seconds)
    X-MeterTwin-Signature: hex(HMAC-SHA256(secret, timestamp + "." + raw body))

The body holds `transaction_id` (the provider's id, used as the payment id, prefixed with
the provider so two providers never collide), `account` and `amount_fen`. A bad
signature, a timestamp more than 5 minutes from our clock, or a malformed body credits
nothing and is logged; a replay of a transaction already credited returns the first
result (the ledger's top-up is idempotent on the payment id).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twin.ledger import Ledger, LedgerError, TopUp

log = logging.getLogger("metertwin.payments")

#: How far a callback's timestamp may be from our clock, seconds.
TOLERANCE_S = 300


class PaymentRejected(ValueError):
    """A callback that credits nothing; the message says why (and is logged)."""


@dataclass(frozen=True, slots=True)
class Payment:
    """A verified payment. Example: ``Payment("wxpay:4200001234", "A-B01-01-01", 10000)``."""

    payment_id: str  #: provider:transaction id
    account: str  #: account credited
    amount_fen: int  #: amount in fen, > 0


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature a provider sends for `body` at `timestamp`."""
    return hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secrets: dict[str, bytes], headers: dict[str, str], body: bytes, now: float) -> Payment:
    """Check a callback and read its payment; PaymentRejected says what is wrong."""
    lowered = {k.lower(): v for k, v in headers.items()}
    provider = lowered.get("x-metertwin-provider", "")
    secret = secrets.get(provider)
    if secret is None:
        raise PaymentRejected(f"unknown payment provider {provider!r}")
    try:
        timestamp = int(lowered.get("x-metertwin-timestamp", ""))
    except ValueError:
        raise PaymentRejected("missing or malformed X-MeterTwin-Timestamp") from None
    if abs(now - timestamp) > TOLERANCE_S:
        raise PaymentRejected(f"timestamp {timestamp} is {now - timestamp:+.0f}s from our clock (limit 300 s)")
    expected = sign(secret, timestamp, body)
    if not hmac.compare_digest(expected, lowered.get("x-metertwin-signature", "")):
        raise PaymentRejected("bad signature")
    try:
        doc: Any = json.loads(body)
        transaction, account, amount = doc["transaction_id"], doc["account"], doc["amount_fen"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise PaymentRejected("body must be JSON with transaction_id, account and amount_fen") from None
    if not isinstance(transaction, str) or not transaction or not isinstance(account, str) or not account:
        raise PaymentRejected("transaction_id and account must be non-empty strings")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise PaymentRejected(f"amount_fen must be a whole number of fen > 0, not {amount!r}")
    return Payment(f"{provider}:{transaction}", account, amount)


def credit(ledger: Ledger, secrets: dict[str, bytes], headers: dict[str, str], body: bytes, now: float,
           accounts: set[str]) -> TopUp:
    """Verify a callback and credit it once; rejections are logged and raised."""
    return credit_payment(ledger, secrets, headers, body, now, accounts)[1]


def credit_payment(ledger: Ledger, secrets: dict[str, bytes], headers: dict[str, str], body: bytes, now: float,
                   accounts: set[str]) -> tuple[Payment, TopUp]:
    """As `credit`, returning the verified payment with the ledger's result."""
    try:
        payment = verify(secrets, headers, body, now)
        if payment.account not in accounts:
            raise PaymentRejected(f"no account {payment.account!r}")
        return payment, ledger.top_up(payment.payment_id, payment.account, payment.amount_fen, at=now)
    except (PaymentRejected, LedgerError) as err:
        log.warning("payment callback rejected: %s", err)
        raise PaymentRejected(str(err)) from None


def load_secrets(path: Path) -> dict[str, bytes]:
    """Provider secrets from DATA/payment_providers.json (`{"wxpay": "secret", ...}`), if any."""
    if not path.exists():
        return {}
    return {name: str(secret).encode() for name, secret in json.loads(path.read_text()).items()}
