"""What every page of the web server shares: its settings and store, and HTML from templates.

`digest.web` assembles the server and mounts the email pages (`digest.mail.pages`); both use
these, which is why they live apart from either. Pages are server-rendered from
`templates/web/*.html.j2` (autoescaped).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from digest.config import Settings
from digest.render import get_environment
from digest.store import PaperStore

STORE_KEY = web.AppKey("store", PaperStore)
SETTINGS_KEY = web.AppKey("settings", Settings)


def render_page(template: str, *, status: int = 200, **context: Any) -> web.Response:
    """A page from `templates/web/<template>` as an HTML response."""
    html = get_environment().get_template(f"web/{template}").render(**context)
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def message_page(
    title: str,
    *paragraphs: str,
    status: int = 200,
    error: bool = False,
    items: Iterable[str] = (),
    links: Iterable[tuple[str, str]] = (),
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """A short result or error page."""
    response = render_page(
        "message.html.j2",
        status=status,
        title=title,
        paragraphs=list(paragraphs),
        error=error,
        items=list(items),
        links=list(links),
    )
    if headers:
        response.headers.update(headers)
    return response


__all__ = [
    "message_page",
    "render_page",
]
