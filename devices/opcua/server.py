"""The northbound OPC UA server: the whole site as a browsable tree for SCADA.

Objects > <site> > <building> > Floors > F03 > <room> > <twin> (building-level twins,
masters, elevators and shared circuits, sit in the building). Each twin is an object of a
type of our namespace (`urn:metertwin:twins`): ElectricMeterType, WaterMeterType, ValveType,
ElevatorLoadType, SharedCircuitType, with variables that carry engineering units (a shared
EngineeringUnits property per unit), source timestamps (the reading's time) and status Good,
or Bad when the twin is offline (BadNoCommunication) or stale, silent for two intervals
(BadDataUnavailable; a value never reported: BadWaitingForInitialData). BalanceFen is the
meter's account's balance as the backend gives it (`TwinBackend.balances`): the ledger's
available balance in platform billing (Good while the ledger answers, whatever the meter's
comms), the meter's credit register in meter billing (its status follows the meter's); a
meter without an account shows BadNoData, never a Good 0. Methods (Trip,
Close, OpenValve, CloseValve, SetAlarmThresholds) go through the control core's command path
via the `TwinBackend` the composition root hands in, and return its outcome. Alarm
transitions of the control core are raised as AlarmConditionType events from the Server
object. The threshold variables (PowerLimitW, FlowLimitM3h) are the only writable ones.

Node ids are readable strings: ``ns=2;s=B01-03-02.em`` (a twin), ``ns=2;s=B01-03-02.em/EnergyKWh``
(its variable). asyncua's add-node cost grows with the square of a parent's children, so no
parent gets more than `MAX_CHILDREN`: larger sets go into range folders ("B001..B100"). The
instances are made in batches through the node management service, not one awaited call per
node, and reference their type's method nodes instead of copying them.

Values follow the twin state: every `push_s` the server copies the columns it shows under
the backend's lock, compares them with what it last wrote and writes only the changes with
`Server.write_attribute_value`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from asyncua import Server, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import security_policies

from devices.opcua import security
from twin.model import Kind, Site, TwinSpec
from twin.state import FleetState

log = logging.getLogger("metertwin.opcua")

NAMESPACE = "urn:metertwin:twins"
MAX_CHILDREN = 100
#: Wall seconds between pushes of changed values.
PUSH_S = 0.5
#: Nodes added per batch before the loop gets a turn.
BATCH = 5000
UNECE = "http://www.opcfoundation.org/UA/units/un/cefact"


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """What the command path made of a method call."""

    command_id: str  #: the command's id ("" when refused before one was made)
    state: str  #: confirmed, sent, failed, expired, or refused
    reason: str = ""  #: why it failed or was refused


@dataclass(frozen=True, slots=True)
class AlarmNote:
    """One alarm transition, as the server raises it."""

    id: int  #: the alarm's id in the control core
    kind: str  #: offline, low_balance_1, command_failed, ...
    twin: str | None  #: the twin it is about
    account: str | None  #: the account it is about
    severity: int  #: 1 info .. 4 critical
    state: str  #: raised, acknowledged or cleared
    start: float  #: UTC epoch seconds it was raised
    message: str = ""  #: a readable line


class TwinBackend(Protocol):
    """What the server needs from the platform (the composition root hands it in, so
    devices/ imports nothing of control/)."""

    fleet: FleetState
    site: Site
    interval_s: int

    def lock(self) -> AbstractAsyncContextManager[Any]:
        """Held while the server copies state (the world does not move meanwhile)."""

    def now(self) -> float:
        """Platform time, UTC epoch seconds."""

    async def command(self, twin: str, action: str, user: str) -> CommandOutcome:
        """Submit `action` on `twin` for `user` and wait (bounded) for its outcome."""

    def set_threshold(self, twin: str, name: str, value: float, user: str) -> None:
        """Set an alarm threshold; ValueError says why not."""

    def thresholds(self) -> dict[str, dict[str, float]]:
        """Thresholds set so far: twin -> name -> value."""

    def alarm_changes(self) -> list[AlarmNote]:
        """Alarm transitions since the last call (called under the lock)."""

    def balances(self) -> dict[Kind, Balances]:
        """The BalanceFen of every metered twin, per kind in its table's row order (called
        under the lock, once per push round: one pass over the accounts, not one per node)."""


@dataclass(frozen=True, slots=True)
class Balances:
    """The balances shown on one kind's meters, in the kind's table row order. Example:
    ``Balances(np.array([16300, 0]), np.array([True, False]), from_ledger=True)``."""

    fen: np.ndarray  #: int64, the balance in fen (0.01 yuan) per row
    known: np.ndarray  #: bool per row; False where the twin has no account (the node is Bad)
    from_ledger: bool  #: True in platform billing: the value does not depend on the meter's comms


@dataclass(frozen=True, slots=True)
class Var:
    """One variable of a twin type: its browse name, the state field behind it, its type
    and unit. Example: ``Var("EnergyKWh", "reported", "energy_kwh", ua.VariantType.Double, "kWh")``."""

    name: str  #: browse name
    face: str  #: reported or derived; "account" for the balance (`TwinBackend.balances`); "threshold" for a
    #: writable alarm threshold
    field: str  #: the column in twin.state, or the threshold's name
    vtype: ua.VariantType  #: OPC UA type
    unit: str | None = None  #: engineering unit shown, a key of UNITS
    description: str = ""  #: what it is


#: Unit display name -> UNECE common code.
UNITS = {"kWh": "KWH", "W": "WTT", "V": "VLT", "A": "AMP", "Hz": "HTZ", "m3": "MTQ", "m3/h": "MQH", "fen": "fen"}
_D, _F, _B, _I = ua.VariantType.Double, ua.VariantType.Float, ua.VariantType.Boolean, ua.VariantType.Int64

TYPES: dict[Kind, tuple[str, tuple[Var, ...]]] = {
    Kind.ELECTRIC_METER: ("ElectricMeterType", (
        Var("EnergyKWh", "reported", "energy_kwh", _D, "kWh", "total active energy register"),
        Var("PowerW", "reported", "power_w", _F, "W", "active power"),
        Var("VoltageV", "reported", "voltage_v", _F, "V", "voltage"),
        Var("CurrentA", "reported", "current_a", _F, "A", "current"),
        Var("RelayClosed", "reported", "relay_closed", _B, None, "true when supply is on"),
        Var("BalanceFen", "account", "balance_fen", _I, "fen", "account balance (fen = 0.01 yuan)"),
        Var("PowerLimitW", "threshold", "power_limit_w", _D, "W", "alarm above this power; 0 = off (writable)"),
    )),
    Kind.WATER_METER: ("WaterMeterType", (
        Var("VolumeM3", "reported", "volume_m3", _D, "m3", "total volume register"),
        Var("FlowM3h", "reported", "flow_m3h", _F, "m3/h", "flow"),
        Var("BalanceFen", "account", "balance_fen", _I, "fen", "account balance (fen = 0.01 yuan)"),
        Var("FlowLimitM3h", "threshold", "flow_limit_m3h", _D, "m3/h", "alarm above this flow; 0 = off (writable)"),
    )),
    Kind.VALVE: ("ValveType", (Var("Open", "reported", "open", _B, None, "true when the valve is open"),)),
    Kind.ELEVATOR: ("ElevatorLoadType", (
        Var("EnergyKWh", "reported", "energy_kwh", _D, "kWh", "energy register"),
        Var("PowerW", "reported", "power_w", _F, "W", "power"),
        Var("Trips", "reported", "trips", _I, None, "trips counted"),
    )),
    Kind.SHARED_CIRCUIT: ("SharedCircuitType", (
        Var("EnergyKWh", "reported", "energy_kwh", _D, "kWh", "energy register"),
        Var("PowerW", "reported", "power_w", _F, "W", "power"),
        Var("On", "reported", "on", _B, None, "true while the circuit draws power"),
    )),
}
#: Method browse name -> (twin kind, command action, or "thresholds").
METHODS: dict[str, tuple[Kind, str]] = {
    "Trip": (Kind.ELECTRIC_METER, "relay_open"),
    "Close": (Kind.ELECTRIC_METER, "relay_close"),
    "OpenValve": (Kind.VALVE, "valve_open"),
    "CloseValve": (Kind.VALVE, "valve_close"),
}
THRESHOLD_OF = {kind: next((v for v in vars_ if v.face == "threshold"), None) for kind, (_, vars_) in TYPES.items()}
_SEVERITY = {1: 200, 2: 400, 3: 700, 4: 900}


def chunked(items: list[Any], size: int = MAX_CHILDREN) -> Iterator[list[Any]]:
    """Consecutive slices of at most `size` items."""
    for i in range(0, len(items), size):
        yield items[i:i + size]


@dataclass
class _Column:
    """One variable of one kind across the fleet: its node ids in row order and what was
    last written there."""

    var: Var
    nodeids: list[ua.NodeId]
    last: np.ndarray | None = None
    last_status: np.ndarray | None = None


@dataclass
class _KindNodes:
    kind: Kind
    columns: list[_Column] = field(default_factory=list)


class TwinTreeServer:
    """The OPC UA server of a site. Example::

        server = TwinTreeServer(backend, users, data_dir / "opcua", port=4840)
        await server.start()      # builds the tree, listens, follows the twins
        ...
        await server.stop()
    """

    def __init__(self, backend: TwinBackend, users: security.UserDirectory, cert_dir: str | Path, *,
                 host: str = "127.0.0.1", port: int = 4840, anonymous: bool = False, push_s: float = PUSH_S,
                 certs: security.ServerCerts | None = None) -> None:
        self.backend = backend
        self.host = host
        self.port = port
        self.anonymous = anonymous
        self.push_s = push_s
        self.certs = certs or security.ensure_server_certs(cert_dir, host)
        self.sessions = security.Sessions()
        self.user_manager = security.PlatformUserManager(users, self.sessions, anonymous)
        self.secure_rules = security.PlatformRules(True, self.sessions)
        self.open_rules = security.PlatformRules(False, self.sessions, open_channel_allowed=anonymous)
        self.trust = security.TrustList(self.certs.trusted, self.certs.rejected)
        self.server = _SecuredServer(self)
        self.idx = 0
        self.kinds: dict[Kind, _KindNodes] = {}
        self.node_count = 0
        self.build_seconds = 0.0
        self.pushed = 0  #: values written since start
        self._task: asyncio.Task[None] | None = None
        self._alarm_events: Any = None
        self._threshold_nodes: dict[tuple[str, str], ua.NodeId] = {}
        self._type_methods: dict[Kind, list[ua.NodeId]] = {}
        self._thresholds: dict[str, dict[str, float]] = {}
        self._internal_write = False
        self.endpoint = f"opc.tcp://{host}:{port}"

    # -- building -------------------------------------------------------------------------

    async def start(self) -> None:
        """Build the address space, open the endpoint, start following the twins."""
        started = time.perf_counter()
        logging.getLogger("asyncua").setLevel(max(logging.WARNING, logging.getLogger("asyncua").level))
        # it logs every refused request as an ERROR; our rules log them, plainly, as warnings
        logging.getLogger("asyncua.server.uaprocessor").addFilter(_drop_refusals)
        server = self.server
        await server.init()
        server.set_endpoint(f"opc.tcp://{self.host}:{self.port}/")
        server.set_server_name("MeterTwin")
        await server.set_application_uri(security.SERVER_URI)
        server.allow_remote_admin(False)
        await server.load_certificate(str(self.certs.cert))
        await server.load_private_key(str(self.certs.key))
        policies = [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
        tokens: list[type] = [ua.UserNameIdentityToken]
        if self.anonymous:
            policies.append(ua.SecurityPolicyType.NoSecurity)
            tokens.append(ua.AnonymousIdentityToken)
        server.set_security_policy(policies)
        server.set_identity_tokens(tokens)
        server.set_certificate_validator(self.trust)
        iserver = server.iserver
        iserver.max_subscriptions = security.MAX_SUBSCRIPTIONS
        iserver.max_connections = security.MAX_SESSIONS
        iserver.max_monitored_item_queue_size = 100_000
        self.sessions.iserver = iserver
        self.idx = await server.register_namespace(NAMESPACE)
        collecting = gc.isenabled()
        gc.disable()  # millions of long-lived objects: collections during the build cost more than the build
        try:
            await self._build()
        finally:
            if collecting:
                gc.enable()
        gc.collect()  # what the build left behind, once,
        gc.freeze()  # then the tree (it lives as long as the server) stays out of every later collection
        await self._push()  # every variable holds the live value before anyone connects
        await server.start()
        self.port = server.bserver.port if server.bserver is not None and server.bserver.port else self.port
        self.endpoint = f"opc.tcp://{self.host}:{self.port}"
        self.build_seconds = time.perf_counter() - started
        self._task = asyncio.create_task(self._follow(), name="opcua-follow")
        log.info("OPC UA server at %s: %d nodes in %.1fs (%s)", self.endpoint, self.node_count, self.build_seconds,
                 "SignAndEncrypt" + (" + anonymous None" if self.anonymous else ""))

    async def stop(self) -> None:
        """Stop following and close the endpoint."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.server.stop()

    def _nid(self, name: str) -> ua.NodeId:
        return ua.NodeId(ua.String(name), ua.Int16(self.idx))

    async def _build(self) -> None:
        site = self.backend.site
        objects = self.server.nodes.objects
        types = await self._build_types()
        units = await self._build_units()
        self._alarm_events = await self.server.get_event_generator(ua.ObjectIds.AlarmConditionType,
                                                                   ua.ObjectIds.Server)
        items: list[_NewNode] = []
        refs: list[tuple[ua.NodeId, int, ua.NodeId]] = []
        by_id = {t.id: t for t in site.twins}
        site_id = self._nid(site.id)
        items.append(self._object(site_id, site.id, site.name or site.id, objects.nodeid, ua.ObjectIds.FolderType,
                                  organizes=True))
        buildings: list[tuple[str, str, Callable[[ua.NodeId], None]]] = []
        for building in site.buildings:
            def fill(parent: ua.NodeId, b: Any = building) -> None:
                self._building(b, parent, by_id, types, items)
            buildings.append((building.id, building.name or building.id, fill))
        self._grouped(site_id, site.id, buildings, items)
        rows: dict[Kind, dict[str, int]] = {kind: t.row_of for kind, t in self.backend.fleet.tables.items()}
        self.kinds = {kind: _KindNodes(kind, [_Column(v, [_std(0)] * len(rows[kind])) for v in TYPES[kind][1]])
                      for kind in Kind}
        self._thresholds = self.backend.thresholds()
        for twin in site.twins:
            self._twin_vars(twin, rows[twin.kind][twin.id], units, types, items, refs)
        factory = _NodeFactory(self.server.iserver.aspace)
        for start in range(0, len(items), BATCH):
            factory.add(items[start:start + BATCH])
            await asyncio.sleep(0)
        factory.link(refs)
        self.node_count = len(items)
        for (twin_id, name), nodeid in self._threshold_nodes.items():
            self.server.set_attribute_value_setter(nodeid, self._threshold_setter(twin_id, name))

    def _grouped(self, parent: ua.NodeId, path: str, children: list[tuple[str, str, Callable[[ua.NodeId], None]]],
                 items: list[_NewNode]) -> None:
        """Children (id, display name, filler) under `parent`, in range folders when more
        than MAX_CHILDREN: each filler adds its own node under the parent it is given."""
        if len(children) <= MAX_CHILDREN:
            for _, _, fill in children:
                fill(parent)
            return
        for group in chunked(children, MAX_CHILDREN):
            name = f"{group[0][0]}..{group[-1][0]}"
            folder = self._nid(f"{path}/{name}")
            items.append(self._object(folder, name, name, parent, ua.ObjectIds.FolderType, organizes=True))
            self._grouped(folder, f"{path}/{name}", group, items)

    def _building(self, building: Any, parent: ua.NodeId, by_id: dict[str, TwinSpec], types: dict[Kind, ua.NodeId],
                  items: list[_NewNode]) -> None:
        bid = self._nid(building.id)
        items.append(self._object(bid, building.id, building.name or building.id, parent, ua.ObjectIds.FolderType,
                                  organizes=True))
        twins = [(t, t, self._twin_filler(by_id[t], types, items)) for t in building.twins]
        floors_id = self._nid(f"{building.id}/Floors")
        floors: list[tuple[str, str, Callable[[ua.NodeId], None]]] = []
        for floor in building.floors:
            def fill_floor(p: ua.NodeId, f: Any = floor) -> None:
                fid = self._nid(f"{building.id}/F{f.number:02d}")
                items.append(self._object(fid, f"F{f.number:02d}", f"Floor {f.number}", p, ua.ObjectIds.FolderType,
                                          organizes=True))
                rooms = [(r.id, r.id, self._room_filler(r, by_id, types, items)) for r in f.rooms]
                self._grouped(fid, f"{building.id}/F{f.number:02d}", rooms, items)
            floors.append((f"F{floor.number:02d}", f"Floor {floor.number}", fill_floor))
        children = twins
        if floors:
            children = [*twins, ("Floors", "Floors", lambda p: items.append(
                self._object(floors_id, "Floors", "Floors", p, ua.ObjectIds.FolderType, organizes=True)))]
        self._grouped(bid, building.id, children, items)
        if floors:
            self._grouped(floors_id, f"{building.id}/Floors", floors, items)

    def _room_filler(self, room: Any, by_id: dict[str, TwinSpec], types: dict[Kind, ua.NodeId],
                     items: list[_NewNode]) -> Callable[[ua.NodeId], None]:
        def fill(parent: ua.NodeId) -> None:
            rid = self._nid(room.id)
            items.append(self._object(rid, room.id, f"{room.id} ({room.use}, {room.area_m2:g} m2)", parent,
                                      ua.ObjectIds.FolderType, organizes=True))
            for twin_id in room.twins:
                self._twin_filler(by_id[twin_id], types, items)(rid)
        return fill

    def _twin_filler(self, twin: TwinSpec, types: dict[Kind, ua.NodeId],
                     items: list[_NewNode]) -> Callable[[ua.NodeId], None]:
        def fill(parent: ua.NodeId) -> None:
            items.append(self._object(self._nid(twin.id), twin.id, twin.id, parent, types[twin.kind], organizes=True))
        return fill

    def _twin_vars(self, twin: TwinSpec, row: int, units: dict[str, ua.NodeId], types: dict[Kind, ua.NodeId],
                   items: list[_NewNode], refs: list[tuple[ua.NodeId, int, ua.NodeId]]) -> None:
        tid = self._nid(twin.id)
        thresholds = self._thresholds.get(twin.id, {})
        for column in self.kinds[twin.kind].columns:
            var = column.var
            nodeid = self._nid(f"{twin.id}/{var.name}")
            column.nodeids[row] = nodeid
            writable = var.face == "threshold"
            initial = float(thresholds.get(var.field, 0.0)) if writable else None
            items.append(self._variable(nodeid, var, tid, initial, writable))
            if var.unit is not None:
                refs.append((nodeid, ua.ObjectIds.HasProperty, units[var.unit]))
            if writable:
                self._threshold_nodes[(twin.id, var.field)] = nodeid
        for method_id in self._type_methods.get(twin.kind, []):
            refs.append((tid, ua.ObjectIds.HasComponent, method_id))

    def _object(self, nodeid: ua.NodeId, name: str, display: str, parent: ua.NodeId, type_id: Any,
                organizes: bool = False) -> _NewNode:
        return _NewNode(nodeid, ua.NodeClass.Object, ua.QualifiedName(name, self.idx), display, display, parent,
                        ua.ObjectIds.Organizes if organizes else ua.ObjectIds.HasComponent,
                        type_id if isinstance(type_id, ua.NodeId) else _std(type_id))

    def _variable(self, nodeid: ua.NodeId, var: Var, parent: ua.NodeId, initial: float | None,
                  writable: bool) -> _NewNode:
        access = ua.AccessLevel.CurrentRead.mask | (ua.AccessLevel.CurrentWrite.mask if writable else 0)
        value = ua.Variant(initial, var.vtype) if initial is not None else None
        return _NewNode(nodeid, ua.NodeClass.Variable, ua.QualifiedName(var.name, self.idx), var.name,
                        f"{var.description} [{var.unit}]" if var.unit else var.description, parent,
                        ua.ObjectIds.HasComponent, _std(ua.ObjectIds.BaseDataVariableType), var, access, value)

    async def _build_types(self) -> dict[Kind, ua.NodeId]:
        """Our ObjectTypes, their instance declarations and their methods (few nodes: the
        high-level API is fine here)."""
        base = self.server.nodes.base_object_type
        types: dict[Kind, ua.NodeId] = {}
        out_args = [_arg("CommandId", ua.ObjectIds.String), _arg("State", ua.ObjectIds.String),
                    _arg("Reason", ua.ObjectIds.String)]
        for kind, (type_name, variables) in TYPES.items():
            type_node = await base.add_object_type(self._nid(type_name), ua.QualifiedName(type_name, self.idx))
            for var in variables:
                node = await type_node.add_variable(
                    self._nid(f"{type_name}/{var.name}"), ua.QualifiedName(var.name, self.idx),
                    ua.Variant(_ZERO[var.vtype], var.vtype), datatype=_std(_DATATYPE[var.vtype]))
                await node.set_modelling_rule(True)
            methods = []
            for name, (method_kind, action) in METHODS.items():
                if method_kind is kind:
                    node = await type_node.add_method(self._nid(f"{type_name}/{name}"),
                                                      ua.QualifiedName(name, self.idx),
                                                      self._command_method(kind, action), [], out_args)
                    methods.append(node.nodeid)
            threshold = THRESHOLD_OF[kind]
            if threshold is not None:
                node = await type_node.add_method(self._nid(f"{type_name}/SetAlarmThresholds"),
                                                  ua.QualifiedName("SetAlarmThresholds", self.idx),
                                                  self._threshold_method(kind),
                                                  [_arg(threshold.name, ua.ObjectIds.Double)], [])
                methods.append(node.nodeid)
            self._type_methods[kind] = methods
            types[kind] = type_node.nodeid
        return types

    async def _build_units(self) -> dict[str, ua.NodeId]:
        """One EngineeringUnits property per unit, shared by every variable in that unit."""
        folder = await self.server.nodes.objects.add_folder(self._nid("EngineeringUnits"),
                                                             ua.QualifiedName("EngineeringUnits", self.idx))
        out = {}
        for unit, code in UNITS.items():
            unit_id = -1 if len(code) != 3 or not code.isupper() else \
                (ord(code[0]) << 16) | (ord(code[1]) << 8) | ord(code[2])
            info = ua.EUInformation(NamespaceUri=UNECE, UnitId=unit_id, DisplayName=ua.LocalizedText(unit),
                                    Description=ua.LocalizedText(unit))
            holder = await folder.add_object(self._nid(f"EngineeringUnits/{unit}"), ua.QualifiedName(unit, self.idx))
            node = await holder.add_property(self._nid(f"EngineeringUnits/{unit}/EngineeringUnits"),
                                             ua.QualifiedName("EngineeringUnits", 0), ua.Variant(info))
            out[unit] = node.nodeid
        return out

    # -- methods and writes -----------------------------------------------------------------

    def _caller(self) -> security.PlatformUser:
        user = security.current_user.get()
        if user is None or user.anonymous or user.access < security.Access.OPERATE:
            raise ServiceError(ua.StatusCodes.BadUserAccessDenied)  # the rules refuse this first
        return user

    def _twin_of(self, object_id: ua.NodeId, kind: Kind) -> str:
        twin = str(object_id.Identifier)
        try:
            found, _ = self.backend.fleet.locate(twin)
        except KeyError:
            raise ServiceError(ua.StatusCodes.BadNodeIdUnknown) from None
        if found is not kind or object_id.NamespaceIndex != self.idx:
            raise ServiceError(ua.StatusCodes.BadMethodInvalid)
        return twin

    def _command_method(self, kind: Kind, action: str) -> Callable[..., Any]:
        async def call(parent: ua.NodeId, *args: Any) -> list[ua.Variant]:
            user = self._caller()
            twin = self._twin_of(parent, kind)
            outcome = await self.backend.command(twin, action, str(user.name))
            log.info("OPC UA %s on %s by %s: %s %s", action, twin, user.name, outcome.state, outcome.reason)
            return [ua.Variant(outcome.command_id, ua.VariantType.String),
                    ua.Variant(outcome.state, ua.VariantType.String), ua.Variant(outcome.reason, ua.VariantType.String)]
        return call

    def _threshold_method(self, kind: Kind) -> Callable[..., Any]:
        var = THRESHOLD_OF[kind]
        assert var is not None

        async def call(parent: ua.NodeId, value: Any = None) -> ua.StatusCode:
            user = self._caller()
            twin = self._twin_of(parent, kind)
            number = _number(value)
            self._apply_threshold(twin, var.field, number, str(user.name))
            self._internal_write = True
            try:
                await self.server.write_attribute_value(
                    self._threshold_nodes[(twin, var.field)], ua.DataValue(ua.Variant(number, ua.VariantType.Double)))
            finally:
                self._internal_write = False
            return ua.StatusCode()
        return call

    def _apply_threshold(self, twin: str, name: str, value: float, user: str) -> None:
        try:
            self.backend.set_threshold(twin, name, value, user)
        except ValueError as err:
            log.warning("OPC UA threshold %s of %s refused: %s", name, twin, err)
            raise ServiceError(ua.StatusCodes.BadOutOfRange) from None

    def _threshold_setter(self, twin: str, name: str) -> Callable[[Any, ua.AttributeIds, ua.DataValue], None]:
        def setter(node: Any, attr: ua.AttributeIds, datavalue: ua.DataValue) -> None:
            if not self._internal_write:  # a client's write: through the backend first
                user = self._caller()
                value = datavalue.Value.Value if datavalue.Value is not None else None
                self._apply_threshold(twin, name, _number(value), str(user.name))
            node.attributes[attr].value = datavalue
        return setter

    # -- following the twins ------------------------------------------------------------------

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.push_s)
            try:
                await self._push()
            except Exception:  # a bad push is logged; the next one writes what is still different
                log.exception("OPC UA push failed")

    async def _push(self) -> int:
        """Write every changed value (and status) to its node; returns how many."""
        fleet = self.backend.fleet
        async with self.backend.lock():
            now = self.backend.now()
            snapshot = {}
            for kind, nodes in self.kinds.items():
                table = fleet.tables[kind]
                if not len(table):
                    continue
                cols = [table.faces[c.var.face][c.var.field].copy() for c in nodes.columns if _follows_state(c.var)]
                snapshot[kind] = (cols, table.faces["reported"]["online"].copy(), table.stamps["reported"].copy())
            balances = self._balances()
            alarms = self.backend.alarm_changes()
        written = 0
        stale_before = now - 2 * self.backend.interval_s
        for kind, (cols, online, stamps) in snapshot.items():
            status = np.where(online == 0, ua.StatusCodes.BadNoCommunication,
                              np.where(stamps == 0, ua.StatusCodes.BadWaitingForInitialData,
                                       np.where(stamps < stale_before, ua.StatusCodes.BadDataUnavailable,
                                                ua.StatusCodes.Good))).astype(np.int64)
            columns = [c for c in self.kinds[kind].columns if _follows_state(c.var)]
            for column, values in zip(columns, cols, strict=True):
                written += await self._write_column(column, values, status, stamps)
            for column in (c for c in self.kinds[kind].columns if c.var.face == "account"):
                written += await self._write_column(column, *_balance_column(balances.get(kind), status, stamps, now))
        for note in alarms:
            await self._raise(note)
        self.pushed += written
        return written

    def _balances(self) -> dict[Kind, Balances]:
        """The backend's balances (under the lock); none from a backend that keeps none."""
        balances = getattr(self.backend, "balances", None)
        return balances() if balances is not None else {}

    async def _write_column(self, column: _Column, values: np.ndarray, status: np.ndarray,
                            stamps: np.ndarray) -> int:
        if column.last is None or column.last_status is None:
            changed = np.arange(len(values))
        else:
            same = (values == column.last) | (np.isnan(values) & np.isnan(column.last)) \
                if values.dtype.kind == "f" else values == column.last
            changed = np.flatnonzero(~same | (status != column.last_status))
        if not len(changed):
            return 0
        vtype = column.var.vtype
        write = self.server.iserver.aspace.write_attribute_value
        nodeids = column.nodeids
        value_attr = ua.AttributeIds.Value
        as_python = values[changed].tolist()
        if vtype is ua.VariantType.Boolean:
            as_python = [bool(v) for v in as_python]
        times: dict[int, Any] = {0: None}  # many rows share a reading time: one datetime each
        good = ua.StatusCode()
        for row, value, code, stamp in zip(changed.tolist(), as_python, status[changed].tolist(),
                                           stamps[changed].tolist(), strict=True):
            source = times.get(stamp)
            if source is None and stamp:
                source = times[stamp] = datetime.fromtimestamp(stamp, UTC)
            if code == ua.StatusCodes.Good and value == value:  # NaN: no reading of that quantity
                # the source timestamp only: both ends encode each datetime in Python, per notification
                dv = ua.DataValue(ua.Variant(value, vtype), StatusCode=good, SourceTimestamp=source)
            else:
                bad = code if code != ua.StatusCodes.Good else ua.StatusCodes.BadWaitingForInitialData
                dv = ua.DataValue(ua.Variant(None, ua.VariantType.Null), StatusCode=_status(bad),
                                  SourceTimestamp=source)
            await write(nodeids[row], value_attr, dv)
        column.last = values
        column.last_status = status
        return len(changed)

    async def _raise(self, note: AlarmNote) -> None:
        events = self._alarm_events
        if events is None:
            return
        event = events.event
        subject = note.twin or f"account {note.account}"
        event.SourceNode = _std(ua.ObjectIds.Server)
        if note.twin:
            with contextlib.suppress(KeyError):
                self.backend.fleet.locate(note.twin)
                event.SourceNode = self._nid(note.twin)
        event.SourceName = subject
        event.ConditionName = note.kind
        event.Severity = _SEVERITY.get(note.severity, 500)
        active = note.state != "cleared"
        acked = note.state == "acknowledged"
        event.Retain = active
        event.ActiveState = ua.LocalizedText("Active" if active else "Inactive")
        setattr(event, "ActiveState/Id", active)
        event.AckedState = ua.LocalizedText("Acknowledged" if acked else "Unacknowledged")
        setattr(event, "AckedState/Id", acked)
        setattr(event, "EnabledState/Id", True)
        event.EnabledState = ua.LocalizedText("Enabled")
        event.NodeId = self._nid(f"alarm/{note.id}")
        await events.trigger(message=note.message or f"{note.kind} {note.state} on {subject}")


