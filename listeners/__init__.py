"""GCN notice parsing: VOEvent / JSON / Avro notices -> :class:`mmcross.model.event.Event`.

Public API::

    from mmcross.listeners import parse_notice, read_notice_file
    event = parse_notice(payload, topic="igwn.gwalert", source="kafka/0/123")

One module per mission (:mod:`mmcross.listeners.fermi`, :mod:`mmcross.listeners.swift`, ...), the
error-radius
conventions in :mod:`mmcross.listeners.radii`, routing in :mod:`mmcross.listeners.dispatch`.
"""

from mmcross.listeners.dispatch import parse_notice, read_notice_file

__all__ = ["parse_notice", "read_notice_file"]
