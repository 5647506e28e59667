"""``mmcross serve``: the read-only web page and JSON API over the store.

:func:`add_parsers` registers the command on the main parser's sub-parsers. Like
:mod:`mmcross.app.cli`, only this module prints.
"""

from __future__ import annotations

import argparse

from mmcross.model.config import Config


def cmd_serve(args: argparse.Namespace) -> int:
    from mmcross.app.web import serve
    from mmcross.catalogs import mask_url  # SQLAlchemy: only when serving (fast --help)

    config = Config.load(args.config)
    url = args.db or config.get("store.url")

    def ready(address: str) -> None:
        print(f"mmcross serve: {address} (store {mask_url(url)}, read-only; Ctrl-C to stop)",
              flush=True)

    serve(url, config, host=args.host, port=args.port, on_ready=ready)
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``serve`` (with ``func``) on ``subparsers``."""
    p = subparsers.add_parser(
        "serve", help="read-only web page and JSON API over the store (events, sky maps, "
                      "counterparts)")
    p.add_argument("--db", metavar="URL", help="SQLAlchemy URL of the store (default: store.url)")
    p.add_argument("--config", help="TOML file merged over config/default.toml ([web])")
    p.add_argument("--host", help="address to listen on (default [web] host, 127.0.0.1)")
    p.add_argument("--port", type=int, metavar="PORT",
                   help="port to listen on (default [web] port; 0: any free port, printed)")
    p.set_defaults(func=cmd_serve)