_HAS_TYPE = ua.NodeId(ua.Int32(ua.ObjectIds.HasTypeDefinition))
_ZERO: dict[ua.VariantType, Any] = {ua.VariantType.Double: 0.0, ua.VariantType.Float: 0.0,
                                   ua.VariantType.Boolean: False, ua.VariantType.Int64: 0}
_DATATYPE = {ua.VariantType.Double: ua.ObjectIds.Double, ua.VariantType.Float: ua.ObjectIds.Float,
             ua.VariantType.Boolean: ua.ObjectIds.Boolean, ua.VariantType.Int64: ua.ObjectIds.Int64}


def _drop_refusals(record: logging.LogRecord) -> bool:
    """asyncua's service-fault line for a request our rules refused (they log it)."""
    return "BadUserAccessDenied" not in record.getMessage()


@functools.cache
def _follows_state(var: Var) -> bool:
    """True for a variable copied from the twin state (not a threshold, not the balance)."""
    return var.face not in ("threshold", "account")


def _balance_column(balances: Balances | None, status: np.ndarray, stamps: np.ndarray,
                    now: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, status, source times) of one kind's BalanceFen column. A ledger balance is
    Good (stamped now) whatever the meter's comms; a meter's credit register carries the
    meter's status and time; a row without an account, or no balances at all, is BadNoData."""
    no_data = np.int64(ua.StatusCodes.BadNoData)
    if balances is None or len(balances.fen) != len(status):
        return np.zeros(len(status), dtype=np.int64), np.full(len(status), no_data), stamps
    if balances.from_ledger:
        status, stamps = np.full(len(status), ua.StatusCodes.Good, dtype=np.int64), np.full_like(stamps, int(now))
    return (np.asarray(balances.fen, dtype=np.int64), np.where(balances.known, status, no_data).astype(np.int64),
            stamps)


