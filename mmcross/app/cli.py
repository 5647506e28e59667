"""The ``mmcross`` command line: replay, simulate, demo, listen, events, matches.

Only this module prints; everything else logs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from mmcross.app.tables import format_value, print_replay_summary, print_table
from mmcross.model.config import Config
from mmcross.model.errors import MmcrossError

log = logging.getLogger("mmcross")


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose < 0 else logging.INFO if verbose == 0 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def _open_store(url: str):
    from mmcross.catalogs import Store

    return Store(url)


# -- replay ------------------------------------------------------------------------------

def cmd_replay(args: argparse.Namespace) -> int:
    config = Config.load(args.config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # reading the alert files starts first: it overlaps loading the engine (~1.5 s of
    # imports), parsing the notices and building the index
    from mmcross.brokers.alert_reader import AlertReader

    alerts = AlertReader(args.alerts, chunk=args.chunk)
    try:
        from mmcross.app.engine import Engine
        from mmcross.app.replay import coincidence_sinks, replay
        from mmcross.brokers.sinks import JsonLinesSink, VOEventDirectorySink

        db = args.db or f"sqlite:///{out / 'mmcross.sqlite'}"
        sinks = [JsonLinesSink(out / "matches.jsonl"), VOEventDirectorySink(out / "voevents")]
        store = _open_store(db)
        engine = Engine(config, store=store, sinks=sinks,
                        coincidence_sinks=coincidence_sinks(out, store))
        engine.restore()
        try:
            summary = replay(engine, args.notices, alerts)
        finally:
            engine.close()
    finally:
        alerts.close()
    print_replay_summary(summary, out, db)
    return 0


# -- simulate / demo ---------------------------------------------------------------------

def cmd_simulate(args: argparse.Namespace) -> int:
    import numpy as np

    from mmcross.app.simulate import simulate_night
    from mmcross.listeners import read_notice_file

    start, end = args.start_mjd, args.start_mjd + args.days
    inject = []
    for path in args.inject_notice or ():
        event = read_notice_file(path)
        if event.localization is None:
            raise MmcrossError(f"{path}: the notice carries no sky map to inject into")
        inject.append((event.localization, args.inject, start, end))
    night = simulate_night(args.n, start_mjd_tai=start, duration_days=args.days,
                           rng=np.random.default_rng(args.seed), inject=inject)
    written = night.write_wire_stream(args.out) if args.wire else night.write_container(args.out)
    print(f"wrote {written} alerts to {args.out} ({'wire stream' if args.wire else 'container'})"
          f"; injected counterparts: {sum(len(g) for g in night.injected)}")
    if args.truth:
        Path(args.truth).write_text(json.dumps(
            [[int(a) for a in group] for group in night.injected]))
        print(f"injected alert ids: {args.truth}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mmcross.app.demo import run_demo

    return run_demo(Path(args.out), n_alerts=args.n, seed=args.seed)


# -- store readers -----------------------------------------------------------------------

def cmd_events(args: argparse.Namespace) -> int:
    store = _open_store(args.db or Config.load(args.config).get("store.url"))
    rows = store.events(include_retracted=True)
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
    else:
        print_table(rows, [c for c in ("event_id", "kind", "instrument", "revision",
                                        "trigger_time", "retracted") if not rows or c in rows[0]])
    return 0


def cmd_matches(args: argparse.Namespace) -> int:
    store = _open_store(args.db or Config.load(args.config).get("store.url"))
    matches = store.matches(args.event, include_retracted=args.all)
    if args.json:
        for m in matches:
            print(json.dumps(m.to_record()))
    else:
        print_table([m.to_record() for m in matches],
                     ["event_id", "event_revision", "alert_id", "object_id", "ra", "dec",
                      "time_offset", "credible_level", "searched_area", "p_chance", "retracted"])
    return 0


# -- listen ------------------------------------------------------------------------------

def _listen_overrides(args: argparse.Namespace) -> dict:
    """The ``[kafka]``/``[store]``/``[vtp]``/``[submit]`` config keys given on the command line.

    ``--vtp-port``/``--vtp-host`` enable the VTP broadcaster, ``--submit-port`` the partner
    VTP receiver; ``--gcn-vtp`` (repeatable) replaces ``[vtp.listen] servers``.
    """
    kafka: dict = {}
    if args.bootstrap_servers:
        kafka["bootstrap_servers"] = args.bootstrap_servers
    if args.alert_topic:
        kafka["alert_topics"] = list(args.alert_topic)
    for key in ("report_topic", "voevent_topic", "dead_letter_topic", "group_id", "instance"):
        if getattr(args, key) is not None:
            kafka[key] = getattr(args, key)
    if args.notice_topic:
        kafka["gcn"] = {"topics": list(args.notice_topic)}
    out: dict = {"kafka": kafka} if kafka else {}
    if args.db:
        out["store"] = {"url": args.db}
    vtp: dict = {}
    if args.vtp_port is not None or args.vtp_host is not None:
        vtp["broadcast"] = {"enabled": True}
        if args.vtp_port is not None:
            vtp["broadcast"]["port"] = args.vtp_port
        if args.vtp_host is not None:
            vtp["broadcast"]["host"] = args.vtp_host
    if args.gcn_vtp:
        vtp["listen"] = {"servers": list(args.gcn_vtp)}
    if vtp:
        out["vtp"] = vtp
    if args.submit_port is not None:
        out["submit"] = {"vtp": {"enabled": True, "port": args.submit_port}}
    return out


def cmd_listen(args: argparse.Namespace) -> int:
    import signal

    from mmcross.app.embedded import EmbeddedService
    from mmcross.app.service import ListenService
    from mmcross.brokers.kafka_config import kafka_configured

    config = Config.load(args.config, overrides=_listen_overrides(args))
    overrides = {"bootstrap.servers": args.bootstrap_servers}
    if kafka_configured(config, overrides=overrides):
        service = ListenService(config, _open_store(config.get("store.url")),
                                kafka_overrides=overrides, metrics_port=args.metrics_port)
    else:  # embedded defaults: SQLite + a file spool
        service = EmbeddedService(config, _open_store(config.get("store.url")),
                                  spool_dir=args.spool, metrics_port=args.metrics_port)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping after the current batch", signum)
        service.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.serve is not None:
        from mmcross.app.web import start_server_thread

        web = start_server_thread(config.get("store.url"), config, host="127.0.0.1",
                                  port=args.serve)
        print(f"web page and JSON API: {web.url}", flush=True)
    stats = service.run()
    print(f"stopped: {stats.notices} notices, {stats.alerts} alerts, {stats.reports} reports")
    return 0


# -- status ------------------------------------------------------------------------------

_STATUS_METRICS = (
    ("alerts", "mmcross_alerts_total"), ("alerts_per_second", "mmcross_alerts_per_second"),
    ("consumer_lag", "mmcross_consumer_lag"), ("matches", "mmcross_matches_total"),
    ("revocations", "mmcross_revocations_total"),
    ("reports_delivered", "mmcross_reports_delivered_total"),
    ("dead_letters", "mmcross_dead_letters_total"), ("live_events", "mmcross_live_events"),
    ("last_alert_mjd_tai", "mmcross_last_alert_mjd_tai"),
    ("last_alert_unixtime", "mmcross_last_alert_unixtime"))


def status_from_store(store) -> dict:
    """Live events, matches and the newest alert of the store (MJD TAI)."""
    events = store.events(include_retracted=True)
    live = [e for e in events if not e["retracted"]]
    n_alerts, last = store.alert_history_stats()
    return {"events": len(events), "live_events": len(live),
            "live_event_ids": [e["event_id"] for e in live],
            "matches": sum(e["matches"] for e in events),
            "revoked_matches": sum(e["matches_retracted"] for e in events),
            "alerts_in_history": n_alerts, "last_alert_mjd_tai": last}


def status_from_metrics(url: str) -> dict:
    """The headline numbers of a running service's metrics endpoint (sums over labels)."""
    from mmcross.app.metrics import scrape

    scraped = scrape(url)
    out: dict = {"url": url}
    for key, name in _STATUS_METRICS:
        if name in scraped:
            out[key] = sum(scraped[name].values())
    out["notices"] = {dict(labels).get("outcome", ""): value for labels, value in
                      scraped.get("mmcross_notices_total", {}).items()}
    return out


