"""Users, roles and API keys."""

from __future__ import annotations

import stat

import pytest

from control.auth import Auth, AuthError, Role
from control.store import Store


@pytest.fixture
def auth(tmp_path):
    return Auth(Store(tmp_path / "control.sqlite"))


def test_passwords_are_checked_and_never_stored(auth, tmp_path):
    """A user signs in with the right password only; the database holds no password."""
    auth.add_user("alice", Role.OPERATOR, "correct horse battery")
    assert auth.check_password("alice", "correct horse battery").role is Role.OPERATOR
    with pytest.raises(AuthError):
        auth.check_password("alice", "wrong password!")
    with pytest.raises(AuthError):
        auth.check_password("nobody", "correct horse battery")
    assert b"correct horse" not in (tmp_path / "control.sqlite").read_bytes()
    with pytest.raises(ValueError, match="exists"):
        auth.add_user("alice", Role.VIEWER, "another long one")
    with pytest.raises(ValueError, match="at least 10"):
        auth.add_user("bob", Role.VIEWER, "short")


def test_keys_carry_a_role_and_can_be_revoked(auth):
    """A key maps to its role until revoked; a tampered key is refused."""
    key = auth.create_key("scada", Role.VIEWER)
    principal = auth.check_key(key)
    assert principal.role is Role.VIEWER and principal.name.startswith("key:")
    with pytest.raises(AuthError):
        auth.check_key(key[:-1] + ("A" if key[-1] != "A" else "B"))
    auth.revoke_key(principal.name[4:])
    with pytest.raises(AuthError, match="revoked"):
        auth.check_key(key)
    assert Role.OPERATOR > Role.VIEWER and Role.parse("admin") is Role.ADMIN


def test_first_start_makes_an_admin_once(auth, tmp_path):
    """The first start creates an admin user and key, written owner-only; later starts
    make nothing."""
    made = auth.ensure_admin(tmp_path)
    assert made is not None
    password, key = made
    assert (tmp_path / "admin.key").read_text().strip() == key
    assert stat.S_IMODE((tmp_path / "admin.password").stat().st_mode) == 0o600
    assert auth.check_password("admin", password).role is Role.ADMIN
    assert auth.check_key(key).role is Role.ADMIN
    assert auth.ensure_admin(tmp_path) is None
