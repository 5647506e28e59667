"""Partner submissions over a Kafka topic: signed VOEvents or GCN-unified-schema JSON.

Each message on the submission topic (``[submit.kafka] topic``) carries:

* key: the partner name (or header ``mmcross-partner``, which wins when both are present);
* header ``mmcross-signature``: ``hex(HMAC-SHA256(key=sha256(token), msg=name + "\\n" +
  value))`` (:func:`mmcross.listeners.partners.sign_submission`);
* value: a VOEvent (XML) or a JSON notice in the GCN unified schema.

The checks are those of the VTP receiver (:mod:`mmcross.listeners.vtp_receiver`): credential, the
partner's size cap, formats and token bucket, safe XML (a DOCTYPE is refused, no entities are
expanded), then :func:`mmcross.listeners.parse_notice`. Refusals are logged with
``topic/partition/offset`` and counted in :attr:`PartnerKafkaConsumer.stats` under the same
reason names; a refused message is skipped (its offset still committed), so one bad message
never blocks the topic. Accepted events get ``source = "partner:<name> kafka:<t>/<p>/<o>"``,
are recorded in the registry and handed to ``callback`` (e.g. ``engine.on_notice``).

A message with header ``mmcross-kind: detections`` carries the partner's own transient
detections instead (:mod:`mmcross.listeners.partner_detections`, same signature, size cap and token
bucket); accepted ones go to ``on_detections(partner, detections)`` (refused as
``detections_not_enabled`` when none was given) and are counted as ``detections_accepted``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message
from lxml import etree

from mmcross.listeners.dispatch import parse_notice
from mmcross.listeners.partner_detections import KIND_DETECTIONS, KIND_HEADER, accept_detections
from mmcross.listeners.partners import (
    PARTNER_HEADER,
    SIGNATURE_HEADER,
    PartnerRegistry,
    SubmissionRefusedError,
)
from mmcross.model.config import Config, notice_options
from mmcross.model.detections import Detections
from mmcross.model.errors import MmcrossError, NotAnEventError
from mmcross.model.event import Event
from mmcross.vtp.base import safe_xml

log = logging.getLogger(__name__)

DEFAULT_TOPIC = "mmcross.partner.submissions"


def _headers(msg: Message) -> dict[str, bytes]:
    return {k.lower(): v for k, v in (msg.headers() or []) if v is not None}


class PartnerKafkaConsumer:
    """Consumes the partner submission topic and hands accepted events to ``callback``.

    Args:
        kafka_config: librdkafka consumer properties (``bootstrap.servers``, ``group.id``...);
            offsets are stored only after a message was handled.
        topic: the submission topic.
        registry: the partners.
        callback: called with each accepted :class:`Event`.
        options: keyword arguments of :func:`mmcross.listeners.parse_notice`.
        lock: held around each ``callback`` call when given.
        on_detections: called with ``(partner, Detections)`` for each accepted
            detections message (header ``mmcross-kind: detections``), under ``lock``.
    """

    def __init__(self, kafka_config: Mapping[str, Any], topic: str, registry: PartnerRegistry,
                 callback: Callable[[Event], object], *, options: dict[str, Any] | None = None,
                 lock: AbstractContextManager[Any] | None = None,
                 on_detections: Callable[[str, Detections], object] | None = None
                 ) -> None:
        conf = {"enable.auto.offset.store": False, "auto.offset.reset": "earliest",
                **dict(kafka_config)}
        self.topic = topic
        self.registry = registry
        self.callback = callback
        self.on_detections = on_detections
        self.options = dict(options or {})
        self.lock: AbstractContextManager[Any] = lock if lock is not None else nullcontext()
        self.stats: Counter[str] = Counter()
        self.consumer = Consumer(conf)
        self.consumer.subscribe([topic])
        log.info("partner submission consumer on topic %s (group %s)", topic,
                 conf.get("group.id"))

    @classmethod
    def from_config(cls, config: Config, kafka_config: Mapping[str, Any],
                    callback: Callable[[Event], object], *,
                    registry: PartnerRegistry | None = None, topic: str | None = None,
                    lock: AbstractContextManager[Any] | None = None,
                    on_detections: Callable[[str, Detections], object] | None = None
                    ) -> PartnerKafkaConsumer:
        """Topic (unless given) and group from ``[submit.kafka]``, partners from
        ``[partners]``; ``kafka_config`` entries win over the configured group."""
        conf = {"group.id": str(config.get("submit.kafka.group_id",
                                           "mmcross-partner-submissions")),
                **dict(kafka_config)}
        return cls(conf, topic or str(config.get("submit.kafka.topic", DEFAULT_TOPIC)),
                   registry if registry is not None else PartnerRegistry.from_config(config),
                   callback, options=notice_options(config), lock=lock,
                   on_detections=on_detections)

    def poll(self, max_messages: int = 100, timeout: float = 0.0) -> list[Event]:
        """Handle up to ``max_messages`` submissions; returns the accepted events."""
        accepted: list[Event] = []
        for msg in self.consumer.consume(max_messages, timeout):
            err = msg.error()
            if err is not None:
                if err.code() not in (KafkaError._PARTITION_EOF,
                                      KafkaError.UNKNOWN_TOPIC_OR_PART):
                    log.warning("partner submission consumer: %s", err)
                continue
            self.stats["messages"] += 1
            event = self._handle(msg)
            if event is not None:
                accepted.append(event)
            self.consumer.store_offsets(message=msg)
        return accepted

    def _handle(self, msg: Message) -> Event | None:
        where = f"{msg.topic()}/{msg.partition()}/{msg.offset()}"
        kind = _headers(msg).get(KIND_HEADER, b"").decode("utf-8", "replace").strip().lower()
        if kind == KIND_DETECTIONS:
            self._handle_detections(msg, where)
            return None
        try:
            event, partner = self._check(msg, where)
        except SubmissionRefusedError as exc:
            self.stats[exc.reason] += 1
            self.stats["refused"] += 1
            log.warning("refused partner submission at %s: %s", where, exc)
            return None
        try:
            with self.lock:
                self.callback(event)
        except Exception:  # noqa: BLE001 - a failing consumer must not stop the topic
            self.stats["callback_errors"] += 1
            log.exception("submission callback failed on %s from %s", event.event_id, where)
            return None
        self.registry.record_event(partner, event.event_id)
        self.stats["accepted"] += 1
        log.info("accepted %s from partner %s at %s", event.event_id, partner, where)
        return event

    def _handle_detections(self, msg: Message, where: str) -> None:
        headers = _headers(msg)
        name = (headers.get(PARTNER_HEADER) or msg.key() or b"").decode("utf-8", "replace")
        try:
            if self.on_detections is None:
                raise SubmissionRefusedError("detections_not_enabled",
                                             "detection streams are not enabled here")
            detections = accept_detections(self.registry, name, msg.value() or b"",
                                           headers.get(SIGNATURE_HEADER), where=where)
        except SubmissionRefusedError as exc:
            self.stats[exc.reason] += 1
            self.stats["refused"] += 1
            log.warning("refused partner detections at %s: %s", where, exc)
            return
        try:
            with self.lock:
                self.on_detections(detections.partner, detections)
        except Exception:  # noqa: BLE001 - a failing consumer must not stop the topic
            self.stats["callback_errors"] += 1
            log.exception("detections callback failed for partner %s at %s", name, where)
            return
        self.stats["detections_accepted"] += 1
        log.info("accepted %d detections from partner %s at %s", len(detections),
                 detections.partner, where)

    def _check(self, msg: Message, where: str) -> tuple[Event, str]:
        headers = _headers(msg)
        raw_name = headers.get(PARTNER_HEADER) or msg.key() or b""
        name = raw_name.decode("utf-8", "replace")
        value = msg.value() or b""
        partner = self.registry.authenticate_signature(name, value,
                                                       headers.get(SIGNATURE_HEADER))
        fmt = partner.check_payload(value)
        if fmt == "voevent":
            try:
                safe_xml(value)
            except ValueError as exc:
                raise SubmissionRefusedError("refused_doctype", "XML with a DOCTYPE (entity "
                                             "declarations) is refused") from exc
            except etree.XMLSyntaxError as exc:
                if b"<!DOCTYPE" in value:
                    raise SubmissionRefusedError("refused_doctype", "XML with a DOCTYPE (entity "
                                                 f"declarations) is refused: {exc}") from exc
                raise SubmissionRefusedError("unparsable",
                                             f"not well-formed XML: {exc}") from exc
        if not partner.bucket.take():
            raise SubmissionRefusedError("rate_limited",
                                         f"rate limit of partner {partner.name!r} exceeded")
        try:
            event = parse_notice(value, source=f"partner:{partner.name} kafka:{where}",
                                 **self.options)
        except NotAnEventError as exc:
            raise SubmissionRefusedError("not_an_event", str(exc)) from exc
        except MmcrossError as exc:
            raise SubmissionRefusedError("bad_notice", str(exc)) from exc
        return event, partner.name

    def close(self) -> None:
        """Commit stored offsets and leave the group."""
        self.consumer.close()
