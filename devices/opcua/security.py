"""Who may do what on the OPC UA server, and the certificates it runs on.

asyncua is permissive out of the box (a None endpoint, anonymous writes, remote admin for a
user named admin) and its role table lets its User role write and call. The rules here are
ours and replace it:

- The one advertised endpoint is Basic256Sha256 with SignAndEncrypt; users log in with a
  user name and password checked by the `UserDirectory` the composition root hands in (the
  platform's users), and their client certificate must be in the trust list directory
  (`<data>/opcua/trusted/`; a refused certificate is copied to `<data>/opcua/rejected/` so an
  administrator can move it across).
- viewers browse, read and subscribe; operators (and admins) also call methods and write the
  variables whose access level allows it (the alarm thresholds); nobody adds or deletes
  nodes or references, and nobody registers servers.
- `--opcua-anonymous` adds an anonymous None endpoint for browsing tools: on an unsecured
  channel nothing but reading, browsing and subscribing is allowed, whoever logs in. Without
  it, an unsecured channel carries no session at all (asyncua would otherwise fall back to an
  unchecked None channel).
- Each user (anonymous counts as one) holds at most `MAX_SESSIONS_PER_USER` sessions and
  `MAX_SUBSCRIPTIONS_PER_USER` subscriptions.

The permission check runs in the task that then serves the request, so it also records who
is asking (`current_user`) for the method and write handlers: a command carries its user.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import hashlib
import logging
import os
import socket
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import PermissionRuleset, User, UserRole
from asyncua.server.internal_session import SessionState
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

if TYPE_CHECKING:
    from asyncua.server.internal_server import InternalServer

log = logging.getLogger("metertwin.opcua")

#: Per user name (anonymous is one user): concurrent sessions and subscriptions.
MAX_SESSIONS_PER_USER = 10
MAX_SUBSCRIPTIONS_PER_USER = 20
#: Server-wide caps handed to asyncua.
MAX_SESSIONS = 200
MAX_SUBSCRIPTIONS = 1000
#: The application URI in our certificates; asyncua checks it against the server's.
SERVER_URI = "urn:metertwin:opcua:server"
CERT_DAYS = 3650


class Access(IntEnum):
    """What an OPC UA user may do; our roles map onto it (admin gets no more than operator:
    the address space is not administered over OPC UA)."""

    READ = 1  #: browse, read, subscribe
    OPERATE = 2  #: also call methods and write writable variables


ACCESS_OF_ROLE = {"viewer": Access.READ, "operator": Access.OPERATE, "admin": Access.OPERATE}


@dataclass
class PlatformUser(User):
    """A logged-in OPC UA user. asyncua's own role stays User (never Admin), so its
    attribute service also refuses writes to anything but a writable value."""

    access: Access = Access.READ  #: what our rules let them do
    anonymous: bool = False  #: logged in without credentials


class UserDirectory(Protocol):
    """The platform's users, as the server sees them (handed in by the composition root)."""

    def login(self, name: str, password: str) -> str | None:
        """The user's role ('viewer', 'operator', 'admin') if the password is right, else None."""


#: Who sent the request being served (set by the permission check, read by handlers).
current_user: contextvars.ContextVar[PlatformUser | None] = contextvars.ContextVar("opcua_user", default=None)

_T = ua.ObjectIds
#: Requests any logged-in user may make, on any channel.
READ_REQUESTS = frozenset({
    _T.ReadRequest_Encoding_DefaultBinary, _T.BrowseRequest_Encoding_DefaultBinary,
    _T.BrowseNextRequest_Encoding_DefaultBinary, _T.TranslateBrowsePathsToNodeIdsRequest_Encoding_DefaultBinary,
    _T.RegisterNodesRequest_Encoding_DefaultBinary, _T.UnregisterNodesRequest_Encoding_DefaultBinary,
    _T.CreateSubscriptionRequest_Encoding_DefaultBinary, _T.ModifySubscriptionRequest_Encoding_DefaultBinary,
    _T.DeleteSubscriptionsRequest_Encoding_DefaultBinary, _T.TransferSubscriptionsRequest_Encoding_DefaultBinary,
    _T.CreateMonitoredItemsRequest_Encoding_DefaultBinary, _T.ModifyMonitoredItemsRequest_Encoding_DefaultBinary,
    _T.DeleteMonitoredItemsRequest_Encoding_DefaultBinary, _T.SetMonitoringModeRequest_Encoding_DefaultBinary,
    _T.SetPublishingModeRequest_Encoding_DefaultBinary, _T.PublishRequest_Encoding_DefaultBinary,
    _T.RepublishRequest_Encoding_DefaultBinary, _T.HistoryReadRequest_Encoding_DefaultBinary,
    _T.CloseSessionRequest_Encoding_DefaultBinary, _T.CloseSecureChannelRequest_Encoding_DefaultBinary,
    _T.GetEndpointsRequest_Encoding_DefaultBinary, _T.FindServersRequest_Encoding_DefaultBinary,
})
#: Requests only operators may make, and only on a signed and encrypted channel.
OPERATE_REQUESTS = frozenset({_T.WriteRequest_Encoding_DefaultBinary, _T.CallRequest_Encoding_DefaultBinary})
# Everything else (AddNodes, DeleteNodes, AddReferences, DeleteReferences, RegisterServer,
# HistoryUpdate, ...) is refused to everyone.


