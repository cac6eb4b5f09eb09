"""Users, roles and API keys: one store in the data directory, shared by the API, the
dashboard and the OPC UA server.

Roles, each including the ones before it: viewer (read), operator (commands, top-ups,
acknowledging alarms), admin (users, keys, tariffs). Passwords are hashed with scrypt
(slow on purpose); API keys are random 256-bit secrets shown once and stored as SHA-256
(a key is not guessable, so a fast hash is enough). A key reads `mt_<key id>_<secret>`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from control.store import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, salt BLOB NOT NULL, hash BLOB NOT NULL, created REAL NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, hash BLOB NOT NULL, created REAL NOT NULL,
    revoked REAL
);
"""
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}


class Role(IntEnum):
    """What someone may do; a higher role may do everything a lower one may."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @classmethod
    def parse(cls, text: str) -> Role:
        """'viewer', 'operator' or 'admin'; ValueError names the choices."""
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"unknown role {text!r}: use viewer, operator or admin") from None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: a user or an API key, with a role."""

    name: str  #: user name, or "key:<id>"
    role: Role  #: what they may do


class AuthError(Exception):
    """Credentials that do not let someone in; the message never says which part was wrong."""


def _hash_password(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)


class Auth:
    """Users and keys over the control store. Example::

        auth = Auth(store)
        secret = auth.create_key("dashboard", Role.VIEWER)
        auth.check_key(secret).role          # Role.VIEWER
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        store.db.executescript(SCHEMA)

    # -- users --------------------------------------------------------------------------

    def add_user(self, name: str, role: Role, password: str) -> None:
        """Add a user; ValueError if the name is taken or the password too short."""
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"user name {name!r}: use letters, digits, '-', '_' and '.'")
        if len(password) < 10:
            raise ValueError("a password needs at least 10 characters")
        salt = os.urandom(16)
        with self.store.write() as db:
            if db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise ValueError(f"user {name!r} exists")
            db.execute("INSERT INTO users(name, role, salt, hash, created) VALUES (?, ?, ?, ?, ?)",
                       (name, role.name.lower(), salt, _hash_password(password, salt), time.time()))

    def check_password(self, name: str, password: str) -> Principal:
        """The user if the password is right; AuthError otherwise (same time either way)."""
        row = self.store.db.execute("SELECT role, salt, hash, disabled FROM users WHERE name = ?", (name,)).fetchone()
        salt, stored = (row["salt"], row["hash"]) if row else (b"0" * 16, b"")
        computed = _hash_password(password, salt)
        if row is None or row["disabled"] or not hmac.compare_digest(computed, stored):
            raise AuthError("wrong user name or password")
        return Principal(name, Role.parse(row["role"]))

    def users(self) -> list[dict[str, object]]:
        """Users with their roles (never the hashes)."""
        rows = self.store.db.execute("SELECT name, role, created, disabled FROM users ORDER BY name")
        return [{"name": r["name"], "role": r["role"], "created": r["created"], "disabled": bool(r["disabled"])}
                for r in rows]

    # -- keys ---------------------------------------------------------------------------

    def create_key(self, name: str, role: Role) -> str:
        """Make a key and return it; it is shown this once and stored only as a hash."""
        key_id = secrets.token_hex(4)
        secret = secrets.token_urlsafe(32)
        with self.store.write() as db:
            db.execute("INSERT INTO api_keys(id, name, role, hash, created) VALUES (?, ?, ?, ?, ?)",
                       (key_id, name, role.name.lower(), hashlib.sha256(secret.encode()).digest(), time.time()))
        return f"mt_{key_id}_{secret}"

    def check_key(self, token: str) -> Principal:
        """The key's principal if the token is a live key; AuthError otherwise."""
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != "mt":
            raise AuthError("not a MeterTwin API key")
        row = self.store.db.execute("SELECT role, hash, revoked FROM api_keys WHERE id = ?", (parts[1],)).fetchone()
        digest = hashlib.sha256(parts[2].encode()).digest()
        if row is None or row["revoked"] is not None or not hmac.compare_digest(digest, row["hash"]):
            raise AuthError("unknown or revoked API key")
        return Principal(f"key:{parts[1]}", Role.parse(row["role"]))

    def revoke_key(self, key_id: str) -> None:
        """Revoke a key; KeyError if there is no such key."""
        with self.store.write() as db:
            if db.execute("UPDATE api_keys SET revoked = ? WHERE id = ? AND revoked IS NULL",
                          (time.time(), key_id)).rowcount == 0:
                raise KeyError(f"no live key {key_id!r}")

    def keys(self) -> list[dict[str, object]]:
        """Keys with their names and roles (never the secrets)."""
        rows = self.store.db.execute("SELECT id, name, role, created, revoked FROM api_keys ORDER BY created")
        return [dict(zip(("id", "name", "role", "created", "revoked"), tuple(r), strict=True)) for r in rows]

    # -- first start --------------------------------------------------------------------

    def ensure_admin(self, data_dir: Path) -> tuple[str, str] | None:
        """On first start: an `admin` user with a random password and an admin key, written
        to DIR/admin.password and DIR/admin.key (mode 0600). Returns (password, key) when
        made now, None when an admin already exists."""
        if self.store.db.execute("SELECT 1 FROM users WHERE role = 'admin'").fetchone():
            return None
        password = secrets.token_urlsafe(12)
        self.add_user("admin", Role.ADMIN, password)
        key = self.create_key("admin", Role.ADMIN)
        for name, value in (("admin.password", password), ("admin.key", key)):
            path = data_dir / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(value + "\n")
            os.chmod(path, 0o600)
        return password, key
