"""GCN notice parsing: VOEvent / JSON / Avro notices -> :class:`mmcross.event.Event`.

Public API::

    from listeners import parse_notice, read_notice_file
    event = parse_notice(payload, topic="igwn.gwalert", source="kafka/0/123")

One module per mission (:mod:`listeners.fermi`, :mod:`listeners.swift`, ...), the error-radius
conventions in :mod:`listeners.radii`, routing in :mod:`listeners.dispatch`.
"""

from listeners.dispatch import parse_notice, read_notice_file

__all__ = ["parse_notice", "read_notice_file"]