def cmd_status(args: argparse.Namespace) -> int:
    config = Config.load(args.config)
    report: dict = {"store": status_from_store(
        _open_store(args.db or config.get("store.url")))}
    url = args.metrics_url
    port = int(config.get("metrics.port", -1) or -1)
    if url is None and port > 0:
        url = f"http://{config.get('metrics.host', '127.0.0.1')}:{port}/metrics"
    if url:
        try:
            report["service"] = status_from_metrics(url)
        except MmcrossError as exc:
            report["service"] = {"url": url, "error": str(exc)}
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    st = report["store"]
    print(f"store: {st['live_events']} live events ({st['events']} known), "
          f"{st['matches']} matches ({st['revoked_matches']} revoked), "
          f"{st['alerts_in_history']} alerts in history, last alert MJD TAI "
          f"{format_value(st['last_alert_mjd_tai'])}")
    if st["live_event_ids"]:
        print("live events: " + ", ".join(st["live_event_ids"]))
    svc = report.get("service")
    if svc is not None:
        if "error" in svc:
            print(f"service: not reachable ({svc['error']})")
        else:
            print("service: " + ", ".join(f"{k} {format_value(v)}" for k, v in svc.items()
                                          if k not in ("url", "notices")))
            print("notices: " + (", ".join(f"{k} {format_value(v)}" for k, v in
                                          sorted(svc["notices"].items())) or "none"))
    return 0


