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
never blocks the topic. Our headers are read once each: a message giving one of them twice,
or one longer than :data:`MAX_HEADER_BYTES`, is refused as ``bad_headers``; a key (partner
name) longer than :data:`MAX_NAME_BYTES` as ``unknown_partner``. :func:`check_submission` is
the whole decision on one message, without Kafka. Accepted events get
``source = "partner:<name> kafka:<t>/<p>/<o>"``, are recorded in the registry and handed
to ``callback`` (e.g. ``engine.on_notice``).

A message with header ``mmcross-kind: detections`` carries the partner's own transient
detections instead (:mod:`mmcross.listeners.partner_detections`, same signature, size cap and token
bucket); accepted ones go to ``on_detections(partner, detections)`` (refused as
``detections_not_enabled`` when none was given) and are counted as ``detections_accepted``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
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


#: Largest value of one of our headers, bytes (a signature is 64 hex digits).
MAX_HEADER_BYTES = 1024
#: Longest partner name looked up, bytes (a key beyond it names no partner).
MAX_NAME_BYTES = 256
OUR_HEADERS = (PARTNER_HEADER, SIGNATURE_HEADER, KIND_HEADER)


@dataclass(frozen=True)
class Accepted:
    """A submission that passed every check: the partner and its event or detections."""

    partner: str
    event: Event | None = None
    detections: Detections | None = None


def our_headers(headers: Sequence[tuple[str, bytes | None]] | None) -> dict[str, bytes]:
    """Our headers (``mmcross-partner``, ``mmcross-signature``, ``mmcross-kind``, names in
    any case) of a message's header list; others are ignored, as are those without a value.

    Raises:
        SubmissionRefusedError: ``bad_headers`` when one of ours is given twice (which one
            counts would be ambiguous) or is longer than :data:`MAX_HEADER_BYTES`.
    """
    out: dict[str, bytes] = {}
    for name, value in headers or []:
        key = str(name).strip().lower()
        if key not in OUR_HEADERS or value is None:
            continue
        if key in out:
            raise SubmissionRefusedError("bad_headers", f"header {key!r} given twice")
        if len(value) > MAX_HEADER_BYTES:
            raise SubmissionRefusedError("bad_headers", f"header {key!r} of {len(value)} bytes "
                                         f"exceeds {MAX_HEADER_BYTES}")
        out[key] = bytes(value)
    return out


def partner_name(key: bytes | None, headers: Mapping[str, bytes]) -> str:
    """The submitting partner's name: header ``mmcross-partner``, else the message key.

    Raises:
        SubmissionRefusedError: ``unknown_partner`` for a name longer than
            :data:`MAX_NAME_BYTES` (no partner has one; the name is not echoed).
    """
    raw = headers.get(PARTNER_HEADER) or key or b""
    if len(raw) > MAX_NAME_BYTES:
        raise SubmissionRefusedError("unknown_partner", f"partner name of {len(raw)} bytes is "
                                     "not registered")
    return raw.decode("utf-8", "replace")


def check_submission(registry: PartnerRegistry, key: bytes | None,
                     headers: Sequence[tuple[str, bytes | None]] | None, value: bytes | None,
                     where: str, *, options: Mapping[str, Any] | None = None,
                     detections: bool = True) -> Accepted:
    """Decide on one message of the submission topic (``where`` = ``topic/partition/offset``).

    A notice is authenticated (signature), size- and format-checked, parsed safely (no
    DOCTYPE, no entities), rate-limited per partner and parsed by
    :func:`mmcross.listeners.parse_notice`; a ``mmcross-kind: detections`` message goes through
    :func:`mmcross.listeners.partner_detections.accept_detections` (``detections`` False:
    refused as ``detections_not_enabled``).

    Raises:
        SubmissionRefusedError: with the reason of the first failed check.
    """
    hdrs = our_headers(headers)
    name = partner_name(key, hdrs)
    body = value or b""
    kind = hdrs.get(KIND_HEADER, b"").decode("utf-8", "replace").strip().lower()
    if kind == KIND_DETECTIONS:
        if not detections:
            raise SubmissionRefusedError("detections_not_enabled",
                                         "detection streams are not enabled here")
        found = accept_detections(registry, name, body, hdrs.get(SIGNATURE_HEADER),
                                  where=where)
        return Accepted(found.partner, detections=found)
    partner = registry.authenticate_signature(name, body, hdrs.get(SIGNATURE_HEADER))
    fmt = partner.check_payload(body)
    if fmt == "voevent":
        try:
            safe_xml(body)
        except ValueError as exc:
            raise SubmissionRefusedError("refused_doctype", "XML with a DOCTYPE (entity "
                                         "declarations) is refused") from exc
        except etree.XMLSyntaxError as exc:
            if b"<!DOCTYPE" in body:
                raise SubmissionRefusedError("refused_doctype", "XML with a DOCTYPE (entity "
                                             f"declarations) is refused: {exc}") from exc
            raise SubmissionRefusedError("unparsable", f"not well-formed XML: {exc}") from exc
    if not partner.bucket.take():
        raise SubmissionRefusedError("rate_limited",
                                     f"rate limit of partner {partner.name!r} exceeded")
    try:
        event = parse_notice(body, source=f"partner:{partner.name} kafka:{where}",
                             **dict(options or {}))
    except NotAnEventError as exc:
        raise SubmissionRefusedError("not_an_event", str(exc)) from exc
    except MmcrossError as exc:
        raise SubmissionRefusedError("bad_notice", str(exc)) from exc
    return Accepted(partner.name, event=event)


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
        try:
            accepted = check_submission(self.registry, msg.key(), msg.headers(), msg.value(),
                                        where, options=self.options,
                                        detections=self.on_detections is not None)
        except SubmissionRefusedError as exc:
            self.stats[exc.reason] += 1
            self.stats["refused"] += 1
            log.warning("refused partner submission at %s: %s", where, exc)
            return None
        try:
            with self.lock:
                if accepted.detections is not None:
                    assert self.on_detections is not None
                    self.on_detections(accepted.partner, accepted.detections)
                else:
                    assert accepted.event is not None
                    self.callback(accepted.event)
        except Exception:  # noqa: BLE001 - a failing consumer must not stop the topic
            self.stats["callback_errors"] += 1
            log.exception("submission callback failed for partner %s at %s", accepted.partner,
                          where)
            return None
        if accepted.detections is not None:
            self.stats["detections_accepted"] += 1
            log.info("accepted %d detections from partner %s at %s",
                     len(accepted.detections), accepted.partner, where)
            return None
        assert accepted.event is not None
        self.registry.record_event(accepted.partner, accepted.event.event_id)
        self.stats["accepted"] += 1
        log.info("accepted %s from partner %s at %s", accepted.event.event_id,
                 accepted.partner, where)
        return accepted.event

    def close(self) -> None:
        """Commit stored offsets and leave the group."""
        self.consumer.close()
