"""The ledger: worked examples, refusals, rounding with a carried remainder, and a
hypothesis state machine of the invariants over 10,000 random steps."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from twin.ledger import Ledger, LedgerError, round_half_up


@pytest.fixture
def ledger(tmp_path):
    book = Ledger(tmp_path / "ledger.sqlite")
    yield book
    book.close()


def test_top_up_deduct_and_a_replay(ledger):
    """100 yuan in, 12.34 yuan of electricity out: 8,766 fen; replaying the payment id
    returns the first result and credits nothing; the same id with another amount or
    account is refused."""
    first = ledger.top_up("pay-1", "A-1", 10000, at=1.0)
    ledger.deduct("A-1", 1234, "electric", at=2.0)
    assert ledger.balance("A-1") == 8766
    again = ledger.top_up("pay-1", "A-1", 10000, at=3.0)
    assert again.replay and again.transfer == first.transfer and ledger.balance("A-1") == 8766
    with pytest.raises(LedgerError, match="was recorded as 10000 fen to A-1"):
        ledger.top_up("pay-1", "A-1", 9999, at=4.0)
    with pytest.raises(LedgerError, match="refusing 10000 fen to A-2"):
        ledger.top_up("pay-1", "A-2", 10000, at=4.0)
    assert ledger.account_balance("revenue:electric") == 1234
    assert ledger.account_balance("clearing:payments") == -10000
    ledger.check()


def test_refunds_never_exceed_the_balance_and_reversals_restore(ledger):
    """A refund above the balance is refused; a reversal restores the balance, once."""
    ledger.top_up("p", "A-1", 500, at=1.0)
    with pytest.raises(LedgerError, match="exceeds the balance"):
        ledger.refund("A-1", 501, at=2.0)
    fee = ledger.charge_fee("A-1", "property", 300, at=3.0)
    assert ledger.balance("A-1") == 200
    reversal = ledger.reverse(fee, at=4.0, reason="charged twice")
    assert ledger.balance("A-1") == 500
    with pytest.raises(LedgerError, match="already reversed"):
        ledger.reverse(fee, at=5.0, reason="again")
    with pytest.raises(LedgerError, match="itself a reversal"):
        ledger.reverse(reversal, at=5.0, reason="undo the undo")
    ledger.refund("A-1", 500, at=6.0)
    assert ledger.balance("A-1") == 0
    with pytest.raises(LedgerError, match="whole number of fen > 0"):
        ledger.deduct("A-1", 0, "water", at=7.0)
    ledger.check()


def test_postings_round_half_up_and_carry_the_remainder(ledger):
    """Ten ticks of 0.45 fen post 5 fen in all (the exact 4.5 rounded half-up, not 0 and
    not 10): each posting rounds half-up what is due with the carried remainder; the
    total never drifts more than half a fen from the exact sum."""
    assert (round_half_up(0.5), round_half_up(1.49), round_half_up(-0.5), round_half_up(2.5)) == (1, 1, -1, 3)
    exact = 0.0
    for tick in range(10):
        ledger.post_charges({"A-1": 0.45}, "electric", at=float(tick))
        exact += 0.45
        posted = -ledger.balance("A-1")
        assert abs(posted - exact) <= 0.5 + 1e-9
    assert -ledger.balance("A-1") == 5
    ledger.post_charges({"A-2": 1234.5}, "water", at=11.0)
    assert ledger.balance("A-2") == -1235
    ledger.check()


class LedgerMachine(RuleBasedStateMachine):
    """Random top-ups, replays, deductions, refunds, fees, reversals and postings against
    a model of what each balance must be."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.ledger = Ledger(Path(self.dir.name) / "ledger.sqlite")
        self.balances: dict[str, int] = {}
        self.payments: dict[str, tuple[str, int]] = {}
        self.transfers: list[tuple[int, str, int]] = []  # (id, resident account, signed effect)
        self.reversed: set[int] = set()
        self.exact: dict[str, float] = {}
        self.clock = 0.0

    @initialize()
    def start(self) -> None:
        self.clock = 1.0

    accounts = st.sampled_from(["A-1", "A-2", "A-3", "A-4"])
    amounts = st.integers(1, 50_000)

    def _tick(self) -> float:
        self.clock += 1.0
        return self.clock

    @rule(account=accounts, amount=amounts, pid=st.integers(0, 200))
    def top_up(self, account: str, amount: int, pid: int) -> None:
        payment = f"pay-{pid}"
        if payment in self.payments:
            first_account, first_amount = self.payments[payment]
            if (first_account, first_amount) == (account, amount):
                assert self.ledger.top_up(payment, account, amount, at=self._tick()).replay
            else:
                with pytest.raises(LedgerError):
                    self.ledger.top_up(payment, account, amount, at=self._tick())
            return
        before = self.ledger.balance(account)
        result = self.ledger.top_up(payment, account, amount, at=self._tick())
        self.payments[payment] = (account, amount)
        self.balances[account] = self.balances.get(account, 0) + amount
        self.transfers.append((result.transfer, account, amount))
        assert result.balance_fen == before + amount and not result.replay

    @rule(pid=st.integers(0, 200))
    def replay(self, pid: int) -> None:
        payment = f"pay-{pid}"
        if payment in self.payments:
            account, amount = self.payments[payment]
            assert self.ledger.top_up(payment, account, amount, at=self._tick()).replay

    @rule(account=accounts, amount=amounts, utility=st.sampled_from(["electric", "water"]))
    def deduct(self, account: str, amount: int, utility: str) -> None:
        transfer = self.ledger.deduct(account, amount, utility, at=self._tick())
        self.balances[account] = self.balances.get(account, 0) - amount
        self.transfers.append((transfer, account, -amount))

    @rule(account=accounts, amount=amounts)
    def refund(self, account: str, amount: int) -> None:
        if amount > self.ledger.balance(account):  # the balance itself is checked by the invariant
            with pytest.raises(LedgerError):
                self.ledger.refund(account, amount, at=self._tick())
            return
        transfer = self.ledger.refund(account, amount, at=self._tick())
        self.balances[account] -= amount
        self.transfers.append((transfer, account, -amount))

    @rule(account=accounts, amount=amounts)
    def fee(self, account: str, amount: int) -> None:
        transfer = self.ledger.charge_fee(account, "property", amount, at=self._tick())
        self.balances[account] = self.balances.get(account, 0) - amount
        self.transfers.append((transfer, account, -amount))

    @rule(index=st.integers(0, 10_000))
    def reverse(self, index: int) -> None:
        if not self.transfers:
            return
        transfer, account, effect = self.transfers[index % len(self.transfers)]
        if transfer in self.reversed:
            with pytest.raises(LedgerError):
                self.ledger.reverse(transfer, at=self._tick(), reason="test")
            return
        self.ledger.reverse(transfer, at=self._tick(), reason="test")
        self.reversed.add(transfer)
        self.balances[account] -= effect

    @rule(charges=st.dictionaries(accounts, st.floats(0, 5000, allow_nan=False), max_size=4))
    def post(self, charges: dict[str, float]) -> None:
        self.ledger.post_charges(charges, "electric", at=self._tick())
        for account, fen in charges.items():
            self.exact[account] = self.exact.get(account, 0.0) + fen

    steps = 0

    @invariant()
    def balances_match_the_model_and_postings_do_not_drift(self) -> None:
        LedgerMachine.steps += 1
        for account in set(self.balances) | set(self.exact):
            posted = self.balances.get(account, 0) - self.ledger.balance(account)  # what postings took
            assert abs(posted - self.exact.get(account, 0.0)) <= 0.5 + 1e-6, account
        total = self.ledger.db.execute("SELECT COALESCE(SUM(amount), 0) FROM entries").fetchone()[0]
        assert total == 0

    def teardown(self) -> None:
        self.ledger.check()
        self.ledger.close()
        self.dir.cleanup()


def test_ledger_invariants_hold_over_random_operations():
    """After every one of at least 10,000 random operations (top-ups, replays, refused
    reuses, deductions, refunds, fees, reversals, postings), the entries sum to zero and
    every balance is what the model says; each run ends with `check()` (balances equal
    their entries, two entries per transfer, SQLite's integrity check)."""
    LedgerMachine.steps = 0
    run_state_machine_as_test(LedgerMachine, settings=settings(max_examples=100, stateful_step_count=250,
                                                               deadline=None))
    assert LedgerMachine.steps >= 10_000, LedgerMachine.steps
