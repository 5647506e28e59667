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
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from adc import kafka
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

    Each thread opens its URL, reads it, and on any failure (broker unreachable, topic
    missing, stream broken) logs it and opens it again after a back-off doubling from
    ``backoff_min`` to ``backoff_max`` seconds, until :meth:`stop`.

    Args:
        settings: URLs, auth file, start position, group id.
        callback: called with each parsed :class:`Event` from the reading thread.
        options: keyword arguments of :func:`mmcross.listeners.parse_notice`.

    Raises:
        ConfigError: no URL, a URL not of hop's ``kafka://host/topic`` form, or an unreadable
            auth file.

    ``stats`` counts ``messages``, ``events``, ``not_events``, ``bad_notices``,
    ``callback_errors``, ``open_failures`` and ``stream_errors``.
    """

    backoff_min = 1.0
    backoff_max = 300.0

    def __init__(self, settings: HopListenSettings, callback: Callable[[Event], object], *,
                 options: dict[str, Any] | None = None) -> None:
        if not settings.urls:
            raise ConfigError("hop listener needs at least one kafka:// URL ([hop.listen] urls)")
        for url in settings.urls:
            try:
                topics = kafka.parse_kafka_url(url)[2]
            except ValueError as exc:
                raise ConfigError(f"[hop.listen] {url}: {exc}") from exc
            if not topics:
                raise ConfigError(f"[hop.listen] {url}: no topic (kafka://host/topic)")
        self.settings = settings
        self.callback = callback
        self.options = dict(options or {})
        self.stats: Counter[str] = Counter()
        self._stream = Stream(auth=hop_auth(settings.auth),
                              start_at=_START[settings.start_at])
        self._consumers: dict[str, Any] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()

    @classmethod
    def from_config(cls, config: Config, callback: Callable[[Event], object]) -> HopListener:
        return cls(HopListenSettings.from_config(config), callback,
                   options=notice_options(config))

    def start(self) -> HopListener:
        """Read each URL in a daemon thread (returns at once)."""
        self._stop.clear()
        for url in self.settings.urls:
            thread = threading.Thread(target=self._run, args=(url,), daemon=True,
                                      name="mmcross-hop-listener")
            self._threads.append(thread)
            thread.start()
        return self

    def _count(self, name: str) -> None:
        with self._lock:
            self.stats[name] += 1

    def _run(self, url: str) -> None:
        backoff = self.backoff_min
        while not self._stop.is_set():
            try:
                consumer = self._stream.open(url, "r", group_id=self.settings.group_id or None)
            except Exception as exc:  # noqa: BLE001 - unreachable, missing topic...: retry
                self._count("open_failures")
                log.warning("cannot open Hopskotch %s (%s); retry in %.0f s", url, exc, backoff)
            else:
                log.info("reading GCN notices from Hopskotch %s", url)
                with self._lock:
                    self._consumers[url] = consumer
                try:
                    if not self._stop.is_set():
                        for payload, meta in consumer.read_raw(metadata=True):
                            backoff = self.backoff_min
                            self.handle(payload, meta.topic, f"hop://{meta.topic}/"
                                                             f"{meta.partition}/{meta.offset}")
                except Exception:  # noqa: BLE001 - the stream broke: say so, open it again
                    self._count("stream_errors")
                    log.exception("Hopskotch stream %s broke; reopening in %.0f s", url,
                                  backoff)
                finally:
                    with self._lock:
                        self._consumers.pop(url, None)
                    consumer.close()
            if self._stop.wait(backoff):
                return
            backoff = min(2 * backoff, self.backoff_max)

    def handle(self, payload: bytes | None, topic: str, source: str) -> None:
        """Parse one message and hand its event to the callback (refusals are logged)."""
        self._count("messages")
        try:
            if not payload:
                raise MmcrossError(f"{source}: empty notice message")
            event = parse_notice(payload, topic=topic, source=source, **self.options)
        except NotAnEventError as exc:
            self._count("not_events")
            log.debug("hop message is not an event: %s", exc)
            return
        except MmcrossError as exc:
            self._count("bad_notices")
            log.warning("refused hop notice: %s", exc)
            return
        self._count("events")
        try:
            self.callback(event)
        except Exception:  # noqa: BLE001 - a failing consumer must not stop the listener
            self._count("callback_errors")
            log.exception("hop notice callback failed on %s", event.event_id)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every reading thread, waiting up to ``timeout`` s in all.

        A consumer's stop is repeated while its thread lives: one opened just now may not
        have entered its read loop yet, which clears the request.
        """
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            while thread.is_alive() and time.monotonic() < deadline:
                with self._lock:
                    consumers = list(self._consumers.values())
                for consumer in consumers:
                    consumer.stop()
                thread.join(0.5)
        self._threads = [t for t in self._threads if t.is_alive()]
