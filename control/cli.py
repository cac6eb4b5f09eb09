"""The `metertwin` console script: one entry point, one subcommand per job.

This is the composition root: the only module that wires twin, devices, scenarios and
control together for a user. Results go to stdout, progress and logs to stderr. Errors a
user can fix print one line naming what was wrong and where, and exit with status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from datetime import datetime
from typing import NoReturn, TextIO

EXAMPLES = {
    "simulate": """\
examples:
  metertwin simulate scenarios/demo-community.toml --days 7
  metertwin simulate scenarios/loadtest-100k.toml --days 30 --seed 3 --out /tmp/lt
  metertwin simulate scenarios/mall.toml --days 2 --step 5min --start 2026-07-01

Writes DIR/topology.json, DIR/intervals/YYYY-MM.f32 (the history, see
docs/history-format.md), DIR/ground_truth.csv (every fault and theft injected),
DIR/events.csv and DIR/summary.json, then prints the summary: twins, speed, energy
and water per building, master-meter balance, and the load-shape figures.""",
}

EXAMPLES["run"] = """\
examples:
  metertwin run                                   # the demo community at 60x, http://127.0.0.1:8050
  metertwin run scenarios/district-10k.toml --speed 120 --data /srv/mt --port 8060
  metertwin run --start 2026-07-01                # a summer day, from midnight
  metertwin run --opcua-port 4841 --opcua-anonymous   # OPC UA elsewhere, plus a read-only anonymous endpoint
  metertwin run --no-modbus                       # twins fed straight from the world, no Modbus hop
  metertwin emulate scenarios/demo-community.toml --modbus-port 5020 &     # the hardware, apart
  metertwin run --gateways 127.0.0.1:5020,127.0.0.1:5021,...   # ...polled by the platform

