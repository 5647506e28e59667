"""The event page's sky-map figure: ``mmcross plot``'s PNG, rendered on demand and cached.

A figure is kept per (event, :meth:`~mmcross.catalogs.queries.Catalog.fingerprint`), so a new
revision or a new or revoked match draws it again; the least recently used figures are dropped
beyond ``size``. One figure is drawn at a time (matplotlib's pyplot is not thread-safe);
cached figures are served meanwhile.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from mmcross.app.plot import plot_stored_event
from mmcross.catalogs.queries import Catalog

log = logging.getLogger(__name__)


class SkymapCache:
    """PNG bytes of events' sky maps, drawn by :func:`mmcross.app.plot.plot_stored_event`.

    Args:
        catalog: the read-only store.
        size: figures kept in memory (at least 1).
    """

    def __init__(self, catalog: Catalog, size: int = 32) -> None:
        self.catalog = catalog
        self.size = max(1, int(size))
        self._png: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._lock = threading.Lock()  # the cache
        self._drawing = threading.Lock()  # pyplot: one figure at a time

    def png(self, event_id: str) -> tuple[bytes, str]:
        """The figure of ``event_id`` and its fingerprint.

        Raises:
            MmcrossError: the event is unknown or has no stored sky map.
        """
        key = (event_id, self.catalog.fingerprint(event_id))
        with self._lock:
            if key in self._png:
                self._png.move_to_end(key)
                return self._png[key], key[1]
        with self._drawing:
            with self._lock:
                if key in self._png:  # drawn while this request waited
                    return self._png[key], key[1]
            with tempfile.TemporaryDirectory(prefix="mmcross-web-") as tmp:
                path = Path(tmp) / "skymap.png"
                plot_stored_event(self.catalog.store, event_id, path)
                data = path.read_bytes()
            with self._lock:
                self._png[key] = data
                while len(self._png) > self.size:
                    self._png.popitem(last=False)
        log.info("drew the sky map of %s (%s, %d bytes)", event_id, key[1], len(data))
        return data, key[1]