# -- parser ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmcross", description="Multi-messenger crossmatch: GCN notices x optical alerts.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("replay", help="replay notice and alert files through the engine")
    p.add_argument("--notices", nargs="+", required=True, metavar="PATH",
                   help="notice files or folders (VOEvent XML, GCN JSON, IGWN Avro)")
    p.add_argument("--alerts", nargs="+", required=True, metavar="PATH",
                   help="alert files or folders (Avro container or wire-format files)")
    p.add_argument("--out", required=True, help="output folder (matches.jsonl, voevents/)")
    p.add_argument("--config", help="TOML file merged over config/default.toml")
    p.add_argument("--db", help="SQLAlchemy URL (default: sqlite in --out)")
    p.add_argument("--chunk", type=int, default=20_000, help="alerts per batch")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("simulate", help="write a simulated Rubin alert stream (Avro)")
    p.add_argument("--out", required=True, help="output file (.avro container or .wires stream)")
    p.add_argument("--n", type=int, default=10_000, help="number of alerts")
    p.add_argument("--start-mjd", type=float, default=61000.1, help="night start, MJD TAI")
    p.add_argument("--days", type=float, default=0.35, help="length of the night, days")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--inject-notice", action="append", metavar="NOTICE",
                   help="inject counterparts inside this notice's localization (repeatable)")
    p.add_argument("--inject", type=int, default=5, help="counterparts per injected notice")
    p.add_argument("--wire", action="store_true",
                   help="write Confluent wire-format messages instead of a container file")
    p.add_argument("--truth", help="write the injected alert ids (JSON) here")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("demo", help="simulate a night around a real LVK notice and replay it")
    p.add_argument("--out", default="mmcross-demo", help="output folder")
    p.add_argument("--n", type=int, default=20_000, help="number of simulated alerts")
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("listen", help="live service: GCN notices (Kafka, VTP) and partner "
                                      "submissions x the alert stream (Kafka or a spool)")
    p.add_argument("--config", help="TOML file merged over config/default.toml")
    p.add_argument("--bootstrap-servers", metavar="HOST:PORT",
                   help="Kafka broker(s) of the alerts and reports (wins over KAFKA_*)")
    p.add_argument("--alert-topic", action="append", metavar="TOPIC",
                   help="alert topic, wire-format Avro (repeatable)")
    p.add_argument("--report-topic", metavar="TOPIC", help="match report topic (Avro)")
    p.add_argument("--voevent-topic", metavar="TOPIC",
                   help="counterpart VOEvent topic ('' for none)")
    p.add_argument("--dead-letter-topic", metavar="TOPIC", help="topic of refused messages")
    p.add_argument("--notice-topic", action="append", metavar="TOPIC",
                   help="GCN notice topic, e.g. igwn.gwalert (repeatable; replaces the list)")
    p.add_argument("--group-id", help="alert consumer group shared by the listen processes")
    p.add_argument("--instance", metavar="NAME",
                   help="this process's name in its group (default: host name); its Kafka "
                        "transactional id is <group id>.<NAME>")
    p.add_argument("--db", help="SQLAlchemy URL of the store (default: store.url)")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics on 127.0.0.1:PORT/metrics (0: any free port)")
    p.add_argument("--spool", metavar="DIR",
                   help="without Kafka: spool directory (files dropped in DIR/in, reports in "
                        "DIR/out; default [spool] directory)")
    p.add_argument("--vtp-port", type=int, metavar="PORT",
                   help="serve counterpart and retraction VOEvents to VTP subscribers on PORT "
                        "(127.0.0.1 unless --vtp-host; 0: any free port, logged)")
    p.add_argument("--vtp-host", metavar="HOST",
                   help="address of the VTP broadcaster (e.g. 0.0.0.0; enables it on "
                        "[vtp.broadcast] port when --vtp-port is not given)")
    p.add_argument("--submit-port", type=int, metavar="PORT",
                   help="receive partner VOEvent/JSON submissions over VTP on PORT "
                        "([submit.vtp] host, 127.0.0.1 by default; partners in [partners.*])")
    p.add_argument("--gcn-vtp", action="append", metavar="HOST:PORT",
                   help="GCN Classic VOEvent server to subscribe to over VTP (repeatable; "
                        "tried in turn; replaces [vtp.listen] servers)")
    p.add_argument("--serve", type=int, metavar="PORT",
                   help="also serve the read-only web page and JSON API over the same store on "
                        "127.0.0.1:PORT (0: any free port, logged)")
    p.set_defaults(func=cmd_listen)

    p = sub.add_parser("status", help="state of the live service: store and metrics endpoint")
    p.add_argument("--db", help="SQLAlchemy URL (default: store.url of the config)")
    p.add_argument("--config", help="TOML file merged over config/default.toml")
    p.add_argument("--metrics-url", metavar="URL",
                   help="metrics endpoint of a running `mmcross listen` (default: from "
                        "[metrics] port when set)")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=cmd_status)

    for name, func, text in (("events", cmd_events, "list stored events"),
                             ("matches", cmd_matches, "list stored matches")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--db", help="SQLAlchemy URL (default: store.url of the config)")
        p.add_argument("--config", help="TOML file merged over config/default.toml")
        p.add_argument("--json", action="store_true", help="JSON output")
        if name == "matches":
            p.add_argument("--event", help="only this event id")
            p.add_argument("--all", action="store_true", help="include revoked matches")
        p.set_defaults(func=func)

    from mmcross.app.cli_observe import add_parsers as add_observer_parsers

    add_observer_parsers(sub)
    from mmcross.app.cli_web import add_parsers as add_web_parsers

    add_web_parsers(sub)
    from mmcross.app.cli_tns import add_parsers as add_tns_parsers

    add_tns_parsers(sub)
    from mmcross.app.cli_coincidence import add_parsers as add_coincidence_parsers

    add_coincidence_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(-1 if args.quiet else args.verbose)
    try:
        return args.func(args)
    except MmcrossError as exc:
        print(f"mmcross: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"mmcross: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
