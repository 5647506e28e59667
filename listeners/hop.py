"""GCN notices from SCiMMA's Hopskotch: a hop-client consumer feeding ``parse_notice``.

Each URL is hop's own syntax, ``kafka://[user@]host[:port]/topic[,topic...]`` (e.g.
``kafka://kafka.scimma.org/igwn.gwalert``); credentials come from a ``hop auth`` TOML file
(:func:`hop.auth.load_auth`), or none (``auth = ""``: a broker without authentication). One
daemon thread per URL reads the raw message bytes (``Consumer.read_raw``: JSON, VOEvent XML or
Avro exactly as published; hop's ``_test`` messages are skipped by hop itself), parses each
with :func:`mmcross.listeners.parse_notice` with the message's topic and
``source="hop://topic/partition/offset"``, like :mod:`mmcross.listeners.gcn_kafka`, and hands
the event to ``callback`` (the service's notice inbox).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hop import Stream
from hop.auth import load_auth
from hop.io import StartPosition

from mmcross.listeners.dispatch import parse_notice
from mmcross.model.config import Config, notice_options
from mmcross.model.errors import ConfigError, MmcrossError, NotAnEventError
from mmcross.model.event import Event

log = logging.getLogger(__name__)

_START = {"latest": StartPosition.LATEST, "earliest": StartPosition.EARLIEST}


def hop_auth(path: str) -> Any:
    """The credentials of a ``hop auth`` TOML file, or ``False`` (no authentication) for ""."""
    if not path:
        return False
    try:
        return load_auth(path)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise ConfigError(f"hop auth file {path}: {exc}") from exc


@dataclass
class HopListenSettings:
    """``[hop.listen]``: hop URLs, the auth file, where a new consumer starts, its group.

    ``start_at``: ``"latest"`` (only notices published from now on) or ``"earliest"``
    (every retained notice; known ones are dropped by the index as duplicates).
    ``group_id``: a stable consumer group resumes where it stopped; ``""`` = a fresh one.
    """

    urls: tuple[str, ...] = ()
    auth: str = ""
    start_at: str = "latest"
    group_id: str = ""

    @classmethod
    def from_config(cls, config: Config) -> HopListenSettings:
        section = config.get("hop.listen", {}) or {}
        urls = section.get("urls", []) or []
        if isinstance(urls, str):
            urls = [urls]
        start_at = str(section.get("start_at", "latest"))
        if start_at not in _START:
            raise ConfigError(f"[hop.listen] start_at = {start_at!r}: 'latest' or 'earliest'")
        return cls(urls=tuple(str(u) for u in urls),
                   auth=str(section.get("auth", config.get("hop.auth", "")) or ""),
                   start_at=start_at, group_id=str(section.get("group_id", "") or ""))


class HopListener:
    """Reads notice topics from Hopskotch (one thread per URL) and parses each message.

    Args:
        settings: URLs, auth file, start position, group id.
        callback: called with each parsed :class:`Event` from the reading thread.
        options: keyword arguments of :func:`mmcross.listeners.parse_notice`.

    ``stats`` counts ``messages``, ``events``, ``not_events``, ``bad_notices``,
    ``callback_errors`` and ``stream_errors``.
    """

    def __init__(self, settings: HopListenSettings, callback: Callable[[Event], object], *,
                 options: dict[str, Any] | None = None) -> None:
        if not settings.urls:
            raise ConfigError("hop listener needs at least one kafka:// URL ([hop.listen] urls)")
        self.settings = settings
        self.callback = callback
        self.options = dict(options or {})
        self.stats: Counter[str] = Counter()
        self._auth = hop_auth(settings.auth)
        self._consumers: list[Any] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()

    @classmethod
    def from_config(cls, config: Config, callback: Callable[[Event], object]) -> HopListener:
        return cls(HopListenSettings.from_config(config), callback,
                   options=notice_options(config))

    def start(self) -> HopListener:
        """Open a consumer per URL (subscribing now) and read each in a daemon thread.

        Raises:
            ConfigError: a URL hop cannot open.
        """
        stream = Stream(auth=self._auth, start_at=_START[self.settings.start_at])
        for url in self.settings.urls:
            try:
                consumer = stream.open(url, "r", group_id=self.settings.group_id or None)
            except (ValueError, KeyError, RuntimeError) as exc:
                raise ConfigError(f"[hop.listen] cannot open {url}: {exc}") from exc
            self._consumers.append(consumer)
            thread = threading.Thread(target=self._run, args=(url, consumer), daemon=True,
                                      name="mmcross-hop-listener")
            self._threads.append(thread)
            thread.start()
            log.info("reading GCN notices from Hopskotch %s", url)
        return self

    def _run(self, url: str, consumer: Any) -> None:
        try:
            for payload, meta in consumer.read_raw(metadata=True):
                self.handle(payload, meta.topic, f"hop://{meta.topic}/{meta.partition}/"
                                                 f"{meta.offset}")
        except Exception:  # noqa: BLE001 - the stream died: say so, the service goes on
            with self._lock:
                self.stats["stream_errors"] += 1
            if not self._stop.is_set():
                log.exception("hop stream %s stopped", url)

    def handle(self, payload: bytes | None, topic: str, source: str) -> None:
        """Parse one message and hand its event to the callback (refusals are logged)."""
        with self._lock:
            self.stats["messages"] += 1
        try:
            if not payload:
                raise MmcrossError(f"{source}: empty notice message")
            event = parse_notice(payload, topic=topic, source=source, **self.options)
        except NotAnEventError as exc:
            with self._lock:
                self.stats["not_events"] += 1
            log.debug("hop message is not an event: %s", exc)
            return
        except MmcrossError as exc:
            with self._lock:
                self.stats["bad_notices"] += 1
            log.warning("refused hop notice: %s", exc)
            return
        with self._lock:
            self.stats["events"] += 1
        try:
            self.callback(event)
        except Exception:  # noqa: BLE001 - a failing consumer must not stop the listener
            with self._lock:
                self.stats["callback_errors"] += 1
            log.exception("hop notice callback failed on %s", event.event_id)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every consumer loop, wait up to ``timeout`` s per thread, close them."""
        self._stop.set()
        for consumer in self._consumers:
            consumer.stop()
        for thread in self._threads:
            thread.join(timeout)
        for consumer in self._consumers:
            try:
                consumer.close()
            except RuntimeError as exc:
                log.warning("closing a hop consumer: %s", exc)
        self._consumers, self._threads = [], []

