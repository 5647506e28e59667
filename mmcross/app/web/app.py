"""The read-only web application over the store: HTML pages and the JSON API (FastAPI).

Pages: ``/`` (events), ``/events/{event_id}`` (facts, sky map, counterpart candidates sortable
by credible level, p_chance, time offset and distance, revisions), its table alone at
``/events/{event_id}/counterparts`` (polled by the page every ``[web] refresh_seconds``, so new
matches appear without a reload) and its figure at ``/events/{event_id}/skymap.png``.

JSON API: ``/api/events``, ``/api/events/{event_id}``, ``/api/matches``; schema at
``/openapi.json``. Every route is a GET: the application opens the store read-only
(:class:`mmcross.catalogs.queries.Catalog`) and shows its URL with the password masked.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from astropy.time import Time
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmcross.app.web.filters import FILTERS
from mmcross.app.web.params import parse_time
from mmcross.app.web.schemas import EventDetailOut, EventOut, MatchOut, RevisionOut, match_out
from mmcross.app.web.settings import WebSettings
from mmcross.app.web.skymap import SkymapCache
from mmcross.catalogs.queries import (
    Catalog,
    EventFilter,
    EventStatus,
    EventSummary,
    MatchFilter,
    MatchSort,
)
from mmcross.model.config import Config
from mmcross.model.errors import MmcrossError

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
MAX_LIMIT = 10_000
"""Most records one API call returns."""
WARM_JOIN = 10.0
"""Seconds a stopping server waits for the read-ahead of sky summaries."""


class PageSort(enum.StrEnum):
    """Sortable columns of the counterpart table."""

    CREDIBLE_LEVEL = "credible_level"
    P_CHANCE = "p_chance"
    TIME_OFFSET = "time_offset"
    DISTANCE = "distance"


class Order(enum.StrEnum):
    ASC = "asc"
    DESC = "desc"


class ErrorOut(BaseModel):
    """An error answer."""

    detail: str


_TIME_HELP = "ISO 8601 UTC (2023-05-18T12:59:08Z) or MJD TAI (60082.54)"
TIME_PATTERN = r"^(\d+(\.\d+)?|\d{4}-\d\d-\d\d([T ]\d\d:\d\d(:\d\d(\.\d+)?)?Z?)?)$"
"""What a time parameter looks like (the calendar and the MJD range are checked after)."""
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut,
                                                    "description": "unknown event"}}
PAGE_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"content": {"text/html": {}}, "description": "unknown event (HTML page)"}}
_SORTABLE = ((PageSort.TIME_OFFSET, "\u0394t (days)"), (PageSort.CREDIBLE_LEVEL, "credible level"),
             (PageSort.P_CHANCE, "p_chance"), (PageSort.DISTANCE, "distance (Mpc)"))


def _time_query(what: str) -> Any:
    return Query(pattern=TIME_PATTERN, description=f"{what}: {_TIME_HELP}")


def _mjd(name: str, text: str | None) -> float | None:
    """Query parameter ``name`` as MJD TAI (see :func:`parse_time`); a 422 if it is none."""
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise RequestValidationError([{"type": "value_error", "loc": ("query", name),
                                       "msg": str(exc), "input": text}]) from exc


def _missing(event_id: str) -> str:
    return f"event {event_id!r} is not in the store"


def event_path(event_id: str, suffix: str = "") -> str:
    """The page of ``event_id`` (URL-quoted) with ``suffix`` (``"/skymap.png"``...)."""
    return f"/events/{quote(event_id, safe=':@/')}{suffix}"


def create_app(store_url: str, config: Config) -> FastAPI:
    """The web application over the store at ``store_url``, opened read-only.

    Args:
        store_url: SQLAlchemy URL of the store (SQLite file or PostgreSQL).
        config: gives ``[web]`` (links, refresh, caches) and the matching windows (status).

    Raises:
        StoreError: the store cannot be opened for reading.
        ConfigError: ``[web]`` is invalid.
    """
    settings = WebSettings.from_config(config)
    catalog = Catalog(store_url, config)
    skymaps = SkymapCache(catalog, settings.skymap_cache)
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.filters.update(FILTERS)

    def warm() -> None:
        try:
            catalog.events(EventFilter(limit=settings.page_limit))
        except MmcrossError as exc:
            log.warning("could not read the events ahead of the first page: %s", exc)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # the events' sky summaries are read ahead, so the first visitor does not wait
        warming = threading.Thread(target=warm, name="mmcross-web-warm", daemon=True)
        warming.start()
        yield
        warming.join(WARM_JOIN)
        catalog.close()

    app = FastAPI(title="mmcross", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Read-only view of the mmcross store: multi-messenger events "
                              "and their Rubin counterpart candidates.")
    app.state.catalog = catalog
    app.state.settings = settings

    @app.exception_handler(StarletteHTTPException)
    async def not_found(request: Request, exc: StarletteHTTPException) -> Response:
        """Unknown pages get an HTML page; the API and the figures keep JSON errors."""
        path = request.url.path
        if exc.status_code != 404 or path.startswith("/api/") or path.endswith(".png"):
            return await http_exception_handler(request, exc)
        return await run_in_threadpool(missing_page, request, f"there is no page at {path}")

    def page(request: Request, name: str, context: dict[str, Any]) -> HTMLResponse:
        stream = Time(catalog.stream_time(), format="mjd", scale="tai").utc.isot
        return templates.TemplateResponse(request, name, {
            "store_url": catalog.url, "stream_time": FILTERS["utc"](stream),
            "object_url": settings.link, "event_path": event_path, **context})

    def known(event_id: str) -> EventSummary:
        event = catalog.event(event_id)
        if event is None:
            raise HTTPException(404, detail=_missing(event_id))
        return event

    def missing_page(request: Request, message: str) -> HTMLResponse:
        response = page(request, "missing.html", {"message": message})
        response.status_code = 404
        return response

    def counterparts(event_id: str, sort: PageSort, order: Order,
                     revoked: bool) -> dict[str, Any]:
        matches = catalog.matches(MatchFilter(
            event_id=event_id, include_revoked=revoked, limit=MAX_LIMIT,
            sort=MatchSort(str(sort)), descending=order is Order.DESC))
        links = {}
        for key, _label in _SORTABLE:
            flip = Order.DESC if key == sort and order is Order.ASC else Order.ASC
            query = {"sort": str(key), "order": str(flip)} | ({"revoked": "true"} if revoked
                                                              else {})
            links[str(key)] = f"{event_path(event_id)}?{urlencode(query)}"
        fragment = {"sort": str(sort), "order": str(order)} | ({"revoked": "true"} if revoked
                                                              else {})
        return {"matches": matches, "sort": str(sort), "order": str(order),
                "show_revoked": revoked, "sortable": [(str(k), v) for k, v in _SORTABLE],
                "sort_links": links, "fingerprint": catalog.fingerprint(event_id),
                "fragment_url": f"{event_path(event_id, '/counterparts')}?"
                                f"{urlencode(fragment)}"}

    # -- pages -------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, name="index",
             summary="Live and past events (HTML)")
    def index(request: Request) -> HTMLResponse:
        events = catalog.events(EventFilter(limit=settings.page_limit))
        return page(request, "index.html", {"events": events})

    # the figure and the fragment first: an event id may hold a "/"
    @app.get("/events/{event_id:path}/counterparts", response_class=HTMLResponse,
             name="counterparts_fragment", responses=PAGE_NOT_FOUND,
             summary="The counterpart table of an event alone (HTML fragment, polled)")
    def counterparts_fragment(request: Request, event_id: str,
                              sort: PageSort = PageSort.CREDIBLE_LEVEL,
                              order: Order = Order.ASC, revoked: bool = False) -> HTMLResponse:
        if catalog.event(event_id) is None:
            return missing_page(request, _missing(event_id))
        return templates.TemplateResponse(request, "counterparts.html", {
            "object_url": settings.link, **counterparts(event_id, sort, order, revoked)})

    @app.get("/events/{event_id:path}/skymap.png", name="skymap_png",
             summary="Sky map, credible contours and matched alerts (PNG, cached)",
             response_class=Response,
             responses={200: {"content": {"image/png": {}}, "description": "the figure"},
                        404: {"model": ErrorOut, "description": "unknown event or no map"}})
    def skymap_png(event_id: str) -> Response:
        known(event_id)
        try:
            data, fingerprint = skymaps.png(event_id)
        except MmcrossError as exc:
            raise HTTPException(404, detail=str(exc)) from exc
        return Response(data, media_type="image/png",
                        headers={"Cache-Control": "no-cache", "ETag": f'"{fingerprint}"'})

    @app.get("/events/{event_id:path}", response_class=HTMLResponse, name="event_page",
             responses=PAGE_NOT_FOUND, summary="One event: sky map, counterparts, revisions (HTML)")
    def event_page(request: Request, event_id: str,
                   sort: PageSort = PageSort.CREDIBLE_LEVEL, order: Order = Order.ASC,
                   revoked: bool = False) -> HTMLResponse:
        event = catalog.event(event_id)
        if event is None:
            return missing_page(request, _missing(event_id))
        toggle = {"sort": str(sort), "order": str(order)} | ({} if revoked
                                                             else {"revoked": "true"})
        return page(request, "event.html", {
            "event": event, "revisions": catalog.revisions(event_id),
            "refresh_seconds": settings.refresh_seconds,
            "toggle_revoked": f"{event_path(event_id)}?{urlencode(toggle)}",
            **counterparts(event_id, sort, order, revoked)})

    # -- JSON API ----------------------------------------------------------------------

    @app.get("/api/events", response_model=list[EventOut], summary="Events, newest first")
    def api_events(
            kind: Annotated[str | None, Query(description="gw, grb, neutrino...")] = None,
            instrument: Annotated[str | None, Query(description="e.g. LVK, Fermi-GBM")] = None,
            status: EventStatus | None = None,
            since: Annotated[str | None, _time_query("trigger time >= this")] = None,
            until: Annotated[str | None, _time_query("trigger time <= this")] = None,
            limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100) -> list[EventOut]:
        rows = catalog.events(EventFilter(kind=kind, instrument=instrument, status=status,
                                          since=_mjd("since", since),
                                          until=_mjd("until", until), limit=limit))
        return [EventOut.of(e) for e in rows]

    @app.get("/api/events/{event_id:path}", response_model=EventDetailOut, responses=NOT_FOUND,
             summary="One event with its revisions")
    def api_event(event_id: str) -> EventDetailOut:
        event = known(event_id)
        history = [RevisionOut.of(r) for r in catalog.revisions(event_id)]
        return EventDetailOut(**EventOut.of(event).model_dump(), revision_history=history)

    @app.get("/api/matches", response_model=list[MatchOut],
             summary="Counterpart candidates: the latest revision's record of each "
                     "(event, alert), newest first")
    def api_matches(
            event_id: str | None = None,
            kind: Annotated[str | None, Query(description="event kind: gw, grb...")] = None,
            instrument: Annotated[str | None, Query(description="event instrument")] = None,
            max_credible_level: Annotated[float | None, Query(ge=0, le=1)] = None,
            max_p_chance: Annotated[float | None, Query(ge=0, le=1)] = None,
            since: Annotated[str | None, _time_query("alert time >= this")] = None,
            until: Annotated[str | None, _time_query("alert time <= this")] = None,
            include_revoked: bool = False,
            limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 1000) -> list[BaseModel]:
        rows = catalog.matches(MatchFilter(
            event_id=event_id, kind=kind, instrument=instrument,
            max_credible_level=max_credible_level, max_p_chance=max_p_chance,
            since=_mjd("since", since), until=_mjd("until", until),
            include_revoked=include_revoked, limit=limit))
        return [match_out(m, settings.link(m.object_id)) for m in rows]

    return app
