"""The /health page: the same dict as /api/health, laid out for a person. One section per
block (site, clock, alarms, commands, billing, webhooks, tasks, Modbus, OPC UA, InfluxDB,
detectors, load analytics, and any key not named here under "Other", so a new health field still shows);
nested dicts become small tables, lists of records tables with a header row, None a dash,
numbers get thousands separators, times (`*_at`, `*_until`, `*_through`) a date in the
site's time zone, and every string is escaped."""

from __future__ import annotations

import html
from collections.abc import Mapping
from datetime import datetime, tzinfo

#: (section title, top-level keys of the health dict it shows), in page order
BLOCKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Site", ("site", "name", "scenario", "twins")),
    ("Clock", ("sim_time", "speed", "uptime_s", "replay_s")),
    ("Alarms", ("open_alarms",)),
    ("Commands", ("open_commands",)),
    ("Billing", ("months_closed",)),
    ("Webhooks", ("webhooks",)),
    ("Periodic tasks", ("tasks",)),
    ("Modbus", ("modbus",)),
    ("OPC UA sources", ("opcua_sources",)),
    ("InfluxDB", ("influx",)),
    ("Detectors", ("detectors",)),
    ("Load analytics", ("analytics",)),
)
NONE = "–"  # what None, an empty list and an empty dict show
TIME_SUFFIXES = ("_at", "_until", "_through")
STYLE = """body { font-family: sans-serif; margin: 1.5em; color: #222 }
h2 { font-size: 1.1em; margin: 1.4em 0 0.4em; border-bottom: 1px solid #ccc }
table { border-collapse: collapse } th, td { padding: 2px 10px 2px 0; vertical-align: top; text-align: left }
th { font-weight: 600; color: #555 } td.n { text-align: right; font-variant-numeric: tabular-nums }
table table { margin: 0; font-size: 0.95em } thead th { border-bottom: 1px solid #ddd }"""


def label(key: str) -> str:
    """A field name for people: `uptime_s` is "uptime (s)", `open_alarms` "open alarms"."""
    unit = ""
    if key.endswith("_s"):
        key, unit = key[:-2], " (s)"
    return html.escape(key.replace("_", " ") + unit)


def number(value: int | float) -> str:
    """Thousands separators; floats to at most 3 decimals (3 significant digits below 1)."""
    if isinstance(value, int):
        return f"{value:,}"
    if value != 0 and abs(value) < 1:
        return f"{value:.3g}"
    return f"{value:,.3f}".rstrip("0").rstrip(".")


def cell(key: str, value: object, tz: tzinfo) -> str:
    """The HTML of one value: escaped text, a number, a time, or a nested table."""
    if value is None or value == [] or value == {}:
        return NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        if key.endswith(TIME_SUFFIXES) and value > 0:
            return html.escape(datetime.fromtimestamp(value, tz=tz).isoformat(sep=" ", timespec="seconds"))
        return number(value)
    if isinstance(value, Mapping):
        return fields(value, tz)
    if isinstance(value, list | tuple):
        if all(isinstance(v, Mapping) for v in value):
            return records(value, tz)
        return ", ".join(cell(key, v, tz) for v in value)
    return html.escape(str(value))


def _td(key: str, value: object, tz: tzinfo) -> str:
    numeric = isinstance(value, int | float) and not isinstance(value, bool) and not key.endswith(TIME_SUFFIXES)
    return f"<td{' class=n' if numeric else ''}>{cell(key, value, tz)}</td>"


def fields(values: Mapping[str, object], tz: tzinfo) -> str:
    """A two-column table: one row per key."""
    rows = "".join(f"<tr><th>{label(k)}</th>{_td(k, v, tz)}</tr>" for k, v in values.items())
    return f"<table>{rows}</table>"


def records(items: list | tuple, tz: tzinfo) -> str:
    """A table with a header row (the union of the records' keys) and one row per record."""
    keys = list(dict.fromkeys(k for item in items for k in item))
    head = "".join(f"<th>{label(k)}</th>" for k in keys)
    rows = "".join("<tr>" + "".join(_td(k, item.get(k), tz) for k in keys) + "</tr>" for item in items)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def section(title: str, keys: tuple[str, ...], health: Mapping[str, object], tz: tzinfo) -> str:
    """One block: a table of its keys, or the block's one dict or list itself."""
    if len(keys) == 1 and isinstance(health[keys[0]], Mapping | list | tuple | None):
        body = cell(keys[0], health[keys[0]], tz)
    else:
        body = fields({k: health[k] for k in keys}, tz)
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


def render_health(health: Mapping[str, object], tz: tzinfo) -> str:
    """The whole page, refreshing itself every 5 s."""
    named = {k for _, keys in BLOCKS for k in keys}
    blocks = [(title, tuple(k for k in keys if k in health)) for title, keys in BLOCKS]
    other = tuple(k for k in health if k not in named)
    if other:
        blocks.append(("Other", other))
    sections = "".join(section(title, keys, health, tz) for title, keys in blocks if keys)
    name = html.escape(str(health.get("name", "")))
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>MeterTwin — {name}</title><meta http-equiv='refresh' content='5'>"
            f"<style>{STYLE}</style></head><body><h1>MeterTwin: {name}</h1>{sections}"
            "<p>Machine-readable: <a href='/api/health'>/api/health</a> · API: <a href='/api/docs'>/api/docs</a></p>"
            "</body></html>")
