"""Certificates for Modbus/TCP Security (Modbus over TLS, port 802 by convention).

`ensure_certs(directory)` makes, if they are missing, a private CA and two certificates
signed by it: one for the server (the emulated gateway: `localhost` and 127.0.0.1) and one
for the client (the collector), which carries the Modbus/TCP Security role extension
(OID 1.3.6.1.4.1.50316.802.1, role "Operator"). Both sides authenticate each other:
`server_context` demands a client certificate from the CA, `client_context` trusts only
the CA and presents the client certificate. Keys are EC P-256 and readable by the owner
only. The `openssl` command line tool makes them (the venv has no `cryptography`).

Example::

    server_ssl = server_context("certs")          # for Emulator(..., links={gw: Tls(server_ssl)})
    client_ssl = client_context("certs")          # for AsyncModbusTlsClient(host, sslctx=client_ssl)
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess  # noqa: S404 - the openssl CLI, with fixed arguments
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: Modbus/TCP Security: the role a client certificate carries (an ASN.1 UTF8String).
ROLE_OID = "1.3.6.1.4.1.50316.802.1"
#: Bounds every openssl call: key generation and signing take milliseconds.
OPENSSL_TIMEOUT_S = 30.0
DAYS = 3650


@dataclass(frozen=True, slots=True)
class CertFiles:
    """The PEM files of a certificate directory. Example: ``ensure_certs("certs").ca``."""

    directory: Path  #: where they are
    ca: Path  #: the CA certificate both sides trust
    ca_key: Path  #: the CA's key (signs the other two)
    server_cert: Path  #: the gateway's certificate (localhost, 127.0.0.1)
    server_key: Path  #: its key
    client_cert: Path  #: the collector's certificate (role Operator)
    client_key: Path  #: its key

    @classmethod
    def of(cls, directory: str | Path) -> CertFiles:
        """The file names inside `directory` (whether or not they exist)."""
        d = Path(directory)
        return cls(d, d / "ca.pem", d / "ca.key", d / "server.pem", d / "server.key", d / "client.pem",
                   d / "client.key")

    def files(self) -> tuple[Path, ...]:
        """Every file, CA first."""
        return (self.ca, self.ca_key, self.server_cert, self.server_key, self.client_cert, self.client_key)


def _openssl(*args: str, cwd: Path) -> None:
    """Run openssl; a failure raises RuntimeError with what openssl said."""
    exe = shutil.which("openssl")
    if exe is None:
        raise RuntimeError("making certificates needs the openssl command (Debian package openssl)")
    done = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True,  # noqa: S603
                          timeout=OPENSSL_TIMEOUT_S, check=False)
    if done.returncode:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def _signed(work: Path, name: str, subject: str, extensions: str) -> None:
    """A key, and a certificate for it signed by the CA in `work`."""
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=work)
    (work / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial",
             str(int.from_bytes(os.urandom(8), "big")), "-days", str(DAYS), "-sha256",
             "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=work)


def ensure_certs(directory: str | Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> CertFiles:
    """The CA, server and client certificates in `directory`, made when any is missing
    (all anew, so they always belong together). `hosts` are the server's names: DNS
    names and IP addresses. Made in a scratch directory and moved in, so a reader never
    sees half a set."""
    certs = CertFiles.of(directory)
    if all(p.exists() for p in certs.files()):
        return certs
    certs.directory.mkdir(parents=True, exist_ok=True)
    names = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}" for h in hosts)
    with tempfile.TemporaryDirectory(dir=certs.directory, prefix=".making-") as scratch:
        work = Path(scratch)
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", "ca.key", "-out", "ca.pem", "-days", str(DAYS), "-sha256",
                 "-subj", "/O=MeterTwin/CN=MeterTwin Modbus CA",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=work)
        _signed(work, "server", "/O=MeterTwin/CN=metertwin-gateway",
                f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                f"extendedKeyUsage=serverAuth\nsubjectAltName={names}\n", )
        _signed(work, "client", "/O=MeterTwin/CN=metertwin-collector",
                f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                f"extendedKeyUsage=clientAuth\n{ROLE_OID}=ASN1:UTF8String:Operator\n")
        for path in certs.files():
            made = work / path.name
            made.chmod(0o600 if path.suffix == ".key" else 0o644)
            os.replace(made, path)
    return certs


def server_context(directory: str | Path) -> ssl.SSLContext:
    """TLS 1.2+ server side of a gateway: its certificate, and clients must present one
    signed by the CA (mutual authentication, as Modbus/TCP Security requires)."""
    certs = ensure_certs(directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certs.server_cert, certs.server_key)
    context.load_verify_locations(certs.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(directory: str | Path, *, check_hostname: bool = True) -> ssl.SSLContext:
    """TLS 1.2+ client side of a collector: trusts only the CA, presents the client
    certificate. pymodbus's synchronous TLS client passes no server name: give it
    `check_hostname=False` (the chain is still verified); the asyncio client names the host."""
    certs = ensure_certs(directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(certs.ca)
    context.load_cert_chain(certs.client_cert, certs.client_key)
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    return context


__all__ = ["ROLE_OID", "CertFiles", "client_context", "ensure_certs", "server_context"]