def _status(code: int) -> ua.StatusCode:
    """One StatusCode object per code (they are never changed)."""
    return ua.StatusCode(ua.UInt32(code))


@functools.cache
def _std(identifier: int) -> ua.NodeId:
    """A node id of namespace 0 (asyncua's type aliases want their own int types)."""
    return ua.NodeId(ua.Int32(identifier))


def _arg(name: str, datatype: int) -> ua.Argument:
    return ua.Argument(Name=name, DataType=_std(datatype), ValueRank=-1, Description=ua.LocalizedText(name))


def _number(value: Any) -> float:
    if isinstance(value, ua.Variant):
        value = value.Value
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ServiceError(ua.StatusCodes.BadTypeMismatch)
    return float(value)


@dataclass(slots=True)
class _NewNode:
    """A node to add: what `_NodeFactory` needs, nothing more."""

    nodeid: ua.NodeId
    nodeclass: ua.NodeClass
    browse: ua.QualifiedName
    display: str
    description: str
    parent: ua.NodeId
    reftype: int  #: reference from the parent: Organizes or HasComponent
    typedef: ua.NodeId
    var: Var | None = None  #: for a variable: what it shows
    access: int = 0  #: for a variable: its access level
    value: ua.Variant | None = None  #: for a variable: its first value (None: Null until the first push)