_REQUEST_NAMES = {getattr(_T, n): n.removesuffix("Request_Encoding_DefaultBinary") for n in dir(_T)
                  if n.endswith("Request_Encoding_DefaultBinary")}


class Sessions:
    """Counts a user's sessions and subscriptions in the running server."""

    def __init__(self) -> None:
        self.iserver: InternalServer | None = None  #: set when the server is built

    def _sessions(self) -> list[Any]:
        assert self.iserver is not None
        return list(self.iserver._external_sessions.values())  # noqa: SLF001 - no public listing in asyncua 2.1

    def sessions_of(self, name: str) -> int:
        """Activated sessions of a user."""
        return sum(1 for s in self._sessions() if s.state == SessionState.Activated and s.user is not None
                   and s.user.name == name)

    def subscriptions_of(self, name: str) -> int:
        """Subscriptions held by a user's sessions."""
        assert self.iserver is not None
        mine = {s.session_id for s in self._sessions() if s.user is not None and s.user.name == name}
        return sum(1 for sub in self.iserver.subscription_service.subscriptions.values() if sub.session_id in mine)


class PlatformUserManager:
    """asyncua's user manager over our `UserDirectory`. Anonymous logins only when the
    anonymous endpoint is on; a user-name login on an unsecured channel (no peer
    certificate) only then too, and read-only (the rules see the channel)."""

    def __init__(self, directory: UserDirectory, sessions: Sessions, anonymous: bool) -> None:
        self.directory = directory
        self.sessions = sessions
        self.anonymous = anonymous
        self.refused = 0  #: logins refused, for the log and the tests

    def get_user(self, iserver: InternalServer, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        """The user, or None (asyncua answers BadUserAccessDenied)."""
        user = self._check(username, password, certificate)
        if user is None:
            self.refused += 1
            return None
        if self.sessions.sessions_of(str(user.name)) >= MAX_SESSIONS_PER_USER:
            log.warning("OPC UA login of %s refused: %d sessions open already", user.name, MAX_SESSIONS_PER_USER)
            self.refused += 1
            return None
        return user

    def _check(self, username: str | None, password: str | None, certificate: Any) -> PlatformUser | None:
        if username is None:
            return PlatformUser(UserRole.Anonymous, "anonymous", Access.READ, True) if self.anonymous else None
        if not certificate and not self.anonymous:
            return None  # no secure channel: never a password in clear, never a session
        role = self.directory.login(username, password or "")
        if role is None:
            log.warning("OPC UA login refused for user %r", username)
            return None
        return PlatformUser(UserRole.User, username, ACCESS_OF_ROLE.get(role, Access.READ))


class PlatformRules(PermissionRuleset):
    """Our permission rules for one kind of channel: `secure` (SignAndEncrypt) or not."""

    def __init__(self, secure: bool, sessions: Sessions, open_channel_allowed: bool = True) -> None:
        self.secure = secure
        self.sessions = sessions
        self.open_channel_allowed = open_channel_allowed
        self.refused = 0  #: requests refused, for the log and the tests

    def check_validity(self, user: Any, action_type_id: ua.NodeId, body: Any) -> bool:
        """True when `user` may make this request on this channel."""
        allowed = self._allowed(user, action_type_id)
        if allowed:
            current_user.set(user)
        else:
            self.refused += 1
            name = getattr(user, "name", None) or "no user"
            request = _REQUEST_NAMES.get(action_type_id.Identifier, str(action_type_id.Identifier))
            log.warning("OPC UA %s refused to %s on %s channel", request, name, "a secure" if self.secure else
                        "an unsecured")
        return allowed

    def _allowed(self, user: Any, action_type_id: ua.NodeId) -> bool:
        if not isinstance(user, PlatformUser) or not (self.secure or self.open_channel_allowed):
            return False
        request = action_type_id.Identifier if action_type_id.NamespaceIndex == 0 else None
        if request in READ_REQUESTS:
            if request == _T.CreateSubscriptionRequest_Encoding_DefaultBinary:
                return self.sessions.subscriptions_of(str(user.name)) < MAX_SUBSCRIPTIONS_PER_USER
            return True
        if request in OPERATE_REQUESTS:
            return self.secure and not user.anonymous and user.access >= Access.OPERATE
        return False


# -- certificates ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerCerts:
    """Where the server's certificate lives, and the trust list of client certificates."""

    cert: Path  #: server certificate (DER)
    key: Path  #: its private key (PEM, owner-only)
    trusted: Path  #: client certificates (or their CAs) allowed to connect, DER or PEM
    rejected: Path  #: refused client certificates land here for an administrator to review


def ensure_server_certs(directory: str | Path, host: str = "127.0.0.1") -> ServerCerts:
    """The server certificate and key in `directory`, made on first start (RSA 2048,
    SHA-256, 10 years, application URI `SERVER_URI`, names localhost, the host name and
    `host`), plus the trusted/ and rejected/ directories."""
    d = Path(directory)
    certs = ServerCerts(d / "server_cert.der", d / "server_key.pem", d / "trusted", d / "rejected")
    for sub in (d, certs.trusted, certs.rejected):
        sub.mkdir(parents=True, exist_ok=True)
    if not (certs.cert.exists() and certs.key.exists()):
        key, cert = make_certificate("MeterTwin OPC UA server", SERVER_URI, host, server=True)
        write_key(certs.key, key)
        certs.cert.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        log.info("made the OPC UA server certificate %s", certs.cert)
    return certs


def make_certificate(name: str, uri: str, host: str = "127.0.0.1",
                     server: bool = False) -> tuple[Any, x509.Certificate]:
    """A self-signed OPC UA application certificate and its RSA key (client or server)."""
    key = cert_gen.generate_private_key()
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost"),
                                     x509.DNSName(socket.gethostname())]
    try:
        import ipaddress

        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    use = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server else \
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = cert_gen.generate_self_signed_app_certificate(key, name, {"organizationName": "MeterTwin"}, names,
                                                         extended=use, days=CERT_DAYS)
    return key, cert


