"""``mmcross serve``: a read-only web page and JSON API over the store (FastAPI + uvicorn)."""

from mmcross.app.web.app import create_app
from mmcross.app.web.server import serve, start_server_thread

__all__ = ["create_app", "serve", "start_server_thread"]
