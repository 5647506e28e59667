"""Named crash points: deterministic ``kill -9`` at a chosen place, for fault tests.

``MMCROSS_CRASH_AT="name:N"`` (several: ``"a:2,b:1"``) makes the process SIGKILL itself the
N-th time execution passes :func:`hit` with that name (N counts from 1). Unset, :func:`hit`
is one dictionary look-up. Ground floor, no imports from mmcross: every floor may call it.

The points used by mmcross (tests/test_crash_points.py kills at each one):

=============================  =============================================================
``after_produce``              Kafka mode: after a record was handed to the producer
``before_commit``              Kafka mode: pending store writes saved, before
                               ``commit_transaction``
``after_commit``               Kafka mode: after ``commit_transaction`` returned
``notice_apply``               both modes: a notice applied to the engine, before its commit
``store_write``                both modes: between two store writes applied after a commit
``spool_output``               spool mode: an output staged (fsynced), before the journal entry
``spool_journal``              spool mode: journal entry written, before the outputs are applied
``spool_append``               spool mode: one output file appended, before the next one
``relay_commit``               Kafka mode: committed reports handed to the VTP/Hopskotch
                               sinks, before the relay commits its offsets
=============================  =============================================================
"""

from __future__ import annotations

import os
import signal

ENV = "MMCROSS_CRASH_AT"


def _parse(text: str) -> dict[str, int]:
    points: dict[str, int] = {}
    for part in text.split(","):
        name, _, count = part.strip().partition(":")
        if name:
            points[name] = int(count or 1)
    return points


_ARMED: dict[str, int] = _parse(os.environ.get(ENV, ""))
_HITS: dict[str, int] = {}


def hit(name: str) -> None:
    """Count one pass through crash point ``name``; SIGKILL the process at the armed count."""
    if name not in _ARMED:
        return
    n = _HITS.get(name, 0) + 1
    _HITS[name] = n
    if n == _ARMED[name]:
        os.kill(os.getpid(), signal.SIGKILL)

