"""Store writes held back until the outputs they belong to are committed.

The engine writes events, matches, revocations and alert history to its store as it works.
In the live services the store must only ever hold what was *committed* (Kafka transaction,
spool journal entry): after a crash or an abort the engine is rebuilt from the store, and the
uncommitted input is read again and produces its outputs again. :class:`StagedStore` gives
the engine a store whose writes are recorded as operations (:meth:`StagedStore.take`) and
applied to the real store after the commit (:func:`apply_writes`; every store write is
idempotent, so applying the same operations twice is harmless). Reads go to the real store.

:func:`encode_writes` / :func:`decode_writes` turn a list of operations into bytes (pickle of
plain model objects) for the pending-write record written before the commit.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from mmcross.model import crashpoints, shapes
from mmcross.model.alert import AlertBatch
from mmcross.model.event import Event
from mmcross.model.localization import Localization
from mmcross.model.match import Match
from mmcross.model.match_batch import MatchBatch
from mmcross.model.regions import region_from_dict

if TYPE_CHECKING:
    from mmcross.model.store import Store

#: One staged write: ("event", Event) | ("matches", MatchBatch) | ("revoke", (event_id, ids))
#: | ("history", AlertBatch).
Write = tuple[str, Any]


class StagedStore:
    """A store for the engine: reads from ``store``, writes recorded until :meth:`take`.

    Args:
        store: the real store (catalogs.Store or anything with the Store protocol).

    Build a new one whenever staged writes are thrown away (an abort): it remembers the
    matches it staged.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._writes: list[Write] = []
        # (revision, alert id) of the matches stored or staged, per event (loaded on first use)
        self._known: dict[str, set[tuple[int, int]]] = {}

    # -- reads (the committed state) ---------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def latest_revision(self, event_id: str) -> int:
        """The highest revision of ``event_id`` staged or stored (0 when unknown)."""
        staged = [w[1].revision for w in self._writes
                  if w[0] == "event" and w[1].event_id == event_id]
        return max([self.store.latest_revision(event_id), *staged])

    # -- writes (staged) ---------------------------------------------------------------

    def save_event(self, event: Event) -> int:
        self._writes.append(("event", event))
        return event.revision

    def save_matches(self, matches: Sequence[Match]) -> MatchBatch:
        """Stage matches; returns those neither stored nor staged before (so that an alert
        read twice, e.g. a file dropped again, is reported once), input order."""
        batch = MatchBatch.from_matches(matches)
        new = np.zeros(len(batch), bool)
        for row, (event_id, revision, alert_id) in enumerate(zip(
                batch.event_id.tolist(), batch.columns["event_revision"].tolist(),
                batch.alert_id.tolist(), strict=True)):
            known = self._known.get(event_id)
            if known is None:
                known = self._known[event_id] = {
                    (s.event_revision, s.alert_id) for s in self.store.matches(event_id)}
            if (revision, alert_id) not in known:
                known.add((revision, alert_id))
                new[row] = True
        batch = batch.take(new) if not new.all() else batch
        if len(batch):
            self._writes.append(("matches", batch))
        return batch

    def revoke_matches(self, event_id: str, alert_ids: Any = None) -> list[Match]:
        ids = None if alert_ids is None else [int(a) for a in alert_ids]
        self._writes.append(("revoke", (event_id, ids)))
        return []

    def save_alert_history(self, batch: AlertBatch) -> None:
        """Stage the columns the store keeps (not the packets)."""
        if len(batch):
            self._writes.append(("history", replace(batch, packets=None, sources=None)))

    def close(self) -> None:
        """Nothing: the service closes the real store."""

    def take(self) -> list[Write]:
        """The writes staged since the last call (in order), and forget them."""
        writes, self._writes = self._writes, []
        return writes


def apply_writes(store: Store, writes: list[Write]) -> None:
    """Apply staged writes to the real store, in order (idempotent: safe to repeat)."""
    for kind, value in writes:
        if kind == "event":
            store.save_event(value)
        elif kind == "matches":
            store.save_matches(value)
        elif kind == "revoke":
            store.revoke_matches(value[0], value[1])
        else:
            store.save_alert_history(value)
        crashpoints.hit("store_write")


class _WritesPickler(pickle.Pickler):
    """Pickles sky maps as the store keeps them: an analytic region as its parameters
    (rebuilt in closed form, never rasterised: its map holds its rasteriser, a closure that
    cannot be pickled anyway), a pixel map as its FITS bytes."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, Localization):
            if obj.region is not None:
                return _analytic_localization, (obj.region.to_dict(),)
            return Localization.from_fits, (bytes(obj.to_fits_bytes()),)
        return NotImplemented


def _analytic_localization(region: dict[str, Any]) -> Localization:
    """The analytic localization of stored region parameters (as the store rebuilds it)."""
    return shapes.region_localization(region_from_dict(region))


def encode_writes(writes: list[Write]) -> bytes:
    """Bytes of staged writes, for the pending-write record (model objects, pickled)."""
    buffer = io.BytesIO()
    _WritesPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(writes)
    return buffer.getvalue()


def decode_writes(payload: bytes) -> list[Write]:
    """The staged writes of :func:`encode_writes` (a payload this process family wrote)."""
    return pickle.loads(payload)  # noqa: S301 - our own pending record, never foreign input
