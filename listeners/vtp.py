"""GCN Classic over VTP: the subscriber role with a handler feeding ``parse_notice``.

The subscriber role (:class:`mmcross.vtp.subscriber.Subscriber`) speaks the protocol of
``gcn.voeventclient.listen`` (pygcn), the client GCN Classic documents: it answers iamalive,
acks every VOEvent (never a ``nak``), caps the frame size before allocating, parses with
entities and DTDs off, and reconnects with back-off over a server list. pygcn's ``listen``
itself is not used because it cannot be stopped, allocates the length announced by the peer
before reading it (a 4 GB prefix allocates 4 GB), parses with entity resolution on and gives
no hook for counting refusals.

This module is the role's handler: each VOEvent is parsed by
:func:`mmcross.listeners.parse_notice` and the resulting :class:`~mmcross.model.event.Event` is
handed to a callback from the listener's own thread, holding ``lock`` when one is given (share
it with whatever calls the engine's ``on_alerts``), or pass ``queue.Queue.put`` as the callback
and drain the queue in the engine's thread. Parse errors are logged and counted in
:attr:`VTPListener.stats`, never fatal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from mmcross.listeners.dispatch import parse_notice
from mmcross.model.config import Config, notice_options
from mmcross.model.errors import ConfigError, MmcrossError, NotAnEventError
from mmcross.model.event import Event
from mmcross.vtp.base import Packet
from mmcross.vtp.subscriber import Subscriber, parse_host_port

log = logging.getLogger(__name__)

DEFAULT_IVORN = "ivo://mmcross/vtp-listener"

@dataclass(frozen=True)
class VTPListenerSettings:
    """How to reach GCN Classic over VTP.

    Attributes:
        servers: ``(host, port)`` pairs tried in turn until one connects.
        ivorn: our IVORN in ``ack``/``iamalive`` replies.
        iamalive_timeout: seconds without any packet after which the connection is
            assumed dead and re-opened (GCN sends iamalive every 60 s).
        backoff_min, backoff_max: reconnect delay, seconds, doubling after each failure,
            reset after a connection that received packets.
        max_packet_bytes: larger announced packets are refused and the connection dropped.
        connect_timeout: seconds per connection attempt.

    The defaults are the subscriber role's (:class:`mmcross.vtp.subscriber.Subscriber`).
    """

    servers: tuple[tuple[str, int], ...]
    ivorn: str = DEFAULT_IVORN
    iamalive_timeout: float = Subscriber.IAMALIVE_TIMEOUT
    backoff_min: float = Subscriber.BACKOFF_MIN
    backoff_max: float = Subscriber.BACKOFF_MAX
    max_packet_bytes: int = Subscriber.MAX_FRAME_BYTES
    connect_timeout: float = Subscriber.CONNECT_TIMEOUT

    @classmethod
    def from_config(cls, config: Config, servers: Iterable[str] | None = None,
                    **overrides: Any) -> VTPListenerSettings:
        """From ``[vtp.listen]``; ``servers`` (``"HOST:PORT"`` strings) replace the config's."""
        texts = list(servers) if servers is not None else list(
            config.get("vtp.listen.servers", []))
        values: dict[str, Any] = {
            "servers": tuple(parse_host_port(s) for s in texts),
            "ivorn": str(config.get("vtp.listen.ivorn", DEFAULT_IVORN)),
            "iamalive_timeout": float(config.get("vtp.listen.iamalive_timeout",
                                                 cls.iamalive_timeout)),
            "backoff_min": float(config.get("vtp.listen.backoff_min", cls.backoff_min)),
            "backoff_max": float(config.get("vtp.listen.backoff_max", cls.backoff_max)),
            "max_packet_bytes": int(config.get("vtp.listen.max_packet_bytes",
                                               cls.max_packet_bytes)),
        }
        values.update(overrides)
        return cls(**values)


class VTPListener:
    """GCN Classic over VTP: the subscriber role with a notice-parsing handler.

    Args:
        settings: servers and timeouts.
        callback: called with each parsed :class:`Event` (e.g. ``engine.on_notice``).
        options: keyword arguments of :func:`mmcross.listeners.parse_notice`
            (:func:`mmcross.model.config.notice_options`).
        lock: held around each ``callback`` call when given.

    ``stats`` holds the role's counters (:mod:`mmcross.vtp.subscriber`: ``connections``,
    ``packets``, ``iamalive``, ``unparsable``, ``refused_doctype``, ``oversized_frames``,
    ``truncated_frames``, ``timeouts``, ``connect_failures``...) and this handler's:
    ``events``, ``not_events`` (test role, GCN iamalive notices...), ``bad_notices``,
    ``callback_errors``.
    """

    def __init__(self, settings: VTPListenerSettings, callback: Callable[[Event], object],
                 *, options: dict[str, Any] | None = None,
                 lock: AbstractContextManager[Any] | None = None) -> None:
        if not settings.servers:
            raise ConfigError("VTP listener needs at least one HOST:PORT server "
                              "(vtp.listen.servers or --gcn-vtp)")
        self.settings = settings
        self.callback = callback
        self.options = dict(options or {})
        self.lock: AbstractContextManager[Any] = lock if lock is not None else nullcontext()
        self.role = Subscriber(settings.servers, self._on_voevent, ivorn=settings.ivorn,
                               iamalive_timeout=settings.iamalive_timeout,
                               connect_timeout=settings.connect_timeout,
                               backoff_min=settings.backoff_min,
                               backoff_max=settings.backoff_max,
                               max_frame_bytes=settings.max_packet_bytes)
        self.stats = self.role.stats

    @classmethod
    def from_config(cls, config: Config, callback: Callable[[Event], object], *,
                    servers: Sequence[str] | None = None,
                    lock: AbstractContextManager[Any] | None = None,
                    **overrides: Any) -> VTPListener:
        """Settings from ``[vtp.listen]``, parse options from :func:`notice_options`."""
        return cls(VTPListenerSettings.from_config(config, servers, **overrides), callback,
                   options=notice_options(config), lock=lock)

    def start(self) -> VTPListener:
        """Subscribe in a daemon thread."""
        self.role.start("mmcross-vtp-listener")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the loop to stop and wait up to ``timeout`` seconds for the thread."""
        self.role.stop(timeout)

    close = stop

    def _on_voevent(self, packet: Packet, peer: str) -> None:
        try:
            event = parse_notice(packet.payload, source=f"vtp://{peer} {packet.ivorn}",
                                 **self.options)
        except NotAnEventError as exc:
            self.stats["not_events"] += 1
            log.debug("VTP packet is not an event: %s", exc)
            return
        except MmcrossError as exc:
            self.stats["bad_notices"] += 1
            log.warning("refused VTP notice: %s", exc)
            return
        self.stats["events"] += 1
        try:
            with self.lock:
                self.callback(event)
        except Exception:  # noqa: BLE001 - a failing consumer must not stop the listener
            self.stats["callback_errors"] += 1
            log.exception("VTP notice callback failed on %s", event.event_id)
