"""Counterparts to SCiMMA's Hopskotch: an engine sink publishing match reports with hop.

Each new match and each revocation becomes one hop JSON message (hop's ``JSONBlob``, header
``_format: json``): the match report record of :func:`mmcross.brokers.reports.match_to_json`
(the fields of :class:`mmcross.model.match.Match`, ``retracted: true`` on a revocation), with
the Kafka key ``event_id|alert_id`` and the header ``mmcross-kind`` = ``counterpart`` or
``retraction``. The URL is hop's ``kafka://[user@]host[:port]/topic``; credentials come from a
``hop auth`` TOML file, or none. :meth:`HopReportSink.write` returns once hop has flushed the
batch; a report hop could not deliver is logged with its key and counted (``stats["failed"]``):
Hopskotch is a copy beside the store and the report topic, outside their transactions, and never
stops matching; after a crash a report may be published again (same key).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from confluent_kafka import KafkaException
from hop import Stream
from hop.auth import load_auth
from hop.models import JSONBlob

from mmcross.model.config import Config
from mmcross.model.errors import ConfigError
from mmcross.model.match import Match

log = logging.getLogger(__name__)


@dataclass
class HopPublishSettings:
    """``[hop.publish]``: the hop URL (one topic), the auth file, the delivery wait (s) per
    batch (the longest a stalled Hopskotch delays the service loop per batch of reports)."""

    url: str = ""
    auth: str = ""
    timeout: float = 10.0

    @classmethod
    def from_config(cls, config: Config) -> HopPublishSettings:
        section = config.get("hop.publish", {}) or {}
        return cls(url=str(section.get("url", "") or ""),
                   auth=str(section.get("auth", config.get("hop.auth", "")) or ""),
                   timeout=float(section.get("timeout", 10.0)))


class HopReportSink:
    """Publishes counterparts and retractions to one Hopskotch topic (a report sink).

    Args:
        settings: URL, auth file, delivery wait.

    Raises:
        ConfigError: no URL, an unreadable auth file, or a URL hop cannot open.
    """

    def __init__(self, settings: HopPublishSettings) -> None:
        if not settings.url:
            raise ConfigError("hop publisher needs a kafka://host/topic URL ([hop.publish] url)")
        self.settings = settings
        self.stats: Counter[str] = Counter()
        try:
            auth = load_auth(settings.auth) if settings.auth else False
            # No large-message offload (reports are small): opening then needs no broker.
            self._producer = Stream(auth=auth).open(
                settings.url, "w", produce_timeout=timedelta(seconds=settings.timeout),
                automatic_offload=False)
        except (OSError, ValueError, KeyError, RuntimeError, KafkaException) as exc:
            raise ConfigError(f"[hop.publish] cannot open {settings.url}: {exc}") from exc
        self._lock = threading.Lock()
        log.info("publishing counterparts to Hopskotch %s", settings.url)

    @classmethod
    def from_config(cls, config: Config) -> HopReportSink:
        return cls(HopPublishSettings.from_config(config))

    def write(self, matches: Sequence[Match]) -> None:
        """Publish one message per match and wait (``timeout`` s) for hop's delivery."""
        if not matches:
            return
        failed: list[str] = []
        reasons: list[str] = []

        def delivered(key: str):
            def callback(err: Any, _msg: Any) -> None:
                if err is not None:
                    with self._lock:
                        failed.append(key)
                        reasons.append(str(err))
            return callback

        for m in matches:
            kind = "retraction" if m.retracted else "counterpart"
            self._producer.write(JSONBlob(content=m.to_record()),
                                 headers={"mmcross-kind": kind}, key=m.key,
                                 delivery_callback=delivered(m.key))
        left = self._producer.flush(timedelta(seconds=self.settings.timeout))
        self.stats["sent"] += len(matches) - len(failed) - left
        if failed or left:
            self.stats["failed"] += len(failed) + left
            log.error("Hopskotch %s: %d match report(s) not delivered (%s): %s",
                      self.settings.url, len(failed) + left, ", ".join(failed[:5]) or "queued",
                      "; ".join(reasons[:3]) or f"still queued after "
                                                f"{self.settings.timeout:g} s")

    def close(self) -> None:
        """Flush what is queued and close the producer."""
        self._producer.close()
