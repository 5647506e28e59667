"""The VTP broadcaster role: subscribers connect and receive VOEvents, each on its own queue.

As Comet's ``VOEventBroadcaster``: every ``iamalive_interval`` seconds (60 s) each subscriber
gets a ``Transport`` ``iamalive``; subscribers answer each VOEvent with ``ack`` (or ``nak``)
and each iamalive with an iamalive. A subscriber that leaves ``max_missed_iamalive``
iamalives unanswered at the next tick, has more than ``max_outstanding_acks`` VOEvents
unacknowledged, sends a ``nak`` (VTP note 6.4) or a reply above ``max_reply_bytes`` is
dropped.

The server runs an asyncio loop in its own thread. :meth:`Broadcaster.publish` only hands the
items to that loop and returns; each subscriber then has a bounded queue of packets and its
own sender task, so a slow or dead subscriber fills only its own queue (oldest packets
dropped, or the subscriber disconnected, and counted) and never blocks the publisher or the
other subscribers. Which items a subscriber gets is decided by a :class:`SubscriberFilter`
chosen by its IP address (``filter_for``); the VOEvent of an item is built by ``encode``,
once, when some subscriber wants it.

``stats`` counts ``subscribers``, ``dropped_subscribers`` (with ``dropped_<reason>``:
``no_iamalive``, ``no_acks``, ``nak``, ``oversized_reply``, ``queue_full``, ``send_failed``,
``disconnected``), ``events`` (items dispatched), ``filtered_out``, ``sent``, ``acks``,
``naks``, ``iamalive_replies``, ``queue_overflow`` (packets dropped by drop-oldest),
``bad_replies``, ``encode_errors`` and ``not_running`` (items published while stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from mmcross.model.errors import ConfigError
from mmcross.vtp.base import (
    BadPacketError,
    FrameDecoder,
    FrameTooLargeError,
    frame,
    iamalive,
    read_packet,
)

log = logging.getLogger(__name__)

OVERFLOW_POLICIES = ("drop-oldest", "disconnect")

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)


class SubscriberFilter(Protocol[T_contra]):
    """Decides which items one subscriber receives."""

    def accepts(self, item: T_contra) -> bool: ...


@dataclass(frozen=True)
class SubscriberInfo:
    """A snapshot of one subscriber (for logs, tests and status pages)."""

    host: str
    port: int
    queued: int
    stats: dict[str, int]


class _Subscriber(Generic[T]):
    """One connected subscriber: its queue, counters and tasks (loop thread only)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 filter_: SubscriberFilter[T], max_reply_bytes: int) -> None:
        self.reader, self.writer, self.filter = reader, writer, filter_
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.host, self.port = str(peer[0]), int(peer[1])
        self.decoder = FrameDecoder(max_reply_bytes, str(self))
        self.queue: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.missed_iamalive = 0
        self.outstanding_acks = 0
        self.stats: Counter[str] = Counter()
        self.tasks: list[asyncio.Task[None]] = []
        self.closed = False

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class Broadcaster(Generic[T]):
    """A VTP broadcaster of items turned into VOEvents.

    Args:
        encode: the VOEvent (UTF-8 XML) of an item.
        filter_for: the filter of a subscriber, from its IP address.
        host, port: listening address (port 0 = any free port).
        ivorn: our IVORN in iamalive packets.
        iamalive_interval, max_missed_iamalive, max_outstanding_acks, queue_size,
        max_reply_bytes: defaults the class constants (upper case).
        overflow: ``"drop-oldest"`` or ``"disconnect"`` when a subscriber's queue is full.
        send_buffer_bytes: when > 0, the kernel send buffer (``SO_SNDBUF``) and the asyncio
            write-buffer high-water mark of each subscriber's connection, bytes; bounds the
            memory a stalled subscriber holds beyond its queue (0 = system defaults).
    """

    IAMALIVE_INTERVAL = 60.0  # s between iamalive packets
    MAX_MISSED_IAMALIVE = 1  # unanswered iamalives tolerated at a tick (as Comet)
    MAX_OUTSTANDING_ACKS = 100  # unacknowledged VOEvents tolerated at a tick
    QUEUE_SIZE = 1000  # packets queued per subscriber
    MAX_REPLY_BYTES = 1 << 16  # largest packet accepted from a subscriber
    START_TIMEOUT = 10.0  # s to wait for the server to listen
    STOP_TIMEOUT = 5.0  # s to wait for the server thread to end
    RECV_BYTES = 1 << 16  # bytes per read of a subscriber's replies

    def __init__(self, encode: Callable[[T], bytes],
                 filter_for: Callable[[str], SubscriberFilter[T]], *,
                 host: str = "127.0.0.1", port: int = 8099, ivorn: str,
                 iamalive_interval: float = IAMALIVE_INTERVAL,
                 max_missed_iamalive: int = MAX_MISSED_IAMALIVE,
                 max_outstanding_acks: int = MAX_OUTSTANDING_ACKS,
                 queue_size: int = QUEUE_SIZE, overflow: str = "drop-oldest",
                 max_reply_bytes: int = MAX_REPLY_BYTES, send_buffer_bytes: int = 0) -> None:
        if overflow not in OVERFLOW_POLICIES:
            raise ConfigError(f"VTP broadcaster overflow must be one of {OVERFLOW_POLICIES}, "
                              f"got {overflow!r}")
        self.encode, self.filter_for = encode, filter_for
        self.host, self.port, self.ivorn = host, port, ivorn
        self.iamalive_interval = iamalive_interval
        self.max_missed_iamalive = max_missed_iamalive
        self.max_outstanding_acks = max_outstanding_acks
        self.queue_size, self.overflow = queue_size, overflow
        self.max_reply_bytes, self.send_buffer_bytes = max_reply_bytes, send_buffer_bytes
        self.stats: Counter[str] = Counter()
        self._subs: set[_Subscriber[T]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._address: tuple[str, int] | None = None
        self._error: BaseException | None = None
        self._stopping: asyncio.Event | None = None
        self._inbox: asyncio.Queue[list[T]] | None = None

    # -- life cycle (any thread) ---------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> tuple[str, int]:
        """Start the server thread; returns the bound ``(host, port)``.

        Raises:
            OSError: the server did not start (e.g. the port is taken).
        """
        if self._thread is not None:
            assert self._address is not None
            return self._address
        self._thread = threading.Thread(target=self._run, name="mmcross-vtp-broadcaster",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._address is None:
            raise OSError(f"VTP broadcaster did not start on {self.host}:{self.port}: "
                          f"{self._error}")
        return self._address

    @property
    def address(self) -> tuple[str, int] | None:
        """The bound ``(host, port)`` once started."""
        return self._address

    def publish(self, items: Sequence[T]) -> None:
        """Queue the VOEvents of ``items`` for every subscriber whose filter accepts them.

        Never blocks: the items are handed to the server's loop; before :meth:`start` or
        after :meth:`close` they are dropped (counted as ``not_running``).
        """
        loop = self._loop
        if not items:
            return
        if loop is None or loop.is_closed():
            self.stats["not_running"] += len(items)
            return
        try:
            loop.call_soon_threadsafe(self._dispatch_soon, list(items))
        except RuntimeError:  # loop closed meanwhile
            self.stats["not_running"] += len(items)

    def close(self, timeout: float = STOP_TIMEOUT) -> None:
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
        self._inbox = asyncio.Queue()
        self._stopping = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        server = await asyncio.start_server(self._accept, self.host, self.port)
        sockname = server.sockets[0].getsockname()
        self._address = (str(sockname[0]), int(sockname[1]))
        log.info("VTP broadcaster listening on %s:%d", *self._address)
        self._ready.set()
        workers = [asyncio.create_task(self._dispatcher()),
                   asyncio.create_task(self._ticker())]
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for sub in list(self._subs):
                await self._drop(sub, "shutdown")
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await server.wait_closed()
            log.info("VTP broadcaster on %s:%d closed", *self._address)

    def _dispatch_soon(self, items: list[T]) -> None:
        assert self._inbox is not None
        self._inbox.put_nowait(items)

    async def _dispatcher(self) -> None:
        assert self._inbox is not None
        while True:
            items = await self._inbox.get()
            for item in items:
                await self._dispatch(item)
                self.stats["events"] += 1  # counted once queued everywhere
                await asyncio.sleep(0)  # let the sender tasks move packets out

    async def _dispatch(self, item: T) -> None:
        targets = [s for s in self._subs if not s.closed and s.filter.accepts(item)]
        if not targets:
            self.stats["filtered_out"] += 1
            return
        try:
            packet = frame(self.encode(item))
        except Exception:  # noqa: BLE001 - one bad item must not stop the rest
            self.stats["encode_errors"] += 1
            log.exception("cannot build the VOEvent of %.200r", item)
            return
        for sub in targets:
            await self._enqueue(sub, packet)

    async def _enqueue(self, sub: _Subscriber[T], packet: bytes) -> None:
        if len(sub.queue) >= self.queue_size:
            if self.overflow == "disconnect":
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
        while True:
            await asyncio.sleep(self.iamalive_interval)
            alive = frame(iamalive(self.ivorn))
            for sub in list(self._subs):
                if sub.missed_iamalive >= self.max_missed_iamalive:
                    await self._drop(sub, "no_iamalive")
                elif sub.outstanding_acks > self.max_outstanding_acks:
                    await self._drop(sub, "no_acks")
                elif not sub.closed:
                    sub.writer.write(alive)  # tiny; bypasses the event queue
                    sub.missed_iamalive += 1

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        if self.send_buffer_bytes > 0:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer_bytes)
            writer.transport.set_write_buffer_limits(high=self.send_buffer_bytes)
        sub = _Subscriber(reader, writer, self.filter_for(str(peer[0])), self.max_reply_bytes)
        self._subs.add(sub)
        self.stats["subscribers"] += 1
        log.info("new VTP subscriber %s", sub)
        sub.tasks = [asyncio.create_task(self._sender(sub)),
                     asyncio.create_task(self._receiver(sub))]

    async def _sender(self, sub: _Subscriber[T]) -> None:
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

    async def _receiver(self, sub: _Subscriber[T]) -> None:
        try:
            while True:
                data = await sub.reader.read(self.RECV_BYTES)
                if not data:
                    await self._drop(sub, "disconnected")
                    return
                for payload in sub.decoder.feed(data):
                    refusal = self._on_reply(sub, payload)
                    if refusal:
                        await self._drop(sub, refusal)
                        return
                sub.decoder.check()
        except FrameTooLargeError as exc:
            await self._drop(sub, "oversized_reply", f"{exc.length} bytes")
        except (ConnectionError, OSError) as exc:
            await self._drop(sub, "disconnected", str(exc))

    def _on_reply(self, sub: _Subscriber[T], payload: bytes) -> str | None:
        """Account for one reply; returns a reason to drop the subscriber, if any."""
        try:
            packet = read_packet(payload, str(sub))
        except BadPacketError as exc:
            self.stats["bad_replies"] += 1
            sub.stats["bad_replies"] += 1
            log.warning("%s", exc)
            return None
        role = packet.role if packet.kind == "Transport" else ""
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
            log.warning("VTP subscriber %s sent nak for %s (%s): dropping it as the VTP "
                        "note says", sub, packet.origin, packet.result or "no reason given")
            return "nak"
        elif role == "authenticate":
            log.debug("ignoring authenticate reply from %s", sub)
        else:
            self.stats["bad_replies"] += 1
            sub.stats["bad_replies"] += 1
            log.warning("unexpected reply (role %r) from VTP subscriber %s", role, sub)
        return None

    async def _drop(self, sub: _Subscriber[T], reason: str, detail: str = "") -> None:
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
