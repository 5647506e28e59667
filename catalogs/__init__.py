"""Persistence of events, matches, deliveries and alert history (SQLAlchemy 2).

SQLite file by default (``sqlite:///mmcross.sqlite``), PostgreSQL in production.
"""

from mmcross.catalogs.store import Store, mask_url

__all__ = ["Store", "mask_url"]
