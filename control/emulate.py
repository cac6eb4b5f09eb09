"""`metertwin emulate`: a scenario's world running live behind emulated Modbus gateways.

The world moves at `--speed` times wall time in a worker thread (as `metertwin run` moves
it), and every gateway of the site's layout answers Modbus requests with the twins' values
of that moment: gateway i listens on `--modbus-port` + i. `--tls DIR` serves them as
Modbus/TCP Security with certificates made in DIR; `--rtu` serves the first gateway as
Modbus RTU on a pseudo-terminal pair (socat) instead, and prints the end a collector opens.
`--faults KIND:SHARE[,...]` makes that share of the units misbehave from the start (see
`FAULTS`), the units drawn with `--seed` (`choose_faults`). SIGINT or SIGTERM closes the
gateways and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import sys
import time
from datetime import datetime
from typing import Any

EXAMPLES = """\
examples:
  metertwin emulate scenarios/demo-community.toml                  # gateways on 5020, 5021, ...
  mbpoll -m tcp -p 5020 -a 9 -t 4 -r 1 -c 25 -1 127.0.0.1          # a prepaid meter (unit 9 in the demo)
  metertwin emulate scenarios/mall.toml --modbus-port 1502 --speed 600 --seed 3
  metertwin emulate scenarios/demo-community.toml --rtu --baud 9600  # first gateway: RTU on a pty
  metertwin emulate scenarios/demo-community.toml --tls certs        # Modbus/TCP Security, certs in ./certs
  metertwin emulate scenarios/district-10k.toml --faults no_answer:0.1 --seed 4    # 10% of units silent
  metertwin emulate scenarios/mall.toml --faults no_answer:0.02,slow:0.02,exception:0.02,garbage:0.02,flap:0.02