def write_key(path: Path, key: Any) -> None:
    """Write a private key as PEM, readable by the owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(cert_gen.dump_private_key_as_pem(key))
    os.chmod(path, 0o600)


def _load(path: Path) -> x509.Certificate | None:
    data = path.read_bytes()
    try:
        return x509.load_der_x509_certificate(data) if path.suffix.lower() == ".der" else \
            x509.load_pem_x509_certificate(data)
    except ValueError:
        log.warning("trust list: %s is not a certificate; ignored", path)
        return None


class TrustList:
    """Validates client certificates against a directory (read again on every check, so
    a certificate moved there takes effect without a restart): the certificate itself, or
    the CA that signed it, must be there, and it must be within its validity dates."""

    def __init__(self, trusted: Path, rejected: Path) -> None:
        self.trusted = trusted
        self.rejected = rejected
        self.refused = 0  #: certificates refused, for the log and the tests

    def trusts(self, cert: x509.Certificate) -> bool:
        """True when the certificate (or its issuer) is in the trust list and valid now."""
        now = dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return False
        for path in sorted(self.trusted.glob("*")):
            if path.suffix.lower() not in (".der", ".pem", ".crt"):
                continue
            known = _load(path)
            if known is None:
                continue
            if known == cert:
                return True
            try:
                cert.verify_directly_issued_by(known)
                return True
            except (ValueError, TypeError, InvalidSignature):
                continue
        return False

    async def __call__(self, cert: x509.Certificate, app_description: ua.ApplicationDescription) -> None:
        """asyncua's validator hook: raise BadCertificateUntrusted unless trusted."""
        if self.trusts(cert):
            return
        self.refused += 1
        der = cert.public_bytes(serialization.Encoding.DER)
        name = f"{hashlib.sha1(der, usedforsecurity=False).hexdigest()}.der"
        (self.rejected / name).write_bytes(der)
        log.warning("OPC UA client certificate %s refused (not in %s); kept as %s", cert.subject.rfc4514_string(),
                    self.trusted, self.rejected / name)
        raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)
