"""The ground floor: what every other part of mmcross talks about.

* :mod:`~mmcross.model.errors` — :class:`MmcrossError` and its structured subclasses;
* :mod:`~mmcross.model.config` — the merged TOML configuration (:class:`Config`);
* :mod:`~mmcross.model.event` — :class:`Event` (one notice's view of an astrophysical event);
* :mod:`~mmcross.model.localization` — :class:`Localization`, a multi-order HEALPix sky map;
* :mod:`~mmcross.model.shapes` — circles, ellipses and boxes from notices, as sky maps;
* :mod:`~mmcross.model.alert` — :class:`AlertBatch`, columnar optical alerts;
* :mod:`~mmcross.model.detections` — :class:`Detections`, a partner's own transients;
* :mod:`~mmcross.model.match` — :class:`Match`, one event x alert report;
* :mod:`~mmcross.model.match_batch` — :class:`MatchBatch`, many reports as columns;
* :mod:`~mmcross.model.timefmt` — MJD TAI to ISO 8601 UTC text, vectorised;
* :mod:`~mmcross.model.index` — :class:`SkyIndex`, the live set (add, update, retract, expire);
* :mod:`~mmcross.model.history` — :class:`AlertHistory`, alerts kept for retro-matching.

Nothing here imports another floor of mmcross (``listeners``, ``matchers``, ``brokers``,
``catalogs``, ``vtp``, ``app``); the import-linter contracts in ``pyproject.toml`` check it.
"""
