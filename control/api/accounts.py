"""/api/accounts: balances, top-ups, refunds, the access flag; /api/payments: providers'
signed callbacks."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from control.api.deps import Operator, Viewer, get_platform
from control.api.errors import AUTH, errors
from control.auth import Principal
from control.payments import PaymentRejected, credit_payment
from control.reports import income, orders, to_csv
from twin.ledger import LedgerError

router = APIRouter(tags=["accounts"], responses=AUTH)
CSV = {"content": {"application/json": {}, "text/csv": {"example": "period,paid_in_fen\n2026-03-01,50000\n"}},
       "description": "JSON rows, or CSV with format=csv"}


class TopUpRequest(BaseModel):
    """A top-up taken by an operator (cash at the property office, a POS terminal)."""

    payment_id: str = Field(min_length=1, max_length=120, examples=["office-2026-03-02-0017"],
                            description="unique per payment: a retry with the same id credits once")
    amount_fen: int = Field(gt=0, le=100_000_000, examples=[10000])


class RefundRequest(BaseModel):
    """Money paid back to a resident (退费), never more than the balance."""

    amount_fen: int = Field(gt=0, le=100_000_000, examples=[5000])
    reason: str = Field(min_length=1, max_length=200, examples=["moving out"])


class AccountOut(BaseModel):
    """An account: its rooms and meters, posted and available balance (fen), the
    low-balance level alarmed (0 to 3), whether its supply is cut off, and the access flag."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "A-B01-02-03", "name": "Room B01-02-03", "rooms": ["B01-02-03"],
        "meters": ["B01-02-03.em", "B01-02-03.wm"], "prepaid": True, "balance_fen": 8650, "available_fen": 8412,
        "low_balance_level": 0, "cut_off": False, "access": True}]})

    id: str
    name: str
    rooms: list[str]
    meters: list[str]
    prepaid: bool
    balance_fen: int = Field(description="posted balance")
    available_fen: int = Field(description="posted balance minus the charges accrued since")
    low_balance_level: int
    cut_off: bool
    access: bool = Field(description="false while in arrears (the access-control system reads it)")


class AccountPage(BaseModel):
    """One page of accounts in site order."""

    total: int
    offset: int
    limit: int
    items: list[AccountOut]


class AccessOut(BaseModel):
    """The access flag (门禁) of an account."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"account": "A-B01-02-03", "access": True}]})

    account: str
    access: bool


class TopUpOut(BaseModel):
    """A credited top-up: the ledger transfer, the balance after it, whether this answer
    replays an earlier one, and (meter billing) the command pushing the credit to the meter."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "account": "A-B01-02-03", "transfer": 1842, "balance_fen": 18650, "replay": False, "by": "alice",
        "credit_push": None}]})

    account: str
    transfer: int
    balance_fen: int
    replay: bool
    by: str
    credit_push: str | None = Field(description="command id of the push to the meter; null in platform billing")


class RefundOut(BaseModel):
    """A refund's ledger transfer and the balance after it."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"account": "A-B01-02-03", "transfer": 1843,
                                                               "balance_fen": 13650}]})

    account: str
    transfer: int
    balance_fen: int


class BillPaymentOut(BaseModel):
    """A bill payment's ledger transfer and what the account still owes."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"account": "A-B01-01-02", "transfer": 1901, "owed_fen": 0, "by": "alice"}]})

    account: str
    transfer: int
    owed_fen: int
    by: str


class ArrearsRow(BaseModel):
    """An account owing on bills."""

    account: str
    owed_fen: int


