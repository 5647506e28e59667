"""Partner submissions over VTP: the receiver role of :mod:`mmcross.vtp.receiver` plus partner
authentication and notice parsing.

The receiver role (:class:`mmcross.vtp.receiver.Receiver`) frames, rate-limits per connection,
parses safely and acks or naks; this module is its :class:`~mmcross.vtp.receiver.SubmissionHandler`
for partners.

VTP has no authentication; the scheme (see :mod:`mmcross.listeners.partners`) is: the VOEvent's
IVORN authority must be registered by a partner AND the packet carries that partner's token in
``<Param name="mmcross_token" value="..."/>``. A per-packet credential (rather than a first
"authenticate" frame) works with every stock VTP sender, survives relays, and lets one
connection never be half-trusted. The Param is stripped before the notice is parsed, stored
or re-broadcast. A frame may also hold a GCN-unified-schema JSON notice (a mmcross extension
of VTP) carrying ``"mmcross_partner": NAME`` and ``"mmcross_token": TOKEN`` at its top level
(both removed before parsing); its ack/nak ``Origin`` is ``json:<partner>:<id>``.

Checks, in order, each refusal logged with the peer and counted in :attr:`VTPReceiver.stats`:

1. the receiver role's limits: frame size (``oversized_frames``), per-connection token bucket
   (``rate_limited``), safe XML (``refused_doctype``, ``unparsable``, ``not_voevent``);
2. credential (authority + token): nak ``authentication failed`` (the same text for unknown
   authority and wrong token), nothing reaches the callback;
3. the partner's own size cap, formats and token bucket;
4. :func:`mmcross.listeners.parse_notice` (the schema check): nak with the parser's message.

Accepted events get ``source = "partner:<name> vtp://<host:port> <ivorn>"``, are recorded in
the :class:`~mmcross.listeners.partners.PartnerRegistry` (for the partner's counterpart
subscription) and handed to ``callback`` (e.g. ``engine.on_notice``) under ``lock``; the ack is
sent once the callback returned.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from lxml import etree

from mmcross.listeners.dispatch import parse_notice
from mmcross.listeners.partners import (
    PARTNER_KEY,
    TOKEN_PARAM,
    Partner,
    PartnerRegistry,
    SubmissionRefusedError,
    sniff_format,
)
from mmcross.model.config import Config, notice_options
from mmcross.model.errors import MmcrossError, NotAnEventError
from mmcross.model.event import Event
from mmcross.vtp.receiver import Receiver, Submission

log = logging.getLogger(__name__)

DEFAULT_IVORN = "ivo://mmcross/receiver"
AUTH_REASONS = ("unknown_partner", "bad_credential", "host_not_allowed")


@dataclass(frozen=True)
class ReceiverSettings:
    """Where and how to receive partner submissions (``[submit.vtp]``).

    Attributes:
        host, port: listening address (port 0 = any free port; see :attr:`VTPReceiver.port`).
        ivorn: our IVORN in ack/nak replies.
        max_frame_bytes: largest frame read at all (bytes); partners have smaller caps.
        idle_timeout: seconds of silence (also inside a frame) before a connection is closed.
        rate, burst: per-connection token bucket of frames (per second, burst size).
        max_refusals: consecutive refused frames after which the connection is closed.
        max_connections, max_connections_per_host: concurrent connection limits.

    The defaults are the receiver role's (:class:`mmcross.vtp.receiver.Receiver`).
    """

    host: str = "127.0.0.1"
    port: int = 8098
    ivorn: str = DEFAULT_IVORN
    max_frame_bytes: int = Receiver.MAX_FRAME_BYTES
    idle_timeout: float = Receiver.IDLE_TIMEOUT
    rate: float = Receiver.RATE
    burst: float = Receiver.BURST
    max_refusals: int = Receiver.MAX_REFUSALS
    max_connections: int = Receiver.MAX_CONNECTIONS
    max_connections_per_host: int = Receiver.MAX_CONNECTIONS_PER_HOST

    @classmethod
    def from_config(cls, config: Config, **overrides: Any) -> ReceiverSettings:
        """From ``[submit.vtp]``; keyword overrides (e.g. CLI ``port``) win."""
        section = config.get("submit.vtp", {}) or {}
        values = {k: section[k] for k in cls.__dataclass_fields__ if k in section}
        values.update(overrides)
        return cls(**values)


class VTPReceiver:
    """The partner submission receiver: the VTP receiver role with partner authentication.

    Args:
        settings: address and limits.
        registry: the partners.
        callback: called with each accepted :class:`Event` (e.g. ``engine.on_notice``).
        options: keyword arguments of :func:`mmcross.listeners.parse_notice`.
        lock: held around each ``callback`` call when given.

    ``stats`` (the role's counters) counts ``connections``, ``refused_connections``,
    ``frames``, ``accepted``, ``refused`` (all refusals) and one counter per refusal reason:
    ``oversized_frames``, ``truncated_frames``, ``rate_limited``, ``refused_doctype``,
    ``unparsable``, ``not_voevent``, ``unknown_partner``, ``bad_credential``,
    ``host_not_allowed``, ``oversized``, ``format_not_allowed``, ``bad_notice``,
    ``not_an_event``; ``handler_errors`` counts failing callbacks (nak, retry later).
    """

    def __init__(self, settings: ReceiverSettings, registry: PartnerRegistry,
                 callback: Callable[[Event], object], *, options: dict[str, Any] | None = None,
                 lock: AbstractContextManager[Any] | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.callback = callback
        self.options = dict(options or {})
        self.lock: AbstractContextManager[Any] = lock if lock is not None else nullcontext()
        self.role = Receiver(self._accept, host=settings.host, port=settings.port,
                             ivorn=settings.ivorn, idle_timeout=settings.idle_timeout,
                             max_frame_bytes=settings.max_frame_bytes, rate=settings.rate,
                             burst=settings.burst, max_refusals=settings.max_refusals,
                             max_connections=settings.max_connections,
                             max_connections_per_host=settings.max_connections_per_host)
        self.stats = self.role.stats

    @classmethod
    def from_config(cls, config: Config, callback: Callable[[Event], object], *,
                    registry: PartnerRegistry | None = None,
                    lock: AbstractContextManager[Any] | None = None,
                    **overrides: Any) -> VTPReceiver:
        """Settings from ``[submit.vtp]``, partners from ``[partners.*]`` unless given."""
        return cls(ReceiverSettings.from_config(config, **overrides),
                   registry if registry is not None else PartnerRegistry.from_config(config),
                   callback, options=notice_options(config), lock=lock)

    @property
    def port(self) -> int:
        """The port actually listened on (after :meth:`start`)."""
        return self.role.port

    def start(self) -> VTPReceiver:
        """Listen and accept in background threads."""
        self.role.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection."""
        self.role.stop(timeout)

    close = stop

    def __enter__(self) -> VTPReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the handler ---------------------------------------------------------------------

    def _accept(self, submission: Submission) -> str:
        """Authenticate, check and parse one submission, then hand it on; its Origin."""
        origin = ""
        try:
            if submission.packet is not None:
                root = submission.packet.root
                origin = submission.packet.ivorn
                partner = self.registry.authenticate_ivorn(origin, _pop_token(root),
                                                           submission.host)
                clean = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
            elif sniff_format(submission.payload) == "json":
                partner, clean, origin = self._check_json(submission.payload, submission.host)
            else:
                raise SubmissionRefusedError("unparsable", "neither XML nor a JSON object")
            partner.check_payload(submission.payload)
            if not partner.bucket.take():
                raise SubmissionRefusedError(
                    "rate_limited", f"rate limit of partner {partner.name!r} exceeded")
            source = f"partner:{partner.name} vtp://{submission.peer} {origin}"
            try:
                event = parse_notice(clean, source=source, **self.options)
            except NotAnEventError as exc:
                raise SubmissionRefusedError("not_an_event", str(exc)) from exc
            except MmcrossError as exc:
                raise SubmissionRefusedError("bad_notice", str(exc)) from exc
        except SubmissionRefusedError as exc:
            raise SubmissionRefusedError(
                exc.reason, str(exc), exc.origin or origin,
                "authentication failed" if exc.reason in AUTH_REASONS else exc.reply) from exc
        with self.lock:
            self.callback(event)
        self.registry.record_event(partner.name, event.event_id)
        log.info("accepted %s (%s) from partner %s at %s", event.event_id, origin, partner.name,
                 submission.peer)
        return origin

    def _check_json(self, payload: bytes, host: str) -> tuple[Partner, bytes, str]:
        """Authenticate a JSON submission; (partner, JSON without credentials, origin)."""
        try:
            doc = json.loads(payload)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise SubmissionRefusedError("unparsable", f"malformed JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise SubmissionRefusedError("unparsable", "JSON submission is not an object")
        name, token = doc.pop(PARTNER_KEY, None), doc.pop(TOKEN_PARAM, None)
        partner = self.registry.authenticate_token(str(name or ""), token, host)
        origin = f"json:{partner.name}:{doc.get('id', doc.get('trigger_time', ''))}"
        return partner, json.dumps(doc).encode(), origin


def _pop_token(root: Any) -> str | None:
    """Remove every ``mmcross_token`` Param from the tree; the first one's value."""
    params = [p for p in root.iter("{*}Param") if p.get("name") == TOKEN_PARAM]
    for param in params:
        param.getparent().remove(param)
    return params[0].get("value") if params else None
