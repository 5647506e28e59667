"""Counterpart and retraction VOEvents to VTP subscribers: the broadcaster role as an engine sink.

:class:`VTPBroadcaster` is the engine's report sink: each :class:`~mmcross.model.match.Match`
becomes a counterpart VOEvent (a retraction VOEvent when ``retracted``) and goes out through
the broadcaster role of :mod:`mmcross.vtp.broadcaster` (iamalive every 60 s, ack/nak handling,
a bounded queue per subscriber so a stalled one never delays the others). Per-subscriber
filters (:class:`SubscriptionFilter`) are chosen by the subscriber's IP address, with a default
for everyone else; :meth:`VTPBroadcaster.write` never blocks the engine.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmcross.brokers.voevent_out import counterpart_voevent, retraction_voevent
from mmcross.model.config import Config
from mmcross.model.errors import ConfigError
from mmcross.model.event import EventKind
from mmcross.model.match import Match
from mmcross.vtp.broadcaster import OVERFLOW_POLICIES, Broadcaster, SubscriberInfo

log = logging.getLogger(__name__)

DEFAULT_IVORN = "ivo://mmcross/broadcaster"


# -- filters -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubscriptionFilter:
    """Which matches a subscriber receives (a retraction passes iff its match did).

    Attributes:
        kinds: event kinds (``"gw"``, ``"grb"``...); empty = all.
        instruments: instruments, case-insensitive (``"LVK"``, ``"Fermi-GBM"``); empty = all.
        max_credible_level: largest searched probability (0..1] at the alert position;
            smaller is more central, so 0.5 keeps alerts inside the 50% credible region.
        max_p_chance: largest chance-coincidence probability (0..1].
    """

    kinds: frozenset[str] = frozenset()
    instruments: frozenset[str] = frozenset()
    max_credible_level: float = 1.0
    max_p_chance: float = 1.0

    def accepts(self, match: Match) -> bool:
        return ((not self.kinds or match.event_kind in self.kinds)
                and (not self.instruments or match.instrument.lower() in self.instruments)
                and match.credible_level <= self.max_credible_level
                and match.p_chance <= self.max_p_chance)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "filter") -> SubscriptionFilter:
        """From a config table with the attribute names as keys."""
        unknown = set(data) - {"kinds", "instruments", "max_credible_level", "max_p_chance"}
        if unknown:
            raise ConfigError(f"{where}: unknown filter keys {sorted(unknown)}")
        kinds = frozenset(str(k).lower() for k in data.get("kinds", []))
        bad = kinds - {str(k) for k in EventKind}
        if bad:
            raise ConfigError(f"{where}: unknown event kinds {sorted(bad)}")
        limits = {}
        for key in ("max_credible_level", "max_p_chance"):
            value = data.get(key, 1.0)
            if not isinstance(value, int | float) or not 0 < value <= 1:
                raise ConfigError(f"{where}.{key} must be in (0, 1], got {value!r}")
            limits[key] = float(value)
        return cls(kinds=kinds,
                   instruments=frozenset(str(i).lower() for i in data.get("instruments", [])),
                   **limits)


# -- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BroadcasterSettings:
    """Where and how to broadcast.

    Attributes:
        host, port: listening address (127.0.0.1 by default; port 0 = any free port).
        ivorn: our IVORN in iamalive packets.
        iamalive_interval: seconds between iamalive packets.
        max_missed_iamalive: unanswered iamalives tolerated at a tick (Comet: 1).
        max_outstanding_acks: unacknowledged events tolerated at a tick.
        queue_size: packets queued per subscriber before the overflow policy applies.
        overflow: ``"drop-oldest"`` or ``"disconnect"``.
        max_reply_bytes: largest packet accepted from a subscriber.
        send_buffer_bytes: when > 0, the kernel send buffer (``SO_SNDBUF``) and the asyncio
            write-buffer high-water mark of each subscriber's connection, bytes; bounds the
            memory a stalled subscriber holds beyond its queue (0 = system defaults).
        default_filter: filter of subscribers not listed in ``filters``.
        filters: subscriber IP address -> filter.

    The defaults are the broadcaster role's (:class:`mmcross.vtp.broadcaster.Broadcaster`).
    """

    host: str = "127.0.0.1"
    port: int = 8099
    ivorn: str = DEFAULT_IVORN
    iamalive_interval: float = Broadcaster.IAMALIVE_INTERVAL
    max_missed_iamalive: int = Broadcaster.MAX_MISSED_IAMALIVE
    max_outstanding_acks: int = Broadcaster.MAX_OUTSTANDING_ACKS
    queue_size: int = Broadcaster.QUEUE_SIZE
    overflow: str = "drop-oldest"
    max_reply_bytes: int = Broadcaster.MAX_REPLY_BYTES
    send_buffer_bytes: int = 0
    default_filter: SubscriptionFilter = SubscriptionFilter()
    filters: Mapping[str, SubscriptionFilter] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.overflow not in OVERFLOW_POLICIES:
            raise ConfigError(f"vtp.broadcast.overflow must be one of {OVERFLOW_POLICIES}, "
                              f"got {self.overflow!r}")
        if self.queue_size < 1 or self.iamalive_interval <= 0 or self.max_missed_iamalive < 1:
            raise ConfigError("vtp.broadcast: queue_size and max_missed_iamalive must be >= 1 "
                              "and iamalive_interval > 0 s")

    @classmethod
    def from_config(cls, config: Config, **overrides: Any) -> BroadcasterSettings:
        """From ``[vtp.broadcast]``; keyword overrides (e.g. CLI ``host``/``port``) win."""
        section = config.get("vtp.broadcast", {}) or {}
        values: dict[str, Any] = {
            k: section[k] for k in ("host", "port", "ivorn", "iamalive_interval",
                                    "max_missed_iamalive", "max_outstanding_acks",
                                    "queue_size", "overflow", "max_reply_bytes",
                                    "send_buffer_bytes")
            if k in section}
        values["default_filter"] = SubscriptionFilter.from_mapping(
            section.get("default_filter", {}), "vtp.broadcast.default_filter")
        values["filters"] = {
            ip: SubscriptionFilter.from_mapping(f, f"vtp.broadcast.filters.{ip}")
            for ip, f in (section.get("filters", {}) or {}).items()}
        values.update(overrides)
        return cls(**values)


# -- the sink ------------------------------------------------------------------------------


class VTPBroadcaster:
    """VTP server sending counterpart/retraction VOEvents; an engine report sink.

    Args:
        settings: address, timeouts, queue bound, filters.
        voevent: builds the packet of a match (by default :func:`counterpart_voevent` or,
            for ``retracted`` matches, :func:`retraction_voevent`).

    :attr:`stats` are the role's counters (:mod:`mmcross.vtp.broadcaster`) with ``matches``
    (matches dispatched) for its ``events``.
    """

    def __init__(self, settings: BroadcasterSettings | None = None, *,
                 voevent: Callable[[Match], bytes] | None = None) -> None:
        self.settings = s = settings or BroadcasterSettings()
        self.role: Broadcaster[Match] = Broadcaster(
            voevent or _default_voevent, self._filter_for, host=s.host, port=s.port,
            ivorn=s.ivorn, iamalive_interval=s.iamalive_interval,
            max_missed_iamalive=s.max_missed_iamalive,
            max_outstanding_acks=s.max_outstanding_acks, queue_size=s.queue_size,
            overflow=s.overflow, max_reply_bytes=s.max_reply_bytes,
            send_buffer_bytes=s.send_buffer_bytes)

    @classmethod
    def from_config(cls, config: Config, **overrides: Any) -> VTPBroadcaster:
        """Settings from ``[vtp.broadcast]``; keyword overrides win."""
        return cls(BroadcasterSettings.from_config(config, **overrides))

    def _filter_for(self, host: str) -> SubscriptionFilter:
        return self.settings.filters.get(host, self.settings.default_filter)

    @property
    def stats(self) -> Counter[str]:
        """A snapshot of the counters."""
        stats = Counter(self.role.stats)
        stats["matches"] = stats["events"]
        return stats

    @property
    def address(self) -> tuple[str, int] | None:
        """The bound ``(host, port)`` once started."""
        return self.role.address

    def start(self) -> tuple[str, int]:
        """Start the server thread; returns the bound ``(host, port)``.

        Raises:
            OSError: the server did not start (e.g. the port is taken).
        """
        return self.role.start()

    def write(self, matches: Sequence[Match]) -> None:
        """Queue the VOEvents of ``matches`` for every subscriber whose filter accepts them;
        never blocks (dropped and counted as ``not_running`` when the server is not)."""
        self.role.publish(matches)

    def close(self) -> None:
        """Disconnect every subscriber and stop the server."""
        self.role.close()

    def subscribers(self) -> list[SubscriberInfo]:
        """A snapshot of the connected subscribers."""
        return self.role.subscribers()


def _default_voevent(match: Match) -> bytes:
    return retraction_voevent(match) if match.retracted else counterpart_voevent(match)
