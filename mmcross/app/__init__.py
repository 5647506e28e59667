"""The top floor: the application that wires the floors below it together.

* :mod:`~mmcross.app.engine` — index + matcher + history + sinks + store;
* :mod:`~mmcross.app.replay`, :mod:`~mmcross.app.simulate`, :mod:`~mmcross.app.demo` — offline
  runs over notice and alert files;
* :mod:`~mmcross.app.service` (Kafka) and :mod:`~mmcross.app.embedded` (file spool) — the live
  ``mmcross listen``, with :mod:`~mmcross.app.service_state`, :mod:`~mmcross.app.transports`
  and :mod:`~mmcross.app.metrics`;
* :mod:`~mmcross.app.observe` and :mod:`~mmcross.app.plot` — what observers run;
* :mod:`~mmcross.app.cli` and :mod:`~mmcross.app.cli_observe` — the ``mmcross`` command.

Only this floor prints; nothing below imports it.
"""
