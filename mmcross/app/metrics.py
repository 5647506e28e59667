"""Prometheus metrics of the live service: a small registry and a text endpoint.

:class:`Metrics` holds counters and gauges (optionally labelled) and renders them in the
Prometheus text exposition format 0.0.4. :class:`MetricsServer` serves that text at
``http://127.0.0.1:<port>/metrics`` from a daemon thread (``http.server``); port 0 picks a
free port (see :attr:`MetricsServer.port`). :func:`parse_metrics` reads the text back (for
``mmcross status``).

Everything is thread-safe: the service loop updates, the HTTP thread renders.
"""

from __future__ import annotations

import logging
import math
import threading
import urllib.request
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from mmcross.model.errors import ConfigError, MmcrossError

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LabelKey = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


class Metrics:
    """Counters and gauges, rendered as Prometheus text.

    Declare each metric once with :meth:`counter` / :meth:`gauge` (name and help), then
    :meth:`inc` / :meth:`set` it, with label values as keyword arguments.
    """

    def __init__(self, prefix: str = "mmcross_") -> None:
        self.prefix = prefix
        self._lock = threading.Lock()
        self._meta: dict[str, tuple[str, str]] = {}  # name -> (type, help)
        self._values: dict[str, dict[LabelKey, float]] = {}

    def _declare(self, name: str, kind: str, help_text: str) -> None:
        with self._lock:
            self._meta.setdefault(self.prefix + name, (kind, help_text))
            self._values.setdefault(self.prefix + name, {})

    def counter(self, name: str, help_text: str) -> None:
        """Declare a counter (monotonic; by convention named ``*_total``)."""
        self._declare(name, "counter", help_text)

    def gauge(self, name: str, help_text: str) -> None:
        """Declare a gauge (a value that goes up and down)."""
        self._declare(name, "gauge", help_text)

    def _series(self, name: str) -> dict[LabelKey, float]:
        try:
            return self._values[self.prefix + name]
        except KeyError:
            raise MmcrossError(f"metric {self.prefix + name} was not declared") from None

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Add ``value`` (>= 0) to a counter."""
        if value < 0:
            raise ValueError(f"counter {name} cannot decrease (got {value})")
        key = tuple(sorted((k, str(v)) for k, v in labels.items()))
        with self._lock:
            series = self._series(name)
            series[key] = series.get(key, 0.0) + value

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge."""
        key = tuple(sorted((k, str(v)) for k, v in labels.items()))
        with self._lock:
            self._series(name)[key] = float(value)

    def value(self, name: str, **labels: str) -> float:
        """Current value of one series (0 when never set)."""
        key = tuple(sorted((k, str(v)) for k, v in labels.items()))
        with self._lock:
            return self._series(name).get(key, 0.0)

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4) of every declared metric."""
        lines: list[str] = []
        with self._lock:
            for name in sorted(self._meta):
                kind, help_text = self._meta[name]
                lines.append(f"# HELP {name} {help_text}")
                lines.append(f"# TYPE {name} {kind}")
                series = self._values[name] or ({(): 0.0} if kind == "counter" else {})
                for key, value in sorted(series.items()):
                    labels = ",".join(f'{k}="{_escape(v)}"' for k, v in key)
                    lines.append(f"{name}{{{labels}}} {_number(value)}" if labels
                                 else f"{name} {_number(value)}")
        return "\n".join(lines) + "\n"


class RateMeter:
    """Events per second over a sliding window (seconds, monotonic clock)."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._marks: deque[tuple[float, int]] = deque()
        self._total = 0

    def add(self, n: int, now: float) -> None:
        self._total += n
        self._marks.append((now, self._total))

    def rate(self, now: float) -> float:
        while len(self._marks) > 1 and now - self._marks[0][0] > self.window:
            self._marks.popleft()
        if not self._marks:
            return 0.0
        t0, n0 = self._marks[0]
        span = max(now - t0, 1.0)
        return (self._total - n0) / span


class _Handler(BaseHTTPRequestHandler):
    metrics: ClassVar[Metrics]

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        if self.path.split("?")[0] not in ("/metrics", "/"):
            self.send_error(404, "only /metrics here")
            return
        body = self.server.metrics.render().encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        log.debug("metrics %s: " + fmt, self.client_address[0], *args)


class MetricsServer:
    """Serves ``metrics`` at ``http://host:port/metrics`` from a daemon thread.

    Args:
        metrics: the registry to render at each scrape.
        port: TCP port; 0 picks a free one (read :attr:`port` after construction).
        host: interface, ``127.0.0.1`` by default (not exposed beyond the machine).

    Raises:
        ConfigError: the port cannot be bound.
    """

    def __init__(self, metrics: Metrics, port: int = 0, host: str = "127.0.0.1") -> None:
        try:
            self._server = ThreadingHTTPServer((host, port), _Handler)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
        self._server.daemon_threads = True
        self._server.metrics = metrics  # type: ignore[attr-defined]
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="mmcross-metrics", daemon=True)
        self._thread.start()
        log.info("Prometheus metrics at %s", self.url)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def parse_metrics(text: str) -> dict[str, dict[LabelKey, float]]:
    """Prometheus text -> ``{name: {labels: value}}`` (comments skipped; simple labels)."""
    out: dict[str, dict[LabelKey, float]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, labels = head, ()
        if "{" in head:
            name, _, rest = head.partition("{")
            pairs = []
            for part in rest.rstrip("}").split(","):
                if part:
                    k, _, v = part.partition("=")
                    pairs.append((k, v.strip('"')))
            labels = tuple(sorted(pairs))
        out.setdefault(name, {})[labels] = float(value)
    return out


def scrape(url: str, timeout: float = 5.0) -> dict[str, dict[LabelKey, float]]:
    """GET and parse a metrics endpoint.

    Raises:
        MmcrossError: the endpoint cannot be reached.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (operator URL)
            return parse_metrics(resp.read().decode())
    except OSError as exc:
        raise MmcrossError(f"cannot read metrics from {url}: {exc}") from exc