Once up it prints where everything is: the dashboard at http://127.0.0.1:PORT/ (overview,
room grid, twins with their control buttons, alarms, reports, tasks, simulation; sign in
with a user of this platform), the API docs at /api/docs, the health page at /health, the
OPC UA server (opc.tcp://127.0.0.1:4840, Basic256Sha256 SignAndEncrypt, docs/opcua.md) and
the Modbus gateways with their unit ids (register maps: devices/modbus/maps/).

Where the twins' readings come from: the world's emulated gateways on free loopback ports
(polled over Modbus TCP), or a separate emulate's (--gateways); [[modbus]] tables in the
scenario point twins at real Modbus hardware, and [[opcua]] tables keep twins in sync from
an external OPC UA server by subscription (docs/opcua.md, "Twins from OPC UA devices").

On first start it makes an admin user and an admin API key, prints both once and writes
them to DATA/admin.password and DATA/admin.key (owner-only); add more users with
`metertwin users add`. A restart with the same --data resumes the world where it stopped,
with history, commands and alarms intact. Ctrl-C or SIGTERM stops it cleanly."""
EXAMPLES["keys"] = """\
examples:
  metertwin keys create --role viewer --name scada     # prints the key once
  metertwin keys list
  metertwin keys revoke 1a2b3c4d
  curl -H "Authorization: Bearer $(cat data/admin.key)" http://127.0.0.1:8050/api/health

Roles: viewer reads; operator also sends commands, tops up and acknowledges alarms;
admin also manages keys and users. The platform's --data directory must exist
(start `metertwin run` once); a running platform sees new keys at once."""
EXAMPLES["users"] = """\
examples:
  metertwin users add alice --role operator           # asks for the password
  echo 'a long passphrase' | metertwin users add bob --role viewer --password-stdin
  metertwin users list

Users sign in to the dashboard, the API (HTTP Basic) and the OPC UA server. Roles: viewer
reads; operator also sends commands, tops up and acknowledges alarms; admin also manages
keys and users."""

EXAMPLES["bill"] = """\
examples:
  metertwin simulate scenarios/demo-community.toml --days 31 --out out/jan
  metertwin bill scenarios/demo-community.toml out/jan --month 2026-01 > jan.csv
  metertwin bill scenarios/mall.toml out/mall --tariff commercial-tou   # what if every shop were on it?

Prints CSV on stdout: per account and utility the units, the charge, units and charges
by band (band1.. in the tariff's order) and tier surcharges by tier; totals last.
Band parts plus tier surcharges make the charge. It never touches the ledger."""

#: Subcommands that live in their own module: each has `add_parser(commands)`, which adds its
#: parser and sets `handler=function(args) -> exit status` with `set_defaults`.
SUBCOMMAND_MODULES = ["control.emulate", "control.export", "control.evaluate"]

_DURATION = re.compile(r"^\s*(\d+)\s*(s|sec|min|m|h)?\s*$")


def parse_step(text: str) -> int:
    """'1min', '60s', '5min', '1h' -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a step: use for example 1min, 30s, 5min")
    value, unit = int(match.group(1)), match.group(2) or "s"
    seconds = value * {"s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}[unit]
    if seconds <= 0 or 86400 % seconds:
        raise argparse.ArgumentTypeError(f"step {text!r} must be positive and divide a day")
    return seconds


def parse_start(text: str) -> datetime:
    """'2026-01-01' or '2026-01-01T06:00' (site-local time)."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date: use 2026-01-01 or 2026-01-01T06:00 (site-local)") from None


def parse_days(text: str) -> float:
    """A positive number of days (fractions allowed)."""
    try:
        days = float(text)
    except ValueError:
        days = -1.0
    if not days > 0:
        raise argparse.ArgumentTypeError(f"--days takes a positive number, not {text!r}")
    return days


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line naming the fix (exit status 2);
    subcommand parsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        """Print `PROG: error: MESSAGE (see PROG --help)` on stderr and exit with 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _wrap_descriptions(parser: argparse.ArgumentParser, width: int = 88) -> None:
    """Fill every one-paragraph description to `width` columns (the raw formatter, which
    keeps the examples' layout, would print it as one long line)."""
    for action in parser._actions:  # noqa: SLF001 (argparse has no public walk of its subparsers)
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub in action.choices.values():
                if sub.description and "\n" not in sub.description:
                    sub.description = textwrap.fill(sub.description, width)
                _wrap_descriptions(sub, width)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = CommandParser(
        prog="metertwin",
        description="MeterTwin: digital twins, simulation and control for prepaid "
                    "electricity and water. Each command has its own --help with examples.",
        epilog="example: metertwin simulate scenarios/demo-community.toml --days 7",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    sim = commands.add_parser(
        "simulate", help="run a scenario headless, faster than real time, and write its history",
        description="Run a scenario's simulated world headless and faster than real time; "
                    "write its interval history and ground truth to a directory and print a summary.",
        epilog=EXAMPLES["simulate"], formatter_class=argparse.RawDescriptionHelpFormatter)
    sim.add_argument("scenario", metavar="SCENARIO", help="scenario TOML file")
    sim.add_argument("--days", type=parse_days, default=None,
                     help="days to simulate (default: the scenario's `days`, else 1)")
    sim.add_argument("--seed", type=int, default=0, help="random seed; same seed, same world (default 0)")
    sim.add_argument("--step", type=parse_step, default=60, metavar="STEP",
                     help="simulation step, dividing the interval: 1min (default), 5min, 30s")
    sim.add_argument("--start", type=parse_start, default=None,
                     help="site-local start (default: the scenario's `start`, else 2026-01-01)")
    sim.add_argument("--out", default=None, metavar="DIR",
                     help="output directory (default out/<scenario name>)")
    sim.add_argument("--force", action="store_true", help="replace DIR if it holds an earlier run")
    sim.add_argument("--quiet", action="store_true", help="no progress line")

    run = commands.add_parser(
        "run", help="run the live platform: world, twins, commands, alarms, dashboard, API, OPC UA",
        description="Run the live platform on one asyncio loop: the scenario's simulated world in scaled "
                    "real time (or real hardware: [[modbus]] and [[opcua]] sources), the twins, commands, "
                    "alarms and periodic tasks; the dashboard, the API and the health page over HTTP on "
                    "127.0.0.1, and the twin tree over OPC UA.",
        epilog=EXAMPLES["run"], formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("scenario", metavar="SCENARIO", nargs="?", default="scenarios/demo-community.toml",
                     help="scenario TOML file (default scenarios/demo-community.toml)")
    run.add_argument("--data", default="data", metavar="DIR", help="data directory (default ./data)")
    run.add_argument("--port", type=int, default=8050, help="HTTP port on 127.0.0.1 (default 8050)")
    run.add_argument("--speed", type=float, default=60.0, help="simulated seconds per wall second (default 60)")
    run.add_argument("--start", type=parse_start, default=None,
                     help="site-local start of a new world (default: now); ignored when resuming")
    run.add_argument("--seed", type=int, default=0, help="random seed of a new world (default 0)")
    run.add_argument("--webhook", action="append", default=[], metavar="URL",
                     help="POST every alarm transition as JSON to URL (repeatable)")
    run.add_argument("--opcua-port", type=int, default=4840, metavar="P",
                     help="OPC UA server port on 127.0.0.1 (default 4840; 0 picks a free one; see docs/opcua.md)")
    run.add_argument("--no-opcua", action="store_true", help="no OPC UA server")
    run.add_argument("--opcua-anonymous", action="store_true",
                     help="also an anonymous, read-only endpoint without security (trusted networks only)")
    run.add_argument("--no-modbus", action="store_true",
                     help="feed the twins straight from the simulated world, without the Modbus hop (load tests "
                          "at full speed); by default they are polled over Modbus TCP on loopback")
    run.add_argument("--gateways", default=None, metavar="LIST",
                     help="poll a separate `metertwin emulate` (or real gateways laid out like it) instead of "
                          "serving our own world: HOST:PORT[,modbus+tls://HOST:PORT][,rtu:///dev/pts/N?baud=9600], "
                          "in the order emulate prints")
    run.add_argument("--modbus-tls", default=None, metavar="DIR",
                     help="CA and client certificate for modbus+tls gateways (the DIR given to emulate --tls)")
    run.add_argument("--poll", type=float, default=2.0, metavar="S",
                     help="wall seconds between Modbus poll cycles (default 2)")
    run.add_argument("--per-gateway", type=int, default=200, metavar="N",
                     help="units per gateway, as given to a separate emulate (default 200)")

    bill = commands.add_parser(
        "bill", help="bill a stored history under the scenario's tariffs (CSV on stdout)",
        description="Bill a month of a stored history under the scenario's tariffs, or under another "
                    "named tariff to compare, and print per-account energy and charges as CSV.",
        epilog=EXAMPLES["bill"], formatter_class=argparse.RawDescriptionHelpFormatter)
    bill.add_argument("scenario", metavar="SCENARIO", help="scenario TOML file (its tariffs and accounts)")
    bill.add_argument("history", metavar="HISTORY_DIR", help="history directory (see docs/history-format.md)")
    bill.add_argument("--month", default=None, help="site-local month YYYY-MM (default: the history's last)")
    bill.add_argument("--tariff", default=None, metavar="NAME",
                      help="bill every meter of that tariff's utility under NAME instead")

    data_help = "data directory of the platform (default ./data)"
    keys = commands.add_parser("keys", help="make, list and revoke API keys",
                               description="Manage API keys in a data directory.", epilog=EXAMPLES["keys"],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    role_help = "viewer reads; operator also commands, tops up, acknowledges; admin also manages access"
    raw = argparse.RawDescriptionHelpFormatter
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = keys_sub.add_parser(
        "create", help="make a key and print it once", formatter_class=raw,
        description="Make an API key and print it once (only its hash is kept).",
        epilog="example:\n  metertwin keys create --role viewer --name scada --data data")
    create.add_argument("--role", required=True, choices=["viewer", "operator", "admin"], help=role_help)
    create.add_argument("--name", default="cli", help="what the key is for (default cli)")
    create.add_argument("--data", default="data", metavar="DIR", help=data_help)
    listing = keys_sub.add_parser("list", help="list keys (never their secrets)", formatter_class=raw,
                                  description="List API keys: id, role, live or revoked, name.",
                                  epilog="example:\n  metertwin keys list --data data")
    listing.add_argument("--data", default="data", metavar="DIR", help=data_help)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id", formatter_class=raw,
                                 description="Revoke an API key by the id `keys list` shows; it stops working at once.",
                                 epilog="example:\n  metertwin keys revoke 1a2b3c4d --data data")
    revoke.add_argument("key_id", metavar="KEY_ID", help="the key's id, as `keys list` shows it")
    revoke.add_argument("--data", default="data", metavar="DIR", help=data_help)

    users = commands.add_parser("users", help="add and list users", description="Manage users in a data directory.",
                                epilog=EXAMPLES["users"], formatter_class=argparse.RawDescriptionHelpFormatter)
    users_sub = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    add = users_sub.add_parser(
        "add", help="add a user", formatter_class=raw,
        description="Add a user who signs in to the dashboard, the API (HTTP Basic) and OPC UA.",
        epilog="examples:\n  metertwin users add alice --role operator      # asks for the password\n"
               "  echo 'a long passphrase' | metertwin users add bob --role viewer --password-stdin")
    add.add_argument("name", metavar="NAME", help="user name")
    add.add_argument("--role", required=True, choices=["viewer", "operator", "admin"], help=role_help)
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add.add_argument("--data", default="data", metavar="DIR", help=data_help)
    ulist = users_sub.add_parser("list", help="list users", formatter_class=raw,
                                 description="List users: name, role, disabled.",
                                 epilog="example:\n  metertwin users list --data data")
    ulist.add_argument("--data", default="data", metavar="DIR", help=data_help)

    import importlib

    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).add_parser(commands)
    _wrap_descriptions(parser)
    return parser


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run `metertwin simulate`."""
    from control.simulate import simulate

    result = simulate(args.scenario, days=args.days, seed=args.seed, start=args.start,
                      step_s=args.step, out=args.out, force=args.force, progress=not args.quiet)
    print(result.report)
    return 0


def check_port_free(port: int, what: str, flag: str) -> None:
    """Raise a one-line ValueError when `port` on 127.0.0.1 cannot be listened on, before
    anything is built (the servers themselves would fail later, with a traceback)."""
    import errno
    import socket

    if port == 0:
        return
    if not 0 < port < 65536:
        raise ValueError(f"{flag} {port}: a port is 1..65535")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as err:
            why = "is in use (another metertwin?)" if err.errno == errno.EADDRINUSE else f"failed: {err.strerror}"
            raise ValueError(f"{what} port 127.0.0.1:{port} {why}: choose another with {flag} P") from None


def lock_data_dir(data: str) -> TextIO:
    """Hold DATA/run.lock for this process's life (returns the open file to keep); a second
    `run` on the same data directory would write the same ledger and history: refuse it."""
    import fcntl
    import os
    from pathlib import Path

    directory = Path(data)
    directory.mkdir(parents=True, exist_ok=True)
    handle = (directory / "run.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise ValueError(f"{data} is in use by another metertwin run (pid {holder}): stop it, or give another "
                         "--data") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def start_banner(platform: object, args: argparse.Namespace, opcua_port: int | None) -> str:
    """What `run` prints once it listens: every way in, and the gateways behind the twins."""
    from control.emulate import gateway_table

    site = platform.scenario.site  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{args.port}"
    lines = [f"metertwin: {site.name or site.id} is live at {args.speed:g}x; Ctrl-C stops",
             f"  dashboard  {url}/   (sign in with a user of this platform, e.g. admin)",
             f"  API        {url}/api/docs   (key: Authorization: Bearer $(cat {args.data}/admin.key))",
             f"  health     {url}/health"]
    if opcua_port is not None:
        anonymous = "; plus an anonymous read-only None endpoint" if args.opcua_anonymous else ""
        lines.append(f"  OPC UA     opc.tcp://127.0.0.1:{opcua_port}   (Basic256Sha256 SignAndEncrypt, this platform's "
                     f"users; trust client certificates in {args.data}/opcua/trusted/{anonymous}; docs/opcua.md)")
    modbus = getattr(platform, "modbus", None)
    emulator = getattr(modbus, "emulator", None)
    polled = modbus.describe() if modbus is not None else []  # the world's gateways first, then the rest
    if emulator is not None and emulator.gateways:
        first = emulator.gateways[0]
        port = emulator.url(first.units[0].twin).rsplit(":", 1)[-1].split("/")[0]
        meter = next((u for u in first.units if u.model == "metertwin-pm1"), first.units[0])
        lines.append("  Modbus     the world's gateways (ports change at each start; register maps, 0-based: "
                     "devices/modbus/maps/):")
        lines += [f"    {row}" for row in gateway_table(emulator).splitlines()]
        lines.append(f"    e.g. mbpoll -m tcp -p {port} -a {meter.unit_id} -t 4 -r 1 -c 25 -1 127.0.0.1   "
                     f"# {meter.twin} ({meter.model})")
        polled = polled[len(emulator.gateways):]
        if polled:
            lines.append("  Modbus     also polling:")
    elif polled:
        lines.append("  Modbus     polling:")
    lines += [f"    {gateway}" for gateway in polled]
    return "\n".join(lines)


async def serve_and_announce(platform: object, args: argparse.Namespace, opcua_port: int | None) -> None:
    """Serve the platform; print the start banner once HTTP (and OPC UA) accept connections."""
    import asyncio
    import logging

    serving = asyncio.create_task(platform.serve(  # type: ignore[attr-defined]
        port=args.port, opcua_port=opcua_port, opcua_anonymous=args.opcua_anonymous))
    ports = [args.port] + ([opcua_port] if opcua_port else [])
    for _ in range(1200):  # up to 2 minutes (OPC UA builds its tree first); then serve on, unannounced
        if serving.done():
            break
        try:
            for port in ports:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
        except OSError:
            await asyncio.sleep(0.1)
            continue
        print(start_banner(platform, args, opcua_port), file=sys.stderr, flush=True)
        break
    while not serving.done():  # once asked to stop, the collector's cancelled requests are no news
        if getattr(platform, "stopping", False):
            logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
            break
        await asyncio.sleep(0.2)
    await serving


def cmd_run(args: argparse.Namespace) -> int:
    """Run `metertwin run` until Ctrl-C or SIGTERM."""
    import asyncio
    import logging

    from control.modbus_link import parse_gateways
    from control.runtime import ModbusOptions, Platform

    modbus = None
    if not args.no_modbus:
        if not args.poll > 0:
            raise ValueError(f"--poll must be > 0 seconds, not {args.poll}")
        modbus = ModbusOptions(parse_gateways(args.gateways) if args.gateways else [], args.modbus_tls,
                               args.poll, args.per_gateway)
    elif args.gateways:
        raise ValueError("--gateways needs Modbus: drop --no-modbus")
    if not args.speed >= 0:
        raise ValueError(f"--speed is simulated seconds per wall second, 0 or more, not {args.speed:g}")
    check_port_free(args.port, "HTTP", "--port")
    opcua_port = None if args.no_opcua else args.opcua_port
    if opcua_port is not None:
        if opcua_port == args.port:
            raise ValueError(f"--opcua-port {opcua_port} is the HTTP --port too: give them different ports")
        check_port_free(opcua_port, "OPC UA", "--opcua-port")
    lock = lock_data_dir(args.data)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for chatty in ("pymodbus", "asyncua"):  # their INFO lines ("Repeating....") say nothing to an operator
        logging.getLogger(chatty).setLevel(logging.WARNING)
    print(f"metertwin: loading {args.scenario} (data in {args.data})", file=sys.stderr)
    platform = Platform(args.scenario, args.data, speed=args.speed, start=args.start, seed=args.seed,
                        webhooks=args.webhook, modbus=modbus)
    if platform.world.now_s > 0:
        now = datetime.fromtimestamp(platform.now(), tz=platform.world.tz)
        print(f"metertwin: resumed the world at {now:%Y-%m-%d %H:%M} site time "
              f"(replayed in {platform.replay_seconds:.1f}s)", file=sys.stderr)
    made = platform.auth.ensure_admin(platform.data)
    if made is not None:
        password, key = made
        print("metertwin: first start: made the admin user and key; they are shown this once and kept in "
              f"{platform.data}/admin.password and {platform.data}/admin.key", file=sys.stderr)
        print(f"  admin password: {password}   (dashboard sign-in: user admin)\n  admin API key:  {key}",
              file=sys.stderr)
    print(f"metertwin: starting at http://127.0.0.1:{args.port}"
          + ("" if opcua_port is None else f" and opc.tcp://127.0.0.1:{opcua_port}") + " ...",
          file=sys.stderr, flush=True)
    try:
        asyncio.run(serve_and_announce(platform, args, opcua_port))
    finally:
        lock.close()
    print("metertwin: stopped cleanly; the world, commands and alarms are saved", file=sys.stderr)
    return 0


def cmd_bill(args: argparse.Namespace) -> int:
    """`metertwin bill`: CSV on stdout, a one-line summary on stderr."""
    from control.bill import bill_history, write_csv

    month, lines, band_names = bill_history(args.scenario, args.history, args.month, args.tariff)
    totals = write_csv(month, lines, band_names)
    summary = ", ".join(f"{utility} {yuan:,.2f} yuan" for utility, yuan in sorted(totals.items()))
    print(f"billed {month}: {len(lines)} account lines; {summary}", file=sys.stderr)
    return 0


def _auth(data: str):  # type: ignore[no-untyped-def]
    from pathlib import Path

    from control.auth import Auth
    from control.store import Store

    path = Path(data) / "control.sqlite"
    if not path.exists():
        raise FileNotFoundError(f"{data} holds no platform yet: start `metertwin run --data {data}` once first")
    return Auth(Store(path))


def cmd_keys(args: argparse.Namespace) -> int:
    """`metertwin keys create|list|revoke`."""
    from control.auth import Role

    auth = _auth(args.data)
    if args.keys_command == "create":
        print(auth.create_key(args.name, Role.parse(args.role)))
    elif args.keys_command == "list":
        for key in auth.keys():
            state = "revoked" if key["revoked"] else "live"
            print(f"{key['id']}  {key['role']:<8} {state:<8} {key['name']}")
    else:
        auth.revoke_key(args.key_id)
        print(f"revoked {args.key_id}")
    return 0


def cmd_users(args: argparse.Namespace) -> int:
    """`metertwin users add|list`."""
    import getpass

    from control.auth import Role

    auth = _auth(args.data)
    if args.users_command == "add":
        password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass("password: ")
        auth.add_user(args.name, Role.parse(args.role), password)
        print(f"added {args.name} ({args.role})")
    else:
        for user in auth.users():
            print(f"{user['name']:<20} {user['role']:<8} {'disabled' if user['disabled'] else ''}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    from scenarios.loader import ScenarioError
    from twin.memory import keep_freed_memory

    args = build_parser().parse_args(argv)
    keep_freed_memory()  # runs of the detectors reuse the memory the last one freed (twin/memory.py)
    try:
        handlers = {"simulate": cmd_simulate, "run": cmd_run, "keys": cmd_keys, "users": cmd_users, "bill": cmd_bill}
        handler = getattr(args, "handler", None) or handlers[args.command]
        return int(handler(args))
    except ScenarioError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError) as err:
        message: object = err.args[0] if isinstance(err, KeyError) and err.args else err
        if isinstance(err, OSError) and err.filename is not None:  # raised by the system, not by us
            message = f"{err.filename}: {err.strerror or err}"
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `metertwin bill ... | head`: the reader left; that is fine
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
