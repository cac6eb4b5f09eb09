"""Posting line protocol through influxdb-client's write API, and what an answer means.

`Writer.post(body)` sends one batch (write precision ms) and returns once the server
answered 2xx; otherwise it raises `SendError`, which says whether trying again can help:
a refused connection, a timeout, 408, 429 and 5xx can; 400, 413 and 422 (the batch itself
is wrong) cannot. 401, 403 and 404 (token, org, bucket) are retried too, slowly: an
operator fixes the setting and the spooled data goes out then.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import urllib3

log = logging.getLogger("metertwin.influx")
#: Statuses that say the batch itself is wrong: retrying it cannot help.
PERMANENT = (400, 413, 422)


@dataclass(frozen=True, slots=True)
class Target:
    """Where readings go. Example: ``Target("http://127.0.0.1:8428", "", "site", "metertwin")``."""

    url: str  #: http(s)://host:port of InfluxDB 2 or VictoriaMetrics
    token: str = ""  #: API token ('' when the server takes none, as VictoriaMetrics)
    org: str = "metertwin"  #: organisation
    bucket: str = "metertwin"  #: bucket (VictoriaMetrics ignores it)

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"influx url {self.url!r}: use http://HOST:PORT or https://HOST:PORT")
        if not self.org or not self.bucket:
            raise ValueError("influx org and bucket must not be empty")


class SendError(Exception):
    """A batch the server did not accept; `retry` says whether sending it again can help."""

    def __init__(self, message: str, status: int | None, retry: bool) -> None:
        super().__init__(message)
        self.status = status
        self.retry = retry


class Writer:
    """One connection pool to the server. Example::

        writer = Writer(Target("http://127.0.0.1:8428"))
        writer.post(b"electric,twin=a kwh=0.25 1767225600000")
        writer.close()
    """

    def __init__(self, target: Target, timeout_s: float = 10.0) -> None:
        from influxdb_client import InfluxDBClient  # a quarter second to import: only when a sink is on
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.target = target
        self.client = InfluxDBClient(url=target.url, token=target.token or "none", org=target.org,
                                     timeout=int(timeout_s * 1000), retries=False, enable_gzip=False)
        self.api = self.client.write_api(write_options=SYNCHRONOUS)

    def post(self, body: bytes) -> None:
        """Send one batch; SendError unless the server answered 2xx."""
        from influxdb_client import WritePrecision
        from influxdb_client.rest import ApiException

        try:
            self.api.write(bucket=self.target.bucket, org=self.target.org, record=body,
                           write_precision=WritePrecision.MS)  # type: ignore[arg-type]
        except ApiException as err:
            status = int(err.status or 0)
            reason = (err.body or err.reason or "").strip()[:300]
            raise SendError(f"{self.target.url} answered {status}: {reason}", status,
                            status not in PERMANENT) from None
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise SendError(f"{self.target.url}: {type(err).__name__}: {_short(err)}", None, True) from None

    def close(self) -> None:
        """Close the connection pool."""
        self.api.close()
        self.client.close()


def _short(err: BaseException) -> str:
    text = str(err)
    return text if len(text) <= 300 else text[:297] + "..."


def backoff_s(attempt: int, first_s: float = 0.5, most_s: float = 30.0) -> float:
    """Seconds to wait before try `attempt` (1 = the first retry): doubling from `first_s`
    up to `most_s`, with +-20% jitter so many sinks do not retry in step."""
    base = min(most_s, first_s * 2 ** max(attempt - 1, 0))
    return base * random.uniform(0.8, 1.2)
