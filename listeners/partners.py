"""Partner registry: who may push events in, with which credential, formats, size and rate.

Partners are declared in the configuration as ``[partners.<name>]`` tables (see
``config/default.toml``). Only a SHA-256 hash of each partner's secret token is kept
(``token_sha256``, hex); tokens are compared with :func:`hmac.compare_digest`.

Credentials (the scheme, shared by both submission endpoints):

* VTP (:mod:`mmcross.listeners.vtp_receiver`): the VOEvent's IVORN authority (``ivo://AUTHORITY/...``)
  must be one the partner registered (``authorities``) and the packet carries the partner's
  token in a ``<Param name="mmcross_token" value="..."/>`` (anywhere in ``What``). The Param
  is removed before the notice is parsed or stored, so the secret is never re-broadcast.
  A JSON notice sent over VTP carries ``"mmcross_partner"`` and ``"mmcross_token"`` keys
  instead (removed likewise).
* Kafka (:mod:`mmcross.listeners.partner_kafka`): the message key is the partner name and the header
  ``mmcross-signature`` is ``hex(HMAC-SHA256(key=sha256(token), msg=name + "\\n" + value))``
  (:func:`sign_submission`). The token itself never travels; the stored hash is the signing
  key, so the configuration file must be protected like a key.

:class:`PartnerCounterpartFilter` tells the VTP broadcaster (``brokers/vtp.py``) which matches
belong to a partner's own submissions; it has the ``accepts(match)`` method the broadcaster's
per-subscriber filters have.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mmcross.model.config import Config
from mmcross.model.errors import ConfigError
from mmcross.model.match import Match
from mmcross.vtp.receiver import SubmissionRefusedError, TokenBucket

log = logging.getLogger(__name__)

FORMATS = ("voevent", "json")
TOKEN_PARAM = "mmcross_token"
PARTNER_KEY = "mmcross_partner"
SIGNATURE_HEADER = "mmcross-signature"
PARTNER_HEADER = "mmcross-partner"
DEFAULTS: dict[str, Any] = {
    "formats": ["voevent", "json"],
    "max_bytes": 262144,
    "rate": 1.0,
    "burst": 20,
}


def hash_token(token: str | bytes) -> str:
    """SHA-256 of a partner token, hex (what ``token_sha256`` in the config holds)."""
    data = token.encode() if isinstance(token, str) else token
    return hashlib.sha256(data).hexdigest()


def sign_submission(token: str | bytes, partner: str, value: bytes) -> str:
    """The ``mmcross-signature`` header a partner puts on a Kafka submission (hex)."""
    key = hashlib.sha256(token.encode() if isinstance(token, str) else token).digest()
    return hmac.new(key, partner.encode() + b"\n" + value, hashlib.sha256).hexdigest()


def ivorn_authority(ivorn: str) -> str:
    """``"ivo://AUTHORITY/path#local"`` -> ``"authority"`` (lower case); ``""`` if not an IVORN."""
    if not ivorn.lower().startswith("ivo://"):
        return ""
    return ivorn[6:].split("/", 1)[0].split("#", 1)[0].lower()


def sniff_format(payload: bytes) -> str:
    """``"voevent"`` (XML), ``"json"``, or ``""`` for anything else."""
    head = payload.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    return {b"<": "voevent", b"{": "json"}.get(head, "")


@dataclass
class Partner:
    """One registered partner.

    Attributes:
        name: the partner's name (the ``[partners.<name>]`` key).
        token_sha256: SHA-256 of the partner's secret token (32 bytes).
        authorities: IVORN authorities the partner may publish under (lower case).
        formats: accepted payload formats, subset of ``("voevent", "json")``.
        max_bytes: largest submission accepted, bytes.
        rate, burst: token bucket of accepted submissions (per second, burst size).
        hosts: IP addresses the partner connects from (empty = any); also the addresses
            whose broadcaster subscription gets this partner's counterparts.
        stream: the ``stream`` sub-table (rules of :mod:`mmcross.matchers.partner_streams`).
    """

    name: str
    token_sha256: bytes
    authorities: frozenset[str] = frozenset()
    formats: frozenset[str] = frozenset(FORMATS)
    max_bytes: int = 262144
    rate: float = 1.0
    burst: float = 20.0
    hosts: frozenset[str] = frozenset()
    stream: Mapping[str, Any] = field(default_factory=dict)
    bucket: TokenBucket = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.bucket = TokenBucket(self.rate, self.burst)

    def check_token(self, token: str | bytes | None) -> bool:
        """True when ``token`` hashes to ``token_sha256`` (constant-time comparison)."""
        if not token:
            return False
        return hmac.compare_digest(bytes.fromhex(hash_token(token)), self.token_sha256)

    def check_signature(self, value: bytes, signature: str | bytes | None) -> bool:
        """True when ``signature`` (hex) is this partner's HMAC of ``value``."""
        if not signature:
            return False
        sig = signature.decode("ascii", "replace") if isinstance(signature, bytes) else signature
        expected = hmac.new(self.token_sha256, self.name.encode() + b"\n" + value,
                            hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected.encode(), sig.strip().lower().encode())

    def check_payload(self, payload: bytes) -> str:
        """Size and format checks; returns the format. Raises :class:`SubmissionRefusedError`."""
        if len(payload) > self.max_bytes:
            raise SubmissionRefusedError("oversized", f"submission of {len(payload)} bytes from "
                                    f"partner {self.name!r} exceeds its {self.max_bytes}")
        fmt = sniff_format(payload)
        if fmt not in self.formats:
            raise SubmissionRefusedError("format_not_allowed", f"format {fmt or 'unknown'!r} not "
                                    f"allowed for partner {self.name!r} "
                                    f"(allowed: {sorted(self.formats)})")
        return fmt