Prints one line per gateway: its name, where to reach it (modbus://HOST:PORT,
modbus+tls://HOST:PORT or rtu://DEVICE), its unit ids and first and last twin.
Register maps: devices/modbus/maps/*.toml (0-based addresses).

Faults (--faults, a share of the units each, drawn with --seed, none twice):
  no_answer   silent                      slow       answers 2 s late (past a 1 s timeout)
  exception   answers exception 4         garbage    values outside the map's range, NaN
  flap        silent 10 s, answering 20 s, and again"""

#: The world runs ten years at most, as the live platform's does.
LIVE_DAYS = 3650
#: Wall seconds between moves of the world.
TICK_S = 0.2
#: What each `--faults` kind injects (devices.modbus.emulator.Fault arguments).
FAULTS: dict[str, dict[str, Any]] = {
    "no_answer": {}, "slow": {"delay_s": 2.0}, "exception": {"code": 4}, "garbage": {},
    "flap": {"down_s": 10.0, "up_s": 20.0},
}


def parse_faults(text: str) -> list[tuple[str, float]]:
    """`--faults`: 'no_answer:0.1' or 'slow:0.02,garbage:0.05' -> [(kind, share), ...].
    argparse.ArgumentTypeError names the entry that is wrong."""
    faults: list[tuple[str, float]] = []
    kinds = ", ".join(FAULTS)
    for n, raw in enumerate((part.strip() for part in text.split(",")), start=1):
        kind, colon, share_text = raw.partition(":")
        kind = kind.strip()
        where = f"entry {n} ({raw!r})"
        if not colon:
            raise argparse.ArgumentTypeError(f"{where}: not KIND:SHARE; use for example no_answer:0.1")
        if kind not in FAULTS:
            raise argparse.ArgumentTypeError(f"{where}: unknown fault kind {kind!r}; the kinds are {kinds}")
        try:
            share = float(share_text)
        except ValueError:
            share = math.nan
        if not 0 < share <= 1:
            raise argparse.ArgumentTypeError(f"{where}: the share is a number in (0, 1], as 0.1 for 10%, "
                                             f"not {share_text.strip()!r}")
        if any(kind == k for k, _ in faults):
            raise argparse.ArgumentTypeError(f"{where}: {kind} is given twice")
        faults.append((kind, share))
    total = sum(share for _, share in faults)
    if total > 1 + 1e-9:
        raise argparse.ArgumentTypeError(f"{text!r}: the shares add up to {total:g}, more than 1")
    return faults


def choose_faults(gateways: Any, faults: list[tuple[str, float]], seed: int) -> dict[str, Any]:
    """Which units get which fault: twin id -> Fault. Each kind takes round(share x units)
    units, none twice, drawn from the layout's units by a generator seeded with `seed`
    (the same seed and layout, the same units)."""
    import numpy as np

    from devices.modbus.emulator import Fault

    twins = [unit.twin for gateway in gateways for unit in gateway.units]
    order = np.random.default_rng([seed, 0xFA17]).permutation(len(twins))
    chosen: dict[str, Any] = {}
    at = 0
    for kind, share in faults:
        count = min(round(share * len(twins)), len(twins) - at)
        fault = Fault(kind, **FAULTS[kind])
        chosen.update((twins[i], fault) for i in order[at:at + count])
        at += count
    return chosen


def fault_lines(chosen: dict[str, Any], faults: list[tuple[str, float]], units: int, seed: int) -> str:
    """The banner's lines on injected faults: per kind, how many units and the first few."""
    lines = []
    for kind, share in faults:
        twins = sorted(t for t, f in chosen.items() if f.kind == kind)
        shown = ", ".join(twins[:4]) + (", ..." if len(twins) > 4 else "")
        lines.append(f"metertwin: fault {kind} ({share:g}, seed {seed}) on {len(twins)} of {units} units"
                     + (f": {shown}" if twins else ""))
    return "\n".join(lines)


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Register `emulate` on the CLI's subcommands."""
    from control.cli import parse_start

    emulate = commands.add_parser(
        "emulate", help="run a scenario's world live behind emulated Modbus gateways (TCP, TLS, RTU)",
        description="Run a scenario's simulated world live and serve every gateway of its layout as an "
                    "emulated Modbus gateway whose registers follow the twins.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    emulate.add_argument("scenario", metavar="SCENARIO", help="scenario TOML file")
    emulate.add_argument("--modbus-port", type=int, default=5020, metavar="P",
                         help="port of the first gateway; the next listen on P+1, P+2, ... (default 5020; "
                              "0: free ports)")
    emulate.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    emulate.add_argument("--speed", type=float, default=60.0, help="simulated seconds per wall second (default 60)")
    emulate.add_argument("--start", type=parse_start, default=None,
                         help="site-local start of the world (default: now, on an interval boundary)")
    emulate.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    emulate.add_argument("--per-gateway", type=int, default=200, metavar="N",
                         help="units per gateway, 1..247 (default 200)")
    emulate.add_argument("--rtu", action="store_true",
                         help="serve the first gateway as Modbus RTU on a socat pseudo-terminal pair")
    emulate.add_argument("--baud", type=int, default=9600, help="RTU baud rate (default 9600)")
    emulate.add_argument("--tls", default=None, metavar="DIR",
                         help="serve TCP gateways as Modbus/TCP Security; CA, server and client "
                              "certificates are made in DIR when missing")
    emulate.add_argument("--faults", type=parse_faults, default=[], metavar="KIND:SHARE[,KIND:SHARE...]",
                         help=f"inject a fault into that share of the units from the start, drawn with --seed "
                              f"(kinds: {', '.join(FAULTS)}; e.g. no_answer:0.1)")
    emulate.set_defaults(handler=run)
    return emulate


def aligned_now(timezone: str, interval_s: int) -> datetime:
    """The current site-local time, rounded down to an interval boundary (naive)."""
    from zoneinfo import ZoneInfo

    now = int(time.time())
    return datetime.fromtimestamp(now - now % interval_s, tz=ZoneInfo(timezone)).replace(tzinfo=None)


def gateway_table(emulator: Any) -> str:
    """One line per gateway: name, link, unit ids, first and last twin."""
    rows = [("gateway", "link", "units", "twins")]
    for gateway in emulator.gateways:
        first, last = gateway.units[0], gateway.units[-1]
        link = emulator.url(first.twin).rsplit("/", 1)[0]
        if link.startswith("rtu://"):
            link += f" ({emulator.links[gateway.name].baudrate} baud)"
        rows.append((gateway.name, link, f"{first.unit_id}-{last.unit_id}", f"{first.twin} .. {last.twin}"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows)


def gateways_arg(emulator: Any) -> str:
    """The `--gateways` value with which `metertwin run` polls these gateways, in layout order."""
    links = []
    for gateway in emulator.gateways:
        link = emulator.url(gateway.units[0].twin).rsplit("/", 1)[0]
        if link.startswith("rtu://"):
            link += f"?baud={emulator.links[gateway.name].baudrate}"
        links.append(link)
    return ",".join(links)


async def serve(source: Any, emulator: Any, speed: float, on_ready: Any = None) -> None:
    """Open the gateways and move the world with the clock until SIGINT or SIGTERM."""
    from control.runtime import SimClock

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await emulator.start()
    try:
        if on_ready is not None:
            on_ready()
        clock = SimClock(source.world.now_s, speed)
        while not stopping.is_set():
            started = time.monotonic()
            await asyncio.to_thread(source.advance_to, clock.sim_s())
            try:
                await asyncio.wait_for(stopping.wait(), max(0.0, TICK_S - (time.monotonic() - started)))
            except TimeoutError:
                pass
    finally:
        await emulator.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run(args: argparse.Namespace) -> int:
    """Run `metertwin emulate` until Ctrl-C or SIGTERM."""
    from devices.modbus.emulator import Emulator, Link, PtyPair, Rtu, Tls, WorldSource
    from devices.modbus.layout import layout
    from devices.sim.world import World
    from scenarios.loader import load_scenario

    scenario = load_scenario(args.scenario)
    gateways = layout(scenario.site, per_gateway=args.per_gateway)
    if not gateways:
        raise ValueError(f"{args.scenario}: the site has no metered twins to emulate")
    if args.modbus_port:  # every gateway's port before the world is built (pymodbus would log a bind error)
        from control.cli import check_port_free

        tcp = range(1 if args.rtu else 0, len(gateways))
        if args.host in ("127.0.0.1", "localhost"):
            for i in tcp:
                try:
                    check_port_free(args.modbus_port + i, f"Modbus gateway {gateways[i].name}", "--modbus-port")
                except ValueError as err:
                    raise ValueError(f"{err} (gateway i listens on --modbus-port + i: {len(gateways)} "
                                     f"gateways from {args.modbus_port}; 0 picks free ports)") from None
    start = args.start or aligned_now(scenario.site.timezone, scenario.interval_s)
    print(f"metertwin: building the world of {args.scenario} from {start:%Y-%m-%d %H:%M}", file=sys.stderr)
    world = World(scenario, seed=args.seed, start=start, days=LIVE_DAYS, live=True)
    world.begin(lambda day: None)
    source = WorldSource(world)
    links: dict[str, Link] = {}
    pty = None
    if args.tls:
        from devices.modbus.certs import ensure_certs, server_context

        certs = ensure_certs(args.tls)
        links.update({g.name: Tls(server_context(args.tls)) for g in gateways})
        print(f"metertwin: TLS: collectors trust {certs.ca} and present {certs.client_cert} "
              f"(key {certs.client_key})", file=sys.stderr)
    if args.rtu:
        pty = PtyPair()
        links[gateways[0].name] = Rtu(pty.device, pty.collector, baudrate=args.baud)
    emulator = Emulator(gateways, source, host=args.host, base_port=args.modbus_port, links=links)
    units = sum(len(g.units) for g in gateways)
    chosen = choose_faults(gateways, args.faults, args.seed)
    for twin, fault in chosen.items():
        emulator.set_fault(twin, fault)

    def ready() -> None:
        print(gateway_table(emulator), flush=True)
        if args.faults:
            print(fault_lines(chosen, args.faults, units, args.seed), file=sys.stderr, flush=True)
        tls = f" --modbus-tls {args.tls}" if args.tls else ""
        print(f"metertwin: {scenario.site.name or scenario.site.id}: {len(gateways)} "
              f"gateway{'' if len(gateways) == 1 else 's'}, {units} units, "
              f"world at {args.speed:g}x; Ctrl-C stops\n"
              f"metertwin: poll them with: metertwin run {args.scenario} --per-gateway {args.per_gateway}{tls} "
              f"--gateways {gateways_arg(emulator)}", file=sys.stderr, flush=True)

    try:
        asyncio.run(serve(source, emulator, args.speed, ready))
    finally:
        if pty is not None:
            pty.close()
    print("metertwin: gateways closed", file=sys.stderr)
    return 0
