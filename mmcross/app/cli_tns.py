"""``mmcross tns-report``: the TNS AT report of one stored counterpart, written and optionally
sent.

:func:`add_parsers` registers the command on the main parser's sub-parsers (from
:func:`mmcross.app.cli.build_parser`). A dry run (the default) only writes the bulk-report JSON;
``--send`` posts it with the bot credentials of ``[tns]`` / ``MMCROSS_TNS_*`` and waits for
TNS's reply. Only this module prints.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from mmcross.model.config import Config

if TYPE_CHECKING:
    from mmcross.model.match import Match
    from mmcross.model.store import Store

BANDS = ("u", "g", "r", "i", "z", "y")


def _live_match(store: Store, event_id: str, alert_id: int) -> Match:
    from mmcross.brokers.tns import TNSError

    source = f"tns-report {event_id}/{alert_id}"
    found = [m for m in store.matches(event_id, include_retracted=True) if m.alert_id == alert_id]
    if not found:
        raise TNSError(source, "no such match in the store")
    live = [m for m in found if not m.retracted]
    if not live:
        raise TNSError(source, "this match was revoked: it is no counterpart to report")
    return max(live, key=lambda m: m.event_revision)


def cmd_tns_report(args: argparse.Namespace) -> int:
    # Imported here: `mmcross --help` loads no numpy/astropy (tests/test_startup.py).
    from astropy.time import Time

    from mmcross.brokers.tns import (
        TNSClient,
        TNSError,
        TNSSettings,
        build_at_report,
        object_detections,
    )
    from mmcross.catalogs import Store

    config = Config.load(args.config)
    settings = TNSSettings.from_config(config)
    url = args.db or config.get("store.url")
    with Store(url) as store:
        event = store.load_event(args.event_id)
        if event is None:
            raise TNSError(f"tns-report {args.event_id}/{args.alert_id}",
                           f"no event {args.event_id} in {url}")
        match = _live_match(store, args.event_id, args.alert_id)
        t_alert = float(Time(match.alert_time.rstrip("Z"), format="isot", scale="utc").tai.mjd)
        history = store.load_alert_history(t_alert - config.longest_window_days - 1.0,
                                           t_alert + 1e-6)
    detections = object_detections(history, match)
    report = build_at_report(event, match, detections, settings, band=args.band)
    out = Path(args.out or re.sub(r"[^A-Za-z0-9._-]+", "_",
                                  f"tns_{args.event_id}_{args.alert_id}") + ".json")
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"{out}: AT report of Rubin object {match.object_id} ({len(detections)} "
          f"detection(s)) as counterpart of {args.event_id}")
    placeholders = settings.placeholders(args.band)
    if placeholders:
        print("placeholders (sending refused until set in [tns]): " + ", ".join(placeholders))
    if not args.send:
        return 0
    if placeholders:
        raise TNSError(f"tns-report {args.event_id}/{args.alert_id}",
                       "not sent: placeholder TNS ids " + ", ".join(placeholders))
    client = TNSClient(settings)
    report_id = client.send(report)
    print(f"sent to {settings.api_url}: report id {report_id}")
    reply = client.reply(report_id)
    if not reply.objnames:
        print("TNS feedback: " + json.dumps(reply.feedback))
        return 1
    print("TNS name(s): " + ", ".join(reply.objnames))
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``tns-report`` (with ``func``) on ``subparsers``."""
    p = subparsers.add_parser(
        "tns-report", help="write (and with --send, submit) the TNS AT report of a counterpart")
    p.add_argument("event_id", metavar="EVENT_ID", help="event id, e.g. lvk:S230518h")
    p.add_argument("alert_id", metavar="ALERT_ID", type=int,
                   help="the matched alert (Rubin diaSourceId)")
    p.add_argument("--db", metavar="URL", help="SQLAlchemy URL (default: store.url)")
    p.add_argument("--config", help="TOML file merged over config/default.toml ([tns])")
    p.add_argument("--out", metavar="FILE",
                   help="where to write the JSON (default: tns_<event>_<alert>.json)")
    p.add_argument("--band", choices=BANDS,
                   help="Rubin band of the detections (the store keeps none)")
    p.add_argument("--send", action="store_true",
                   help="submit to [tns] api_url with the bot key (default: write only)")
    p.set_defaults(func=cmd_tns_report)