def _partner_from_mapping(name: str, data: Mapping[str, Any],
                          defaults: Mapping[str, Any]) -> Partner:
    where = f"partners.{name}"
    known = {"token_sha256", "authorities", "formats", "max_bytes", "rate", "burst", "hosts",
             "stream"}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(known)})")
    digest = str(data.get("token_sha256", "")).strip().lower()
    try:
        token_sha256 = bytes.fromhex(digest)
    except ValueError:
        token_sha256 = b""
    if len(token_sha256) != 32:
        raise ConfigError(f"{where}.token_sha256 must be 64 hex digits (sha256 of the token; "
                          "python -c 'import hashlib,sys;print(hashlib.sha256(sys.argv[1]"
                          ".encode()).hexdigest())' TOKEN)")
    merged = {**defaults, **data}
    formats = frozenset(str(f).lower() for f in merged["formats"])
    if not formats or formats - set(FORMATS):
        raise ConfigError(f"{where}.formats must be a non-empty subset of {FORMATS}, "
                          f"got {sorted(formats)}")
    max_bytes, rate, burst = merged["max_bytes"], merged["rate"], merged["burst"]
    if not isinstance(max_bytes, int) or max_bytes < 1:
        raise ConfigError(f"{where}.max_bytes must be a positive integer, got {max_bytes!r}")
    if not isinstance(rate, int | float) or rate < 0 or not isinstance(burst, int | float) \
            or burst < 1:
        raise ConfigError(f"{where}: rate must be >= 0 per s and burst >= 1, got "
                          f"{rate!r}, {burst!r}")
    return Partner(
        name=name, token_sha256=token_sha256,
        authorities=frozenset(str(a).lower() for a in data.get("authorities", [])),
        formats=formats, max_bytes=max_bytes, rate=float(rate), burst=float(burst),
        hosts=frozenset(str(h) for h in data.get("hosts", [])),
        stream=dict(data.get("stream", {}) or {}))


