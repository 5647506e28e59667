"""VTP broadcaster: counterpart and retraction VOEvents to subscribers (an engine sink).

The VOEvent Transport Protocol (Swinbank 2012; Comet is the reference implementation):
4-byte big-endian length-prefixed XML packets over TCP. The broadcaster sends VOEvents and,
every ``iamalive_interval`` seconds (60 s by default), a ``Transport`` of role ``iamalive``;
subscribers answer each VOEvent with ``ack`` (or ``nak``) and each iamalive with an iamalive.
As in Comet, a subscriber that leaves ``max_missed_iamalive`` iamalives unanswered at the next
tick, or has more than ``max_outstanding_acks`` events unacknowledged, or sends a ``nak``, is
dropped.

The server runs an asyncio loop in its own thread. :meth:`VTPBroadcaster.write` (the engine
sink method) only hands the matches to that loop and returns; each subscriber then has a
bounded queue of packets and its own sender task, so a slow or dead subscriber fills only its
own queue (oldest packets dropped, or the subscriber disconnected, and counted) and never
blocks the engine or the other subscribers.

Per-subscriber filters (:class:`SubscriptionFilter`) are chosen by the subscriber's IP
address, with a default for everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from mmcross.brokers.voevent_out import counterpart_voevent, retraction_voevent
from mmcross.model.config import Config
from mmcross.model.errors import ConfigError
from mmcross.model.event import EventKind
from mmcross.model.match import Match
from mmcross.vtp.base import LENGTH, frame, safe_xml, transport_message

log = logging.getLogger(__name__)

DEFAULT_IVORN = "ivo://mmcross/broadcaster"
OVERFLOW_POLICIES = ("drop-oldest", "disconnect")


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
    """

    host: str = "127.0.0.1"
    port: int = 8099
    ivorn: str = DEFAULT_IVORN
    iamalive_interval: float = 60.0
    max_missed_iamalive: int = 1
    max_outstanding_acks: int = 100
    queue_size: int = 1000
    overflow: str = "drop-oldest"
    max_reply_bytes: int = 1 << 16
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


# -- messages ------------------------------------------------------------------------------


def iamalive_message(ivorn: str) -> bytes:
    """The broadcaster's ``Transport`` iamalive packet (UTF-8 XML)."""
    return transport_message("iamalive", ivorn)


# -- one subscriber ------------------------------------------------------------------------


