"""The InfluxDB sink: readings and ledger movements as line protocol, sent through
influxdb-client to InfluxDB 2 or VictoriaMetrics, spooled on disk while the server is away.
See docs/influx.md."""

from control.influx.lines import LineError, ReadingLines, escape_key, escape_measurement, ledger_lines, line, tag_set
from control.influx.sink import InfluxSink, sink_for, target_from
from control.influx.spool import Spool, SpoolError
from control.influx.writer import SendError, Target, Writer

__all__ = [
    "InfluxSink", "LineError", "ReadingLines", "SendError", "Spool", "SpoolError", "Target", "Writer",
    "escape_key", "escape_measurement", "ledger_lines", "line", "sink_for", "tag_set", "target_from",
]