class PartnerRegistry:
    """The registered partners, looked up by name or IVORN authority.

    Also remembers which event ids each partner submitted (:meth:`record_event`), so that
    :meth:`counterpart_filter` can tell the broadcaster which matches are the partner's.
    """

    def __init__(self, partners: Iterable[Partner]) -> None:
        self.partners: dict[str, Partner] = {}
        self._by_authority: dict[str, list[Partner]] = {}
        for p in partners:
            if p.name in self.partners:
                raise ConfigError(f"partner {p.name!r} declared twice")
            self.partners[p.name] = p
            for a in p.authorities:
                self._by_authority.setdefault(a, []).append(p)
        self._events: dict[str, set[str]] = {name: set() for name in self.partners}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config) -> PartnerRegistry:
        """From ``[partners.<name>]`` tables, with defaults from ``[submit.defaults]``."""
        defaults = {**DEFAULTS, **(config.get("submit.defaults", {}) or {})}
        section = config.get("partners", {}) or {}
        if not isinstance(section, Mapping):
            raise ConfigError("[partners] must be a table of [partners.<name>] tables")
        return cls(_partner_from_mapping(name, data, defaults) for name, data in section.items())

    def __len__(self) -> int:
        return len(self.partners)

    def get(self, name: str) -> Partner | None:
        return self.partners.get(name)

    def authenticate_ivorn(self, ivorn: str, token: str | None, peer_host: str = "") -> Partner:
        """The partner owning ``ivorn``'s authority whose token is ``token``.

        Raises:
            SubmissionRefusedError: ``unknown_partner`` (authority not registered),
                ``bad_credential`` (no or wrong token), ``host_not_allowed``.
        """
        authority = ivorn_authority(ivorn)
        candidates = self._by_authority.get(authority, [])
        if not candidates:
            raise SubmissionRefusedError("unknown_partner", f"IVORN authority {authority!r} of "
                                    f"{ivorn!r} is not registered by any partner")
        # Check every candidate so the time taken does not say which one matched.
        matched = [p for p in candidates if p.check_token(token)]
        if not matched:
            raise SubmissionRefusedError("bad_credential", f"missing or wrong {TOKEN_PARAM} for "
                                    f"IVORN authority {authority!r}")
        return self._check_host(matched[0], peer_host)

    def authenticate_token(self, name: str, token: str | None, peer_host: str = "") -> Partner:
        """The partner ``name`` if ``token`` is its token (JSON submissions over VTP)."""
        partner = self.partners.get(name)
        if partner is None:
            raise SubmissionRefusedError("unknown_partner", f"partner {name!r} is not registered")
        if not partner.check_token(token if isinstance(token, str) else None):
            raise SubmissionRefusedError("bad_credential", f"missing or wrong {TOKEN_PARAM} "
                                         f"for partner {name!r}")
        return self._check_host(partner, peer_host)

    def authenticate_signature(self, name: str, value: bytes, signature: str | bytes | None,
                               peer_host: str = "") -> Partner:
        """The partner ``name`` if ``signature`` is its HMAC of ``value``."""
        partner = self.partners.get(name)
        if partner is None:
            raise SubmissionRefusedError("unknown_partner", f"partner {name!r} is not registered")
        if not partner.check_signature(value, signature):
            raise SubmissionRefusedError("bad_credential", f"missing or wrong {SIGNATURE_HEADER} "
                                    f"for partner {name!r}")
        return self._check_host(partner, peer_host)

    @staticmethod
    def _check_host(partner: Partner, peer_host: str) -> Partner:
        if partner.hosts and peer_host and peer_host not in partner.hosts:
            raise SubmissionRefusedError("host_not_allowed", f"partner {partner.name!r} may not "
                                    f"submit from {peer_host}")
        return partner

    # -- the partner's own events, for its counterpart subscription ------------------------

    def record_event(self, partner: str, event_id: str) -> None:
        """Remember that ``partner`` submitted ``event_id``."""
        with self._lock:
            self._events.setdefault(partner, set()).add(event_id)

    def event_ids(self, partner: str) -> frozenset[str]:
        """Event ids ``partner`` submitted so far."""
        with self._lock:
            return frozenset(self._events.get(partner, ()))

    def restore(self, events: Iterable[Any]) -> int:
        """Re-learn partner event ids from restored events (``source`` starting with
        ``"partner:<name> "``, as both endpoints write it); returns how many were recorded."""
        n = 0
        for event in events:
            source = str(getattr(event, "source", ""))
            if source.startswith("partner:"):
                name = source[len("partner:"):].split(" ", 1)[0]
                if name in self.partners:
                    self.record_event(name, event.event_id)
                    n += 1
        return n

    def owns(self, partner: str, event_id: str) -> bool:
        """True when ``partner`` submitted ``event_id``."""
        with self._lock:
            return event_id in self._events.get(partner, ())

    def counterpart_filter(self, partner: str, base: Any = None) -> PartnerCounterpartFilter:
        """A broadcaster filter passing only matches of ``partner``'s own events."""
        if partner not in self.partners:
            raise ConfigError(f"partner {partner!r} is not registered")
        return PartnerCounterpartFilter(self, partner, base)

    def broadcaster_filters(self, base: Any = None) -> dict[str, PartnerCounterpartFilter]:
        """Subscriber IP -> counterpart filter, for every partner listing ``hosts``.

        For ``mmcross.brokers.vtp.BroadcasterSettings(filters=...)``; an IP listed by two partners
        is a configuration error.
        """
        out: dict[str, PartnerCounterpartFilter] = {}
        for p in self.partners.values():
            for host in p.hosts:
                if host in out:
                    raise ConfigError(f"host {host} is listed by partners "
                                      f"{out[host].partner!r} and {p.name!r}")
                out[host] = self.counterpart_filter(p.name, base)
        return out


@dataclass(frozen=True)
class PartnerCounterpartFilter:
    """Passes matches (and their retractions) of events the partner submitted.

    ``base``, when given, is another filter (e.g. ``mmcross.brokers.vtp.SubscriptionFilter``) that
    must accept the match too. The event-id set is read live, so events submitted after the
    broadcaster started are covered.
    """

    registry: PartnerRegistry
    partner: str
    base: Any = None

    def accepts(self, match: Match) -> bool:
        if self.base is not None and not self.base.accepts(match):
            return False
        return self.registry.owns(self.partner, match.event_id)
