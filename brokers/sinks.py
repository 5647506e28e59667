"""File sinks for match reports: JSON Lines and one VOEvent file per counterpart.

Both take what the engine emits: new matches and revocations (``retracted=True``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from mmcross.brokers.reports import JsonLinesWriter
from mmcross.brokers.voevent_out import counterpart_voevent, retraction_voevent
from mmcross.model.match import Match

JsonLinesSink = JsonLinesWriter

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class VOEventDirectorySink:
    """Writes ``DIR/<event>_<alert>.xml`` per counterpart, ``...retraction.xml`` per revocation.

    Re-sending a match overwrites the same file (the IVORN is stable per event + alert), so
    the folder holds each counterpart once.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, match: Match) -> Path:
        stem = _UNSAFE.sub("_", f"{match.event_id}_{match.alert_id}")
        return self.directory / (f"{stem}.retraction.xml" if match.retracted else f"{stem}.xml")

    def write(self, matches: Sequence[Match]) -> None:
        for match in matches:
            xml = retraction_voevent(match) if match.retracted else counterpart_voevent(match)
            path = self.path_for(match)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(xml)
            os.replace(tmp, path)  # a reader never sees a half-written VOEvent

    def close(self) -> None:
        pass
