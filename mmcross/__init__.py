"""mmcross: multi-messenger crossmatch engine for the LSST era.

Core model (events, localizations, alerts, matches), the in-memory index of live
events, the engine that wires listeners, matchers, brokers and catalogs, and the CLI.
"""

__version__ = "0.1.0"