class _Subscriber:
    """One connected subscriber: its queue, counters and tasks (loop thread only)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 filter_: SubscriptionFilter) -> None:
        self.reader, self.writer, self.filter = reader, writer, filter_
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.host, self.port = str(peer[0]), int(peer[1])
        self.queue: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.missed_iamalive = 0
        self.outstanding_acks = 0
        self.stats: Counter[str] = Counter()
        self.tasks: list[asyncio.Task[None]] = []
        self.closed = False

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class SubscriberInfo:
    """A snapshot of one subscriber (for logs, tests and status pages)."""

    host: str
    port: int
    queued: int
    stats: dict[str, int]


# -- the broadcaster -----------------------------------------------------------------------


class VTPBroadcaster:
    """VTP server sending counterpart/retraction VOEvents; an engine report sink.

    Args:
        settings: address, timeouts, queue bound, filters.
        voevent: builds the packet of a match (by default :func:`counterpart_voevent` or,
            for ``retracted`` matches, :func:`retraction_voevent`).

    ``stats`` counts ``subscribers``, ``dropped_subscribers`` (with ``dropped_<reason>``),
    ``matches``, ``filtered_out``, ``sent``, ``acks``, ``naks``, ``iamalive_replies``,
    ``queue_overflow`` (packets dropped by drop-oldest), ``bad_replies``.
    """

    def __init__(self, settings: BroadcasterSettings | None = None, *,
                 voevent: Callable[[Match], bytes] | None = None) -> None:
        self.settings = settings or BroadcasterSettings()
        self.voevent = voevent or _default_voevent
        self.stats: Counter[str] = Counter()
        self._subs: set[_Subscriber] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._address: tuple[str, int] | None = None
        self._error: BaseException | None = None
        self._stopping: asyncio.Event | None = None

    @classmethod
    def from_config(cls, config: Config, **overrides: Any) -> VTPBroadcaster:
        return cls(BroadcasterSettings.from_config(config, **overrides))

    # -- life cycle (any thread) ---------------------------------------------------------

    def start(self, timeout: float = 10.0) -> tuple[str, int]:
        """Start the server thread; returns the bound ``(host, port)``."""
        if self._thread is not None:
            assert self._address is not None
            return self._address
        self._thread = threading.Thread(target=self._run, name="mmcross-vtp-broadcaster",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._address is None:
            raise OSError(f"VTP broadcaster did not start on {self.settings.host}:"
                          f"{self.settings.port}: {self._error}")
        return self._address

    @property
    def address(self) -> tuple[str, int] | None:
        return self._address

    def write(self, matches: Sequence[Match]) -> None:
        """Queue the VOEvents of ``matches`` for every subscriber whose filter accepts them.

        Never blocks: the matches are handed to the server's loop; before :meth:`start` or
        after :meth:`close` they are dropped (counted as ``not_running``).
        """
        loop = self._loop
        if not matches:
            return
        if loop is None or loop.is_closed():
            self.stats["not_running"] += len(matches)
            return
        try:
            loop.call_soon_threadsafe(self._dispatch_soon, list(matches))
        except RuntimeError:  # loop closed meanwhile
            self.stats["not_running"] += len(matches)

    def close(self, timeout: float = 5.0) -> None:
        """Disconnect every subscriber and stop the server."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def subscribers(self) -> list[SubscriberInfo]:
        """A snapshot of the connected subscribers."""
        return [SubscriberInfo(s.host, s.port, len(s.queue), dict(s.stats))
                for s in list(self._subs)]

    # -- loop thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported through start()
            self._error = exc
            log.exception("VTP broadcaster stopped on an error")
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._inbox: asyncio.Queue[list[Match]] = asyncio.Queue()
        self._stopping = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._accept, self.settings.host,
                                                  self.settings.port)
        sockname = self._server.sockets[0].getsockname()
        self._address = (str(sockname[0]), int(sockname[1]))
        log.info("VTP broadcaster listening on %s:%d", *self._address)
        self._ready.set()
        workers = [asyncio.create_task(self._dispatcher()),
                   asyncio.create_task(self._ticker())]
        try:
            await self._stopping.wait()
        finally:
            self._server.close()
            for sub in list(self._subs):
                await self._drop(sub, "shutdown")
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await self._server.wait_closed()
            log.info("VTP broadcaster on %s:%d closed", *self._address)

    def _dispatch_soon(self, matches: list[Match]) -> None:
        self._inbox.put_nowait(matches)

    async def _dispatcher(self) -> None:
        while True:
            matches = await self._inbox.get()
            for match in matches:
                await self._dispatch(match)
                self.stats["matches"] += 1  # counted once queued everywhere
                await asyncio.sleep(0)  # let the sender tasks move packets out

    async def _dispatch(self, match: Match) -> None:
        targets = [s for s in self._subs if not s.closed and s.filter.accepts(match)]
        if not targets:
            self.stats["filtered_out"] += 1
            return
        try:
            packet = frame(self.voevent(match))
        except Exception:  # noqa: BLE001 - one bad match must not stop the rest
            self.stats["voevent_errors"] += 1
            log.exception("cannot build the VOEvent of %s", match.key)
            return
        for sub in targets:
            await self._enqueue(sub, packet)

    async def _enqueue(self, sub: _Subscriber, packet: bytes) -> None:
        if len(sub.queue) >= self.settings.queue_size:
            if self.settings.overflow == "disconnect":
                await self._drop(sub, "queue_full")
                return
            sub.queue.popleft()
            sub.stats["queue_overflow"] += 1
            self.stats["queue_overflow"] += 1
            if sub.stats["queue_overflow"] == 1:
                log.warning("subscriber %s is not keeping up: dropping its oldest packets", sub)
        sub.queue.append(packet)
        sub.wake.set()

    async def _ticker(self) -> None:
        s = self.settings
        while True:
            await asyncio.sleep(s.iamalive_interval)
            alive = iamalive_message(s.ivorn)
            for sub in list(self._subs):
                if sub.missed_iamalive >= s.max_missed_iamalive:
                    await self._drop(sub, "no_iamalive")
                elif sub.outstanding_acks > s.max_outstanding_acks:
                    await self._drop(sub, "no_acks")
                elif not sub.closed:
                    sub.writer.write(frame(alive))  # tiny; bypasses the event queue
                    sub.missed_iamalive += 1

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        if self.settings.send_buffer_bytes > 0:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                self.settings.send_buffer_bytes)
            writer.transport.set_write_buffer_limits(high=self.settings.send_buffer_bytes)
        sub = _Subscriber(reader, writer,
                          self.settings.filters.get(str(peer[0]), self.settings.default_filter))
        self._subs.add(sub)
        self.stats["subscribers"] += 1
        log.info("new VTP subscriber %s", sub)
        sub.tasks = [asyncio.create_task(self._sender(sub)),
                     asyncio.create_task(self._receiver(sub))]

    async def _sender(self, sub: _Subscriber) -> None:
        try:
            while True:
                while not sub.queue:
                    sub.wake.clear()
                    await sub.wake.wait()
                sub.writer.write(sub.queue.popleft())
                sub.outstanding_acks += 1
                sub.stats["sent"] += 1
                self.stats["sent"] += 1
                await sub.writer.drain()  # waits only for this subscriber's socket
        except (ConnectionError, OSError) as exc:
            await self._drop(sub, "send_failed", str(exc))

    async def _receiver(self, sub: _Subscriber) -> None:
        try:
            while True:
                (length,) = LENGTH.unpack(await sub.reader.readexactly(LENGTH.size))
                if length > self.settings.max_reply_bytes:
                    await self._drop(sub, "oversized_reply", f"{length} bytes")
                    return
                refusal = self._on_reply(sub, await sub.reader.readexactly(length))
                if refusal:
                    await self._drop(sub, refusal)
                    return
        except asyncio.IncompleteReadError:
            await self._drop(sub, "disconnected")
        except (ConnectionError, OSError) as exc:
            await self._drop(sub, "disconnected", str(exc))

    def _on_reply(self, sub: _Subscriber, payload: bytes) -> str | None:
        """Account for one reply; returns a reason to drop the subscriber, if any."""
        try:
            root = safe_xml(payload)
        except (etree.XMLSyntaxError, ValueError) as exc:
            self.stats["bad_replies"] += 1
            sub.stats["bad_replies"] += 1
            log.warning("unparsable reply from VTP subscriber %s: %s", sub, exc)
            return None
        role = root.get("role", "")
        if etree.QName(root).localname != "Transport":
            role = ""
        if role == "iamalive":
            sub.missed_iamalive = 0
            sub.stats["iamalive_replies"] += 1
            self.stats["iamalive_replies"] += 1
        elif role == "ack":
            sub.outstanding_acks = max(0, sub.outstanding_acks - 1)
            sub.stats["acks"] += 1
            self.stats["acks"] += 1
        elif role == "nak":
            self.stats["naks"] += 1
            reason = root.findtext("Meta/Result") or "no reason given"
            log.warning("VTP subscriber %s sent nak for %s (%s): dropping it as the VTP "
                        "note says", sub, root.findtext("Origin"), reason)
            return "nak"
        elif role == "authenticate":
            log.debug("ignoring authenticate reply from %s", sub)
        else:
            self.stats["bad_replies"] += 1
            sub.stats["bad_replies"] += 1
            log.warning("unexpected reply (role %r) from VTP subscriber %s", role, sub)
        return None

    async def _drop(self, sub: _Subscriber, reason: str, detail: str = "") -> None:
        if sub.closed:
            return
        sub.closed = True
        self._subs.discard(sub)
        if reason != "shutdown":
            self.stats["dropped_subscribers"] += 1
            self.stats[f"dropped_{reason}"] += 1
            log.warning("dropping VTP subscriber %s: %s%s (%d packets still queued)", sub,
                        reason, f" ({detail})" if detail else "", len(sub.queue))
        sub.queue.clear()
        current = asyncio.current_task()
        for task in sub.tasks:
            if task is not current:
                task.cancel()
        sub.writer.transport.abort()  # never wait on a peer that does not read


def _default_voevent(match: Match) -> bytes:
    return retraction_voevent(match) if match.retracted else counterpart_voevent(match)
