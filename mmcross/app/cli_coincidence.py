"""``mmcross coincidences``: the GW x external-trigger coincidences kept in the store."""

from __future__ import annotations

import argparse
import json

from mmcross.app.tables import print_table
from mmcross.model.config import Config

COLUMNS = ("coincidence_id", "revision", "dt_s", "temporal_far", "spacetime_far",
           "overlap", "overlap_exact", "lvk_spacetime_far", "publishable", "area90", "revoked")


def cmd_coincidences(args: argparse.Namespace) -> int:
    """List the stored coincidences (latest record of each; revoked ones with ``--all``)."""
    from mmcross.catalogs import Store

    store = Store(args.db or Config.load(args.config).get("store.url"))
    try:
        records = store.coincidences(include_revoked=args.all)
    finally:
        store.close()
    if args.json:
        for r in records:
            print(json.dumps(r.to_record(), default=str))
        return 0
    print_table([{"coincidence_id": r.coincidence_id, "revision": r.revision,
                  "dt_s": r.time_difference, "temporal_far": r.temporal_far,
                  "spacetime_far": r.spacetime_far, "overlap": r.overlap,
                  "overlap_exact": r.overlap_exact, "lvk_spacetime_far": r.lvk_spacetime_far,
                  "publishable": r.publishable, "area90": r.combined_area90,
                  "revoked": r.retracted} for r in records], COLUMNS)
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``coincidences`` (with ``func``) on ``subparsers``."""
    p = subparsers.add_parser(
        "coincidences", help="list GW x external-trigger coincidences (joint FARs in Hz)")
    p.add_argument("--db", metavar="URL", help="SQLAlchemy URL (default [store] url)")
    p.add_argument("--config", help="TOML file merged over config/default.toml")
    p.add_argument("--all", action="store_true", help="include revoked coincidences")
    p.add_argument("--json", action="store_true", help="one JSON record per line")
    p.set_defaults(func=cmd_coincidences)