class CallbackOut(BaseModel):
    """What a provider's callback did."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"credited": True, "replay": False, "transfer": 1902, "credit_push": None}]})

    credited: bool
    replay: bool
    transfer: int
    credit_push: str | None


def _account(platform: Any, account_id: str, available: int | None = None) -> dict[str, Any]:
    spec = platform.accounts.get(account_id)
    if spec is None:
        raise HTTPException(404, f"no account {account_id!r}; ids look like A-B01-02-03")
    state = platform.policy.states.get(account_id)
    return {"id": spec.id, "name": spec.name, "rooms": spec.rooms, "meters": spec.meters, "prepaid": spec.prepaid,
            "balance_fen": platform.ledger.balance(account_id),
            "available_fen": platform.billing.available_fen(account_id) if available is None else available,
            "low_balance_level": state.level if state else 0, "cut_off": state.cut if state else False,
            "access": state.access if state else True}


@router.get("/api/accounts", dependencies=[Viewer], summary="Accounts with balances", response_model=AccountPage)
async def list_accounts(request: Request, building: str | None = Query(None, examples=["B01"]),
                        prepaid: bool | None = None, limit: int = Query(100, ge=1, le=10000),
                        offset: int = Query(0, ge=0)) -> dict[str, Any]:
    """Posted balance, available balance (posted minus accrued since), low-balance level,
    cut-off and access flag; filtered by the building of the account's rooms and by
    prepaid or postpaid. Example: `GET /api/accounts?building=B01&limit=20`."""
    platform = get_platform(request)
    where = {r.account: r.building for r in platform.scenario.site.rooms if r.account}
    ids = [a.id for a in platform.accounts.values()
           if (building is None or where.get(a.id) == building) and (prepaid is None or a.prepaid == prepaid)]
    async with platform.lock:
        page = ids[offset:offset + limit]
        # one pass over the accrued charges for the page, not one per account
        available = platform.billing.available_many(list(page)).tolist() if page else []
        items = [_account(platform, a, int(fen)) for a, fen in zip(page, available, strict=True)]
    return {"total": len(ids), "offset": offset, "limit": limit, "items": items}


@router.get("/api/accounts/{account_id}", dependencies=[Viewer], summary="One account", response_model=AccountOut,
            responses=errors(404))
async def get_account(request: Request, account_id: str) -> dict[str, Any]:
    """Example: `GET /api/accounts/A-B01-02-03`."""
    platform = get_platform(request)
    async with platform.lock:
        return _account(platform, account_id)


@router.get("/api/accounts/{account_id}/access", dependencies=[Viewer], summary="The access flag (门禁)",
            response_model=AccessOut, responses=errors(404))
async def get_access(request: Request, account_id: str) -> dict[str, Any]:
    """For the access-control system: false while the account is in arrears."""
    platform = get_platform(request)
    async with platform.lock:
        record = _account(platform, account_id)
    return {"account": account_id, "access": record["access"]}


@router.post("/api/accounts/{account_id}/topups", status_code=201, summary="Top up an account (operator)",
             response_model=TopUpOut, responses=errors(400, 404, 409))
async def top_up(request: Request, account_id: str, body: TopUpRequest, who: Principal = Operator) -> dict[str, Any]:
    """Idempotent on `payment_id`: a retry returns the first result; the same id with
    another amount or account is refused (409)."""
    platform = get_platform(request)
    if account_id not in platform.accounts:
        raise HTTPException(404, f"no account {account_id!r}; ids look like A-B01-02-03")
    try:  # group commit: acknowledged after the transaction holding it; never waits for the world
        if platform.topups is not None:
            result = await platform.topups.submit(body.payment_id, account_id, body.amount_fen)
        else:
            result = await asyncio.to_thread(platform.ledger.top_up, body.payment_id, account_id, body.amount_fen,
                                             at=platform.now())
    except LedgerError as err:
        raise HTTPException(409, str(err)) from None
    push = await _push_credit(platform, account_id, body.amount_fen, result.replay, who.name)
    return {"account": account_id, "transfer": result.transfer, "balance_fen": result.balance_fen,
            "replay": result.replay, "by": who.name, "credit_push": push}


async def _push_credit(platform: Any, account_id: str, fen: int, replay: bool, by: str) -> str | None:
    """Meter billing: a new top-up is pushed to the account's meter; returns the command id
    (follow it at /api/commands/{id}), None in platform billing or on a replay."""
    if replay or platform.meter_billing is None:
        return None
    async with platform.lock:
        command = platform.push_credit(account_id, fen, by=by)
    return None if command is None else str(command.id)


@router.post("/api/accounts/{account_id}/refunds", status_code=201, summary="Refund from an account (operator)",
             response_model=RefundOut, responses=errors(400, 404, 409))
async def refund(request: Request, account_id: str, body: RefundRequest, who: Principal = Operator) -> dict[str, Any]:
    """Never more than the posted balance (409 otherwise)."""
    platform = get_platform(request)
    async with platform.lock:
        _account(platform, account_id)
        try:
            transfer = platform.ledger.refund(account_id, body.amount_fen, at=platform.now(),
                                              ref=f"{who.name}: {body.reason}")
        except LedgerError as err:
            raise HTTPException(409, str(err)) from None
        return {"account": account_id, "transfer": transfer, "balance_fen": platform.ledger.balance(account_id)}


@router.get("/api/arrears", dependencies=[Viewer], summary="Accounts owing on bills, most owed first",
            response_model=list[ArrearsRow])
async def arrears(request: Request) -> list[dict[str, Any]]:
    """Postpaid bills and billed fees not yet paid. Example: `GET /api/arrears`."""
    platform = get_platform(request)
    rows = await asyncio.to_thread(platform.ledger.arrears)
    return [{"account": account, "owed_fen": owed} for account, owed in rows]


@router.post("/api/accounts/{account_id}/bill-payments", status_code=201,
             summary="Pay an account's bills (operator)", response_model=BillPaymentOut,
             responses=errors(400, 404, 409))
async def pay_bill(request: Request, account_id: str, body: TopUpRequest, who: Principal = Operator) -> dict[str, Any]:
    """A payment against the account's bills (postpaid usage, billed fees); idempotent on
    `payment_id` like a top-up. Example body: `{"payment_id": "bank-7781", "amount_fen": 42150}`."""
    platform = get_platform(request)
    _account(platform, account_id)
    try:
        transfer = await asyncio.to_thread(platform.ledger.pay_bill, body.payment_id, account_id, body.amount_fen,
                                           at=platform.now())
    except LedgerError as err:
        raise HTTPException(409, str(err)) from None
    owed = dict(await asyncio.to_thread(platform.ledger.arrears)).get(account_id, 0)
    return {"account": account_id, "transfer": transfer, "owed_fen": owed, "by": who.name}


@router.post("/api/payments/{provider}", summary="A payment provider's signed callback", response_model=CallbackOut,
             responses=errors(400))
async def payment_callback(request: Request, provider: str) -> dict[str, Any]:
    """The raw body signed with HMAC-SHA256 under the provider's secret (see
    control/payments.py); a bad signature, a stale timestamp or a malformed body credits
    nothing (400); a replay returns the first result."""
    platform = get_platform(request)
    body = await request.body()
    headers = {**dict(request.headers), "x-metertwin-provider": provider}
    async with platform.lock:
        try:
            payment, result = credit_payment(platform.ledger, platform.payment_secrets, headers, body,
                                             platform.wall_now(), set(platform.accounts))
        except PaymentRejected as err:
            raise HTTPException(400, f"payment not credited: {err}") from None
        push = None
        if not result.replay and platform.meter_billing is not None:
            command = platform.push_credit(payment.account, payment.amount_fen, by=f"payment:{provider}")
            push = None if command is None else command.id
    return {"credited": not result.replay, "replay": result.replay, "transfer": result.transfer, "credit_push": push}


@router.get("/api/reports/income", dependencies=[Viewer], summary="Income by day, month or year",
            response_model=list[dict[str, Any]], responses={200: CSV})
async def income_report(request: Request, period: str = Query("day", pattern="^(day|month|year)$"),
                        format: str = Query("json", pattern="^(json|csv)$")) -> Any:
    """Paid in, refunded, and revenue posted by utility and fee item, per site-local period.
    Example: `GET /api/reports/income?period=month&format=csv`."""
    platform = get_platform(request)
    rows = income(platform.ledger, platform.scenario.site.timezone, period)
    return PlainTextResponse(to_csv(rows), media_type="text/csv") if format == "csv" else rows


@router.get("/api/reports/orders", dependencies=[Viewer], summary="Orders: top-ups, refunds, fees, bills",
            response_model=list[dict[str, Any]], responses={200: CSV})
async def orders_report(request: Request, account: str | None = None, limit: int = Query(1000, ge=1, le=100000),
                        format: str = Query("json", pattern="^(json|csv)$")) -> Any:
    """Newest first. Example: `GET /api/reports/orders?account=A-B01-02-03&format=csv`."""
    platform = get_platform(request)
    rows = orders(platform.ledger, platform.scenario.site.timezone, account, limit)
    return PlainTextResponse(to_csv(rows), media_type="text/csv") if format == "csv" else rows
