"""Observer commands of the ``mmcross`` CLI: ``subscribe`` (counterpart notices) and ``plot``.

:func:`add_parsers` registers both on the main parser's sub-parsers; :func:`main` runs them
stand-alone (``python -m mmcross.app.cli_observe ...``). Like :mod:`mmcross.app.cli`, only this
module prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from mmcross.model.config import Config
from mmcross.model.errors import ConfigError, MmcrossError

log = logging.getLogger("mmcross")


# -- subscribe ---------------------------------------------------------------------------

def _filter_from_args(args: argparse.Namespace):
    from mmcross.brokers.vtp import SubscriptionFilter

    return SubscriptionFilter.from_mapping(
        {"kinds": args.kind or [], "instruments": args.instrument or [],
         "max_credible_level": args.max_credible_level, "max_p_chance": args.max_p_chance},
        "command line")


def _source_from_args(args: argparse.Namespace):
    from mmcross.app.observe import KafkaSubscriber, VTPSubscriber, kafka_subscriber_config

    if args.vtp:
        from mmcross.vtp.subscriber import parse_host_port

        host, port = parse_host_port(args.vtp)
        return VTPSubscriber(host, port)
    from mmcross.brokers.kafka_config import base_properties

    if not args.topic:
        raise ConfigError("--kafka-bootstrap needs --topic (the match report topic)")
    config = Config.load(args.config)
    props = base_properties(config, overrides={"bootstrap.servers": args.kafka_bootstrap})
    return KafkaSubscriber(kafka_subscriber_config(props, group_id=args.group_id,
                                                   from_beginning=args.from_beginning),
                           args.topic)


def cmd_subscribe(args: argparse.Namespace) -> int:
    from mmcross.app.observe import CounterpartStorer, Received, format_counterpart, subscribe

    filter_ = _filter_from_args(args)
    source = _source_from_args(args)
    handlers = []
    if not args.no_print:
        def show(item: Received) -> None:
            text = (json.dumps(item.match.to_record()) if args.json
                    else format_counterpart(item.match))
            print(text, flush=True)
        handlers.append(show)
    store = None
    if args.out or args.db:
        if args.db:
            from mmcross.catalogs import Store

            store = Store(args.db)
        handlers.append(CounterpartStorer(args.out, store))
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        def on_signal(signum: int, _frame: object) -> None:
            log.info("signal %d: stopping", signum)
            stop.set()
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    try:
        summary = subscribe(source, handlers, filter_=filter_, count=args.count,
                            timeout=args.timeout, stop=stop)
    finally:
        if store is not None:
            store.close()
    print(f"mmcross subscribe: {summary.accepted} counterpart notices kept, "
          f"{summary.filtered_out} filtered out, {summary.handler_errors} not stored",
          file=sys.stderr)
    return 1 if summary.handler_errors else 0


# -- plot --------------------------------------------------------------------------------

def cmd_plot(args: argparse.Namespace) -> int:
    from mmcross.app.plot import plot_stored_event
    from mmcross.catalogs import Store

    url = args.db or Config.load(args.config).get("store.url")
    out = args.out or _default_png(args.event_id)
    with Store(url) as store:
        result = plot_stored_event(store, args.event_id, out,
                                   credible_levels=tuple(args.credible_levels))
    print(f"{result.path} ({result.width}x{result.height} px): {result.n_matches} matched "
          f"alerts, {result.n_revoked} revoked")
    return 0


def _default_png(event_id: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", event_id) + ".png"


# -- parsers -----------------------------------------------------------------------------

def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1]")
    return value


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``subscribe`` and ``plot`` (with ``func``) on ``subparsers``."""
    p = subparsers.add_parser(
        "subscribe", help="receive counterpart notices (VTP or Kafka), print and/or store them")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--vtp", metavar="HOST:PORT", help="mmcross VTP broadcaster to subscribe to")
    src.add_argument("--kafka-bootstrap", metavar="SERVERS",
                     help="Kafka bootstrap servers of the match report topic")
    p.add_argument("--topic", action="append", metavar="TOPIC",
                   help="match report topic (Avro), with --kafka-bootstrap (repeatable)")
    p.add_argument("--group-id", help="Kafka consumer group (default: a fresh one per run)")
    p.add_argument("--from-beginning", action="store_true",
                   help="Kafka: read the retained reports too (default: only new ones)")
    p.add_argument("--config", help="TOML file merged over config/default.toml "
                   "(Kafka security properties)")
    p.add_argument("--kind", action="append", metavar="KIND",
                   help="keep only these event kinds: gw, grb, neutrino... (repeatable)")
    p.add_argument("--instrument", action="append", metavar="NAME",
                   help="keep only these instruments, e.g. LVK, Fermi-GBM (repeatable)")
    p.add_argument("--max-credible-level", type=_probability, default=1.0, metavar="P",
                   help="keep alerts inside this credible region, e.g. 0.9 (default 1)")
    p.add_argument("--max-p-chance", type=_probability, default=1.0, metavar="P",
                   help="keep matches with a chance probability at most P (default 1)")
    p.add_argument("--out", metavar="DIR", help="write each counterpart's VOEvent here")
    p.add_argument("--db", metavar="URL", help="store matches in this SQLAlchemy database")
    p.add_argument("--count", type=int, metavar="N", help="stop after N kept notices")
    p.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--json", action="store_true", help="print each match as one JSON line")
    p.add_argument("--no-print", action="store_true", help="store only, print nothing")
    p.set_defaults(func=cmd_subscribe)

    p = subparsers.add_parser(
        "plot", help="draw an event's skymap, credible contours and matched alerts (PNG)")
    p.add_argument("event_id", metavar="EVENT_ID", help="event id, e.g. lvk:S230518h")
    p.add_argument("--db", metavar="URL", help="SQLAlchemy URL (default: store.url)")
    p.add_argument("--config", help="TOML file merged over config/default.toml")
    p.add_argument("--out", metavar="FILE.png", help="output PNG (default: <event id>.png)")
    p.add_argument("--credible-levels", type=_probability, nargs="+", default=[0.5, 0.9],
                   metavar="P", help="contours to draw (default 0.5 0.9)")
    p.set_defaults(func=cmd_plot)


def build_parser() -> argparse.ArgumentParser:
    """A parser with only the observer commands (for :func:`main` and tests)."""
    parser = argparse.ArgumentParser(prog="mmcross", description="mmcross observer commands")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = (logging.WARNING if args.quiet else logging.INFO if args.verbose == 0
             else logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        return args.func(args)
    except MmcrossError as exc:
        print(f"mmcross: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
