"""mmcross as a TOM Toolkit broker: Rubin counterparts of GW/GRB/neutrino events in a TOM.

In a TOM's ``settings.py``::

    TOM_ALERT_CLASSES = [..., "mmcross.tom.MMCrossBroker"]
    BROKERS = {"mmcross": {"url": "http://127.0.0.1:8080"}}   # where `mmcross serve` runs

* :mod:`mmcross.tom.api` — the HTTP client of mmcross's JSON API (standard library only);
* :mod:`mmcross.tom.broker` — :class:`~mmcross.tom.broker.MMCrossBroker`, the
  ``tom_alerts.alerts.GenericBroker`` with its query form (needs Django and ``tomtoolkit``,
  the ``mmcross[tom]`` extra).

:class:`MMCrossBroker` is looked up on first use, so :mod:`mmcross.tom.api` imports without
Django.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MMCrossBroker"]


def __getattr__(name: str) -> Any:
    if name == "MMCrossBroker":
        from mmcross.tom.broker import MMCrossBroker

        return MMCrossBroker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
