"""The ``[web]`` section of the configuration: where ``mmcross serve`` listens and what its
pages link to."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from mmcross.model.config import Config
from mmcross.model.errors import ConfigError


@dataclass(frozen=True)
class WebSettings:
    """``[web]`` settings.

    Attributes:
        host, port: where the server listens (127.0.0.1 by default; port 0: any free port).
        object_url: link of a Rubin object, ``{object_id}`` replaced by its diaObjectId.
        refresh_seconds: how often an event page checks for new matches, seconds.
        skymap_cache: sky-map figures kept in memory.
        page_limit: most events listed on the index page.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    object_url: str = "https://lasair.lsst.ac.uk/objects/{object_id}/"
    refresh_seconds: float = 5.0
    skymap_cache: int = 32
    page_limit: int = 200

    @classmethod
    def from_config(cls, config: Config) -> WebSettings:
        """The ``[web]`` section of ``config`` (missing keys take the defaults above).

        Raises:
            ConfigError: a value of the wrong type or range, or an ``object_url`` without
                ``{object_id}``.
        """
        section = config.get("web", {}) or {}
        default = cls()
        try:
            settings = cls(
                host=str(section.get("host", default.host)),
                port=int(section.get("port", default.port)),
                object_url=str(section.get("object_url", default.object_url)),
                refresh_seconds=float(section.get("refresh_seconds", default.refresh_seconds)),
                skymap_cache=int(section.get("skymap_cache", default.skymap_cache)),
                page_limit=int(section.get("page_limit", default.page_limit)))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"[web] has a value of the wrong type: {exc}") from exc
        if "{object_id}" not in settings.object_url:
            raise ConfigError(f"[web] object_url must contain {{object_id}}, got "
                              f"{settings.object_url!r}")
        try:
            settings.object_url.format(object_id="1")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"[web] object_url {settings.object_url!r} is not a valid "
                              f"template: {exc}") from exc
        if not 0 <= settings.port <= 65535:
            raise ConfigError(f"[web] port must be 0..65535, got {settings.port}")
        if settings.refresh_seconds <= 0 or settings.skymap_cache < 1 or settings.page_limit < 1:
            raise ConfigError("[web] refresh_seconds, skymap_cache and page_limit must be > 0")
        return settings

    def link(self, object_id: str) -> str:
        """The page of Rubin object ``object_id`` (URL-quoted into :attr:`object_url`)."""
        return self.object_url.format(object_id=quote(str(object_id), safe=""))
