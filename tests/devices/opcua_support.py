"""Shared by the OPC UA tests: a `metertwin run` with its OPC UA server on free loopback
ports, users made through the CLI, client certificates, and asyncua clients that log in."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from asyncua import Client, ua
from asyncua.common.utils import create_nonce
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography.hazmat.primitives import serialization

from devices.opcua.security import make_certificate, write_key
from tests.support import free_tcp_port

SCENARIO = """\
[site]
id = "H1"
name = "OPC UA test"

[[buildings]]
id = "B01"
floors = 3
rooms_per_floor = 2
electric = {}
water = { valve = true }
master = { electric = true, water = true }

[[inject]]
twin = "B01-03-02.em"
kind = "offline"
start = "0d"
"""
PASSWORD = "a long enough passphrase"
CLIENT_URI = "urn:metertwin:test:client"
NS = "urn:metertwin:twins"


class PlatformRun:
    """`metertwin run` of a small site on free ports, with an operator and a viewer."""

    def __init__(self, tmp: Path, *extra: str, scenario_text: str = SCENARIO) -> None:
        self.tmp = tmp
        self.data = tmp / "data"
        scenario = tmp / "opcua.toml"
        scenario.write_text(scenario_text)
        self.port = free_tcp_port()
        self.opcua_port = free_tcp_port()
        self.endpoint = f"opc.tcp://127.0.0.1:{self.opcua_port}"
        self.log_path = tmp / f"run-{self.port}.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "control.cli", "run", str(scenario), "--data", str(self.data),
             "--port", str(self.port), "--opcua-port", str(self.opcua_port), "--speed", "120",
             "--start", "2026-03-02T18:00", *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.wait_until(self._answers, "the HTTP and OPC UA servers")
        self.admin_password = (self.data / "admin.password").read_text().strip()
        for name, role in (("olga", "operator"), ("victor", "viewer")):
            subprocess.run([sys.executable, "-m", "control.cli", "users", "add", name, "--role", role,
                            "--password-stdin", "--data", str(self.data)], input=PASSWORD + "\n", text=True,
                           check=True, capture_output=True)
        self.trusted = self.certificate("trusted")
        self.untrusted = self.certificate("stranger", trust=False)

    def _answers(self) -> bool:
        try:
            if httpx.get(f"http://127.0.0.1:{self.port}/api/health", timeout=5).status_code != 200:
                return False
            with socket.create_connection(("127.0.0.1", self.opcua_port), timeout=2):
                return True
        except (httpx.TransportError, OSError):
            return False

    def wait_until(self, condition, what: str, bound_s: float = 180.0) -> None:
        """Poll until `condition()`; the bound only stops a broken run from hanging."""
        end = time.monotonic() + bound_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"metertwin run exited ({self.proc.returncode}) waiting for {what}: "
                                     f"{self.log_path.read_text()[-3000:]}")
            if condition():
                return
            time.sleep(0.2)
        raise AssertionError(f"gave up waiting for {what}")

    def certificate(self, name: str, trust: bool = True) -> tuple[Path, Path]:
        """A client certificate and key; copied into the trust list when `trust`."""
        key, cert = make_certificate(f"test client {name}", CLIENT_URI)
        der = cert.public_bytes(serialization.Encoding.DER)
        cert_path, key_path = self.tmp / f"{name}.der", self.tmp / f"{name}.pem"
        cert_path.write_bytes(der)
        write_key(key_path, key)
        if trust:
            (self.data / "opcua" / "trusted" / f"{name}.der").write_bytes(der)
        return cert_path, key_path

    def confirmed(self, command_id: str, state: str) -> bool:
        """True once the command is confirmed: at once when the method said so, else as
        /api/commands/{id} follows it (the device may take longer than the call waits)."""
        if state != "sent":
            return state == "confirmed"
        key = (self.data / "admin.key").read_text().strip()

        def state_now() -> str:
            answer = httpx.get(f"http://127.0.0.1:{self.port}/api/commands/{command_id}",
                               headers={"Authorization": f"Bearer {key}"}, timeout=10)
            return str(answer.json()["state"])
        self.wait_until(lambda: state_now() != "sent", f"command {command_id} to finish")
        return state_now() == "confirmed"

    def stop(self) -> int:
        self.proc.terminate()
        code = self.proc.wait(timeout=60)
        self.log.close()
        return code


async def connect(run: PlatformRun, user: str | None = None, password: str | None = None,
                  cert: tuple[Path, Path] | None = None, secure: bool = True) -> Client:
    """An asyncua client logged in to the run's server (raises when the server refuses)."""
    client = Client(run.endpoint, timeout=15, watchdog_intervall=10)
    client.application_uri = CLIENT_URI
    if secure:
        cert_path, key_path = cert or run.trusted
        await client.set_security(SecurityPolicyBasic256Sha256, str(cert_path), str(key_path),
                                  mode=ua.MessageSecurityMode.SignAndEncrypt)
    if user is not None:
        client.set_user(user)
        client.set_password(password or "")
    await asyncio.wait_for(client.connect(), timeout=60)
    return client


async def none_channel(run: PlatformRun, user: str | None = None, password: str = "") -> Client:
    """A session over an unsecured (None) channel made by hand, whether or not the server
    advertises a None endpoint: asyncua's client would refuse on its own side, and the
    point is what the server does. Raises when the server refuses the login."""
    client = Client(run.endpoint, timeout=15, watchdog_intervall=10)
    await client.connect_socket()
    await client.send_hello()
    await client.open_secure_channel()
    await client.uaclient.create_session(ua.CreateSessionParameters(
        ClientDescription=ua.ApplicationDescription(ApplicationUri=CLIENT_URI), EndpointUrl=run.endpoint,
        SessionName="none-channel", ClientNonce=create_nonce(32), RequestedSessionTimeout=60000,
        MaxResponseMessageSize=0))
    token: ua.UserNameIdentityToken | ua.AnonymousIdentityToken = ua.AnonymousIdentityToken(PolicyId="anonymous")
    if user is not None:
        token = ua.UserNameIdentityToken(UserName=user, Password=password.encode(), PolicyId="username")
    try:
        await client.uaclient.activate_session(ua.ActivateSessionParameters(LocaleIds=["en"], UserIdentityToken=token))
    except BaseException:
        client.disconnect_socket()
        raise
    return client


async def try_forbidden(client: Client | None, login_error: str = "") -> dict[str, str]:
    """Write a threshold, call Trip, add a node; what the server answered to each
    ('refused: <why>' or 'ALLOWED'). Without a client (the login was refused) each is
    refused for want of a session."""
    if client is None:
        return {what: f"refused: no session ({login_error})" for what in ("write", "trip", "add node")}
    ns = await client.get_namespace_index(NS)
    meter = client.get_node(ua.NodeId("B01-01-01.em", ns))
    attempts = {
        "write": client.get_node(ua.NodeId("B01-01-01.em/PowerLimitW", ns)).write_value(
            ua.DataValue(ua.Variant(5.0, ua.VariantType.Double))),
        "trip": meter.call_method(ua.NodeId("ElectricMeterType/Trip", ns)),
        "add node": client.nodes.objects.add_folder(ua.NodeId("intruder", ns), "intruder"),
    }
    out = {}
    for what, attempt in attempts.items():
        try:
            await attempt
            out[what] = "ALLOWED"
        except ua.UaError as err:
            out[what] = f"refused: {type(err).__name__}"
    return out