class _NodeFactory:
    """Adds instance nodes straight into asyncua's address space (asyncua 2.1's NodeData,
    AttributeValue and ReferenceDescription), as its node management service would, but
    sharing what is the same for many nodes: constant attribute values, the reference back to
    a parent, the type definition, a unit. The service builds some twenty DataValues and
    looks up every target per node: 0.25 ms a node, a minute for the district."""

    def __init__(self, aspace: Any) -> None:
        from asyncua.server.address_space import AttributeValue, NodeData

        self.aspace = aspace
        self.attribute_value = AttributeValue
        self.node_data = NodeData
        self._constants: dict[tuple[Any, ...], ua.DataValue] = {}
        self._refs: dict[tuple[Any, ...], ua.ReferenceDescription] = {}
        self._templates: dict[tuple[Any, ...], dict[Any, Any]] = {}

    def _constant(self, value: Any, vtype: ua.VariantType) -> ua.DataValue:
        if isinstance(value, ua.LocalizedText):
            key: tuple[Any, ...] = (vtype, value.Text)
        elif isinstance(value, ua.QualifiedName):
            key = (vtype, value.NamespaceIndex, value.Name)
        else:
            key = (vtype, value.to_string() if isinstance(value, ua.NodeId) else value)
        found = self._constants.get(key)
        if found is None:
            found = self._constants[key] = ua.DataValue(ua.Variant(value, vtype))
        return found

    def _ref_to(self, reftype: int, target: ua.NodeId, forward: bool) -> ua.ReferenceDescription:
        """A reference to an existing node (shared by every node that has it)."""
        key = (reftype, target.NamespaceIndex, target.Identifier, forward)
        found = self._refs.get(key)
        if found is None:
            data = self.aspace[target]
            attrs = data.attributes
            typedef = next((r.NodeId for r in data.references if r.IsForward and r.ReferenceTypeId == _HAS_TYPE),
                           ua.NodeId())
            found = self._refs[key] = ua.ReferenceDescription(
                ReferenceTypeId=_std(reftype), IsForward=forward, NodeId=target,
                BrowseName=attrs[ua.AttributeIds.BrowseName].value.Value.Value,
                DisplayName=attrs[ua.AttributeIds.DisplayName].value.Value.Value,
                NodeClass=ua.NodeClass(attrs[ua.AttributeIds.NodeClass].value.Value.Value), TypeDefinition=typedef)
        return found

    def _waiting(self, vtype: ua.VariantType) -> ua.DataValue:
        """The value before the first push: typed (so the first write skips asyncua's
        data-type lookup) and BadWaitingForInitialData."""
        found = self._constants.get(("waiting", vtype))
        if found is None:
            waiting = ua.StatusCode(ua.UInt32(ua.StatusCodes.BadWaitingForInitialData))
            found = self._constants[("waiting", vtype)] = ua.DataValue(ua.Variant(_ZERO[vtype], vtype),
                                                                       StatusCode=waiting)
        return found

    def _template(self, item: _NewNode) -> dict[Any, Any]:
        """The attributes that are the same for every node like `item` (shared, never written:
        write masks are 0 and our rules refuse attribute writes)."""
        A, T = ua.AttributeIds, ua.VariantType
        var = item.var
        key = ("object",) if var is None else ("variable", var.name, item.browse.NamespaceIndex, item.access,
                                              item.description)
        found = self._templates.get(key)
        if found is not None:
            return found
        shared = {A.NodeClass: self._constant(int(item.nodeclass), T.Int32), A.WriteMask: self._constant(0, T.UInt32),
                  A.UserWriteMask: self._constant(0, T.UInt32)}
        if var is None:
            shared[A.EventNotifier] = self._constant(0, T.Byte)
        else:
            shared.update({
                A.BrowseName: self._constant(item.browse, T.QualifiedName),
                A.DisplayName: self._constant(ua.LocalizedText(item.display), T.LocalizedText),
                A.Description: self._constant(ua.LocalizedText(item.description), T.LocalizedText),
                A.DataType: self._constant(_std(_DATATYPE[var.vtype]), T.NodeId),
                A.ValueRank: self._constant(int(ua.ValueRank.Scalar), T.Int32),
                A.AccessLevel: self._constant(item.access, T.Byte),
                A.UserAccessLevel: self._constant(item.access, T.Byte),
                A.MinimumSamplingInterval: self._constant(0.0, T.Double),
                A.Historizing: self._constant(False, T.Boolean),
            })
        found = self._templates[key] = {attr: self.attribute_value(dv) for attr, dv in shared.items()}
        return found

    def add(self, items: list[_NewNode]) -> None:
        """Add nodes, parents before children."""
        A, T = ua.AttributeIds, ua.VariantType
        value_of = self.attribute_value
        aspace = self.aspace
        last_parent: Any = None
        parent: Any = None
        inverse: Any = None
        for item in items:
            if item.parent is not last_parent:  # siblings come together: look the parent up once
                last_parent = item.parent
                parent = aspace[item.parent]
                inverse = self._ref_to(item.reftype, item.parent, False)
            data = self.node_data(item.nodeid)
            attributes = dict(self._template(item))
            attributes[A.NodeId] = value_of(ua.DataValue(ua.Variant(item.nodeid, T.NodeId)))
            if item.var is not None:
                attributes[A.Value] = value_of(ua.DataValue(item.value) if item.value is not None else
                                               self._waiting(item.var.vtype))
                display = attributes[A.DisplayName].value.Value.Value
            else:
                display = ua.LocalizedText(item.display)
                attributes[A.BrowseName] = value_of(ua.DataValue(ua.Variant(item.browse, T.QualifiedName)))
                attributes[A.DisplayName] = value_of(ua.DataValue(ua.Variant(display, T.LocalizedText)))
                attributes[A.Description] = value_of(ua.DataValue(ua.Variant(ua.LocalizedText(item.description),
                                                                             T.LocalizedText)))
            data.attributes = attributes
            data.references = [inverse, self._ref_to(ua.ObjectIds.HasTypeDefinition, item.typedef, True)]
            aspace[item.nodeid] = data
            parent.references.append(ua.ReferenceDescription(
                ReferenceTypeId=_std(item.reftype), IsForward=True, NodeId=item.nodeid, BrowseName=item.browse,
                DisplayName=display, NodeClass=item.nodeclass, TypeDefinition=item.typedef))

    def link(self, refs: list[tuple[ua.NodeId, int, ua.NodeId]]) -> None:
        """Forward references from new nodes to existing ones (units, type methods)."""
        for source, reftype, target in refs:
            self.aspace[source].references.append(self._ref_to(reftype, target, True))


class _SecuredServer(Server):
    """asyncua's Server with our permission rules on every channel, including the
    unadvertised None channel asyncua falls back to (which would carry no rules at all)."""

    def __init__(self, owner: TwinTreeServer) -> None:
        super().__init__(user_manager=owner.user_manager)  # type: ignore[arg-type]
        self.owner = owner

    async def _setup_server_nodes(self) -> None:
        await super()._setup_server_nodes()
        has_none = False
        for factory in self._policies:
            secure = factory.mode == ua.MessageSecurityMode.SignAndEncrypt
            factory.permission_ruleset = self.owner.secure_rules if secure else self.owner.open_rules
            has_none = has_none or factory.cls is security_policies.SecurityPolicyNone
        if not has_none:  # no None endpoint advertised: a None channel still gets rules (deny all)
            self._policies.append(security_policies.SecurityPolicyFactory(
                security_policies.SecurityPolicyNone, ua.MessageSecurityMode.None_,
                permission_ruleset=self.owner.open_rules))
