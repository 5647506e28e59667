"""mmcross: multi-messenger crossmatch engine for the LSST era.

One import name, in floors (each imports only the floors below it):

* :mod:`mmcross.model` and :mod:`mmcross.config` — events, localizations, alert batches,
  matches, errors and configuration (the ground);
* :mod:`mmcross.vtp` — the VOEvent Transport Protocol roles;
* :mod:`mmcross.listeners` (GCN notices in), :mod:`mmcross.matchers` (numba kernels),
  :mod:`mmcross.brokers` (alerts in, reports out), :mod:`mmcross.catalogs` (the store);
* :mod:`mmcross.app` — engine wiring, live service, replay and the ``mmcross`` command.
"""

__version__ = "0.1.0"
