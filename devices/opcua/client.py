"""Southbound OPC UA: twins whose source is an external OPC UA server, kept in sync by
subscriptions, and commands written to the mapped nodes (or methods) and read back.

A scenario names the source (`[[opcua]]` in scenarios/loader.py): the server's
opc.tcp://HOST:PORT, a node per reported field, and optionally a method per action. One
connection per server URL; every mapped node is a monitored item with sampling interval 0
(each write the server makes is a change) and a queue of `QUEUE_SIZE` values, so a burst
between two publishes is delivered whole, oldest first. The client's watchdog runs every
`WATCHDOG_S` seconds (asyncua's 1 s default drops busy connections); when the connection is
lost the twins of that server are marked offline, and the link reconnects with backoff and
subscribes again, each monitored item starting with the server's current value.

A command writes the value to the node mapped to its field (with that node's own data type),
or calls the mapped method, then reads the field's node back until it shows the value: only
then is it reported into the twin, so the command book confirms it as for any device.

Example::

    sync = OpcUaSync(fleet, scenario.opcua, on_change=print)
    await sync.start()
    confirmed = await sync.command("B01.mm", "relay_closed", 0)
    await sync.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from asyncua import Client, Node, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography.hazmat.primitives import serialization

from devices.opcua.security import make_certificate, write_key
from scenarios.schema import OpcUaSource
from twin.model import Kind
from twin.state import FleetState

log = logging.getLogger("metertwin.opcua.client")

#: Values a monitored item may hold between two publishes before the oldest would be lost.
QUEUE_SIZE = 10_000
PUBLISH_MS = 100.0
#: The client's watchdog: asyncua's 1 s default dropped busy connections in 4 of 6 runs.
WATCHDOG_S = 10.0
REQUEST_TIMEOUT_S = 10.0
#: Seconds between reconnect attempts: doubling up to the last.
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)
#: How long a command's read-back may take before it counts as not confirmed.
READBACK_S = 10.0
CLIENT_URI = "urn:metertwin:opcua:client"
#: (field, value) -> the action a mapped method carries out.
ACTION_OF = {("relay_closed", 0): "relay_open", ("relay_closed", 1): "relay_close",
             ("open", 0): "valve_close", ("open", 1): "valve_open"}


@dataclass(frozen=True, slots=True)
class Change:
    """One value a server sent: `good` False when its status was bad (the value is None)."""

    twin: str  #: twin id
    field: str  #: reported field
    value: Any  #: the value (None when bad)
    at: float  #: source timestamp, UTC epoch seconds (server's or ours when absent)
    good: bool  #: status code good


@dataclass
class _Target:
    twin: str
    kind: Kind
    row: int
    field: str


@dataclass
class _Link:
    """One server: its sources, its connection and its subscription."""

    url: str
    sources: list[OpcUaSource]
    client: Client | None = None
    generation: int = 0  #: how many times it has subscribed (1 after the first connection)
    connected: bool = False
    last_error: str | None = None
    reconnects: int = 0
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class OpcUaSync:
    """Keeps twins in sync from OPC UA servers; also the commands' `Device` for them."""

    def __init__(self, fleet: FleetState, sources: list[OpcUaSource],
                 on_change: Callable[[Change], None] | None = None,
                 on_reading: Callable[[str, dict[str, Any], float], None] | None = None,
                 cert_dir: str | Path | None = None) -> None:
        """`on_change` sees every notification (good or bad); `on_reading(twin, fields, ts)`,
        when given, takes the good values instead of a plain `fleet.report` (the platform's
        collector seam: it also feeds counters into intervals). `cert_dir` holds the client
        certificate for `sign_encrypt` sources (made there on first use; give it to the
        device's trust list)."""
        if any(s.security == "sign_encrypt" for s in sources) and cert_dir is None:
            raise ValueError("sign_encrypt OPC UA sources need a directory for the client certificate")
        self.cert_dir = Path(cert_dir) if cert_dir is not None else None
        self.fleet = fleet
        self.on_change = on_change
        self.on_reading = on_reading
        self.sources = {s.twin: s for s in sources}
        self.links: dict[str, _Link] = {}
        for source in sources:
            self.links.setdefault(source.url, _Link(source.url, [])).sources.append(source)
        self.changes = 0  #: values received
        self.outcomes: list[tuple[str, str, int, bool, str]] = []  #: (twin, field, value, confirmed, detail)
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- running ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to every server (in the background; a server that is down is retried)."""
        self._loop = asyncio.get_running_loop()
        for link in self.links.values():
            link.task = asyncio.create_task(self._run(link), name=f"opcua-sync {link.url}")

    async def stop(self) -> None:
        """Disconnect from every server."""
        for link in self.links.values():
            if link.task is not None:
                link.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await link.task
                link.task = None

    async def wait_subscribed(self, url: str, generation: int, bound_s: float = 60.0) -> None:
        """Wait until the link to `url` has subscribed `generation` times (tests, start-up)."""
        link = self.links[url]
        end = time.monotonic() + bound_s
        while link.generation < generation:
            if time.monotonic() > end:
                raise TimeoutError(f"{url}: not subscribed ({link.last_error})")
            link.subscribed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(link.subscribed.wait(), timeout=max(0.01, end - time.monotonic()))

    def status(self) -> list[dict[str, Any]]:
        """Per server: connected, subscriptions made, reconnects, last error."""
        return [{"url": link.url, "twins": len(link.sources), "connected": link.connected,
                 "generation": link.generation, "reconnects": link.reconnects, "last_error": link.last_error}
                for link in self.links.values()]

    async def _run(self, link: _Link) -> None:
        attempt = 0
        while True:
            try:
                await self._session(link)
                attempt = 0
            except asyncio.CancelledError:
                raise
            except Exception as err:  # any failure of the connection: mark offline, retry
                message = f"{type(err).__name__}: {err}"
                if link.connected or link.last_error is None:
                    log.error("OPC UA source %s lost: %s; reconnecting", link.url, message)
                link.last_error = message
            link.connected = False
            self._mark_offline(link)
            if link.client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(link.client.disconnect(), timeout=2.0)
                link.client = None
            await asyncio.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
            attempt += 1
            link.reconnects += 1

    async def _session(self, link: _Link) -> None:
        client = Client(link.url, timeout=REQUEST_TIMEOUT_S, watchdog_intervall=WATCHDOG_S)
        link.client = client
        await self._secure(client, link.sources[0])
        await client.connect()
        targets: dict[ua.NodeId, list[_Target]] = {}
        for source in link.sources:
            kind, row = self.fleet.locate(source.twin)
            for name, node_id in source.nodes.items():
                targets.setdefault(ua.NodeId.from_string(node_id), []).append(_Target(source.twin, kind, row, name))
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=PUBLISH_MS, RequestedLifetimeCount=3000, RequestedMaxKeepAliveCount=100,
            MaxNotificationsPerPublish=0, PublishingEnabled=True, Priority=0)
        subscription = await client.create_subscription(params, _Handler(self, targets))
        nodes = [client.get_node(node_id) for node_id in targets]
        results = await subscription.subscribe_data_change(nodes, queuesize=QUEUE_SIZE,
                                                           sampling_interval=ua.Double(0.0))
        for node, result in zip(nodes, results, strict=True):
            if isinstance(result, ua.StatusCode):
                raise RuntimeError(f"{link.url}: cannot monitor {node.nodeid.to_string()}: {result.name}")
        link.connected = True
        link.last_error = None
        link.generation += 1
        link.subscribed.set()
        log.info("OPC UA source %s: %d nodes subscribed (%d)", link.url, len(nodes), link.generation)
        while True:
            await asyncio.sleep(1.0)
            await client.check_connection()

    async def _secure(self, client: Client, source: OpcUaSource) -> None:
        """Security and login as the source asks (every source of one URL asks the same)."""
        if source.username is not None:
            password = os.environ.get(source.password_env or "")
            if password is None:
                raise RuntimeError(f"{source.url}: environment variable {source.password_env} is not set")
            client.set_user(source.username)
            client.set_password(password)
        if source.security == "sign_encrypt":
            assert self.cert_dir is not None
            cert, key = self.client_certificate()
            client.application_uri = CLIENT_URI
            await client.set_security(SecurityPolicyBasic256Sha256, str(cert), str(key),
                                      mode=ua.MessageSecurityMode.SignAndEncrypt)

    def client_certificate(self) -> tuple[Path, Path]:
        """The client certificate (DER) and key (PEM) in `cert_dir`, made when missing."""
        assert self.cert_dir is not None
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        cert, key = self.cert_dir / "opcua_client_cert.der", self.cert_dir / "opcua_client_key.pem"
        if not (cert.exists() and key.exists()):
            private, made = make_certificate("MeterTwin OPC UA client", CLIENT_URI)
            write_key(key, private)
            cert.write_bytes(made.public_bytes(serialization.Encoding.DER))
        return cert, key

    def _mark_offline(self, link: _Link) -> None:
        for source in link.sources:
            kind, row = self.fleet.locate(source.twin)
            self.fleet.tables[kind].faces["reported"]["online"][row] = 0

    def _receive(self, target: _Target, datavalue: ua.DataValue) -> None:
        stamp = datavalue.SourceTimestamp or datavalue.ServerTimestamp
        at = stamp.timestamp() if stamp is not None else time.time()
        good = datavalue.StatusCode is None or datavalue.StatusCode.is_good()
        value = datavalue.Value.Value if good and datavalue.Value is not None else None
        self.changes += 1
        if good and value is not None:
            self._report(target.twin, target.field, value, at)
        if self.on_change is not None:
            self.on_change(Change(target.twin, target.field, value, at, good))

    def _report(self, twin: str, field_name: str, value: Any, at: float) -> None:
        value = int(value) if isinstance(value, bool) else value
        if self.on_reading is not None:
            self.on_reading(twin, {field_name: value}, at)
            return
        kind, row = self.fleet.locate(twin)
        self.fleet.report(kind, np.array([row]), int(at), **{field_name: value, "online": 1})

    # -- commands ---------------------------------------------------------------------------

    async def command(self, twin: str, field_name: str, value: int) -> bool:
        """Carry out a write on a twin: call the mapped method or write the mapped node,
        then read the field's node back. True when it shows `value` within READBACK_S."""
        source = self.sources.get(twin)
        if source is None:
            raise KeyError(f"{twin} has no OPC UA source")
        link = self.links[source.url]
        client = link.client
        if client is None or not link.connected:
            self._outcome(twin, field_name, value, False, f"{source.url} is not connected")
            return False
        action = ACTION_OF.get((field_name, int(value)))
        node_id = source.nodes.get(field_name)
        try:
            if action is not None and action in source.methods:
                obj, method = source.methods[action]
                await client.get_node(obj).call_method(ua.NodeId.from_string(method))
            elif node_id is not None:
                node = client.get_node(node_id)
                current = await node.read_data_value()
                vtype = current.Value.VariantType if current.Value is not None else ua.VariantType.Double
                written = bool(value) if vtype is ua.VariantType.Boolean else value
                await node.write_value(ua.DataValue(ua.Variant(written, vtype)))
            else:
                raise KeyError(f"{twin}: no node or method mapped for {field_name}")
            confirmed = node_id is not None and await self._read_back(client.get_node(node_id), twin, field_name,
                                                                        value)
        except (ua.UaError, OSError, TimeoutError, KeyError) as err:
            self._outcome(twin, field_name, value, False, f"{type(err).__name__}: {err}")
            return False
        self._outcome(twin, field_name, value, confirmed, "read back" if confirmed else "not confirmed by read-back")
        return confirmed

    async def _read_back(self, node: Node, twin: str, field_name: str, value: int) -> bool:
        end = time.monotonic() + READBACK_S
        while True:
            datavalue = await node.read_data_value()
            shown = datavalue.Value.Value if datavalue.Value is not None else None
            if shown is not None and int(shown) == int(value):
                stamp = datavalue.SourceTimestamp or datavalue.ServerTimestamp
                self._report(twin, field_name, shown, stamp.timestamp() if stamp is not None else time.time())
                return True
            if time.monotonic() > end:
                return False
            await asyncio.sleep(0.2)

    def _outcome(self, twin: str, field_name: str, value: int, confirmed: bool, detail: str) -> None:
        self.outcomes.append((twin, field_name, int(value), confirmed, detail))
        del self.outcomes[:-1000]
        if not confirmed:
            log.warning("OPC UA command %s=%s on %s not confirmed: %s", field_name, value, twin, detail)

    def write(self, twin_id: str, field_name: str, value: int, source: str) -> None:
        """The command book's `Device.write`: carried out in the background (from any
        thread); the command is confirmed when the read-back reaches the twin."""
        assert self._loop is not None, "start() first"
        coroutine = self.command(twin_id, field_name, value)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._loop.create_task(coroutine)
        else:
            asyncio.run_coroutine_threadsafe(coroutine, self._loop)


class _Handler:
    """asyncua's subscription handler: every data change to its twins, in order."""

    def __init__(self, sync: OpcUaSync, targets: dict[ua.NodeId, list[_Target]]) -> None:
        self.sync = sync
        self.targets = targets

    def datachange_notification(self, node: Node, val: Any, data: Any) -> None:
        """One change of one monitored node."""
        for target in self.targets.get(node.nodeid, []):
            self.sync._receive(target, data.monitored_item.Value)

    def status_change_notification(self, status: Any) -> None:
        """The server ended the subscription: the watchdog reconnects."""
        log.warning("OPC UA subscription status: %s", status)
