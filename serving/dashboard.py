"""The operator's dashboard at ``/``: one HTML page, plain JavaScript, charts by uPlot.

``GET /`` renders ``templates/dashboard.html``; ``static/dashboard.js`` then
reads the JSON API (services and their liveness, a service's series, drive
health and latency, active alerts) and refreshes it all every
``dashboard_refresh_s`` seconds, which the page gets in a ``data-`` attribute.

Decisions:

- uPlot (npm ``uplot``, MIT): small (~50 KB), fast on thousands of points,
  maintained, and its browser build needs no bundler; ``make setup`` installs
  it with ``npm ci`` into ``settings.web_modules_path`` (the project's
  ``node_modules`` unless ``web_modules_dir`` says otherwise), and the app
  serves exactly the two files the page needs (``UPLOT_FILES``) at
  ``/vendor/uplot/`` — never the rest of ``node_modules``, never a CDN, so it
  works offline.  Without them the page still loads, says so, and shows its
  tables.
- The page's own files are Flask's static folder (``serving/static``).
- A Content-Security-Policy allows only this origin: a dashboard that tried to
  load anything from elsewhere would fail loudly in the browser's console.
- The page asks for ``/api/v1/alerts`` only when the app has that route
  (``data-alerts-url``), so an app without alerting shows "alerts
  unavailable" instead of a failed request.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flask import Blueprint, Flask, Response, render_template, send_file

from healthmon.config import Settings
from serving.errors import not_found

UPLOT_DIST = Path("uplot") / "dist"
"""uPlot's built files, in ``settings.web_modules_path``."""

UPLOT_FILES = {"uPlot.iife.min.js": "text/javascript", "uPlot.min.css": "text/css"}
"""The only files of ``node_modules`` the dashboard serves (uPlot's browser build and stylesheet), with their media types."""

VENDOR_MAX_AGE_S = 3600
"""How long a browser may cache a uPlot file (a pinned version: it changes only with package.json)."""

RANGES = ("15m", "1h", "6h", "24h", "7d")
"""The chart ranges the page offers (dashboard.js knows their lengths); the API picks the step for each."""

METRICS = (("cpu_pct", "CPU %"), ("ram_used_pct", "RAM used %"), ("disk_used_pct", "disk used %"))
"""The service charts: a metric of the series answer and its title."""

ALERTS_URL = "/api/v1/alerts"
"""The active alerts the page lists, when the app has that route."""

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The dashboard loads scripts, styles, images and data from its own origin only."""


def register(app: Flask, settings: Settings, clock: Callable[[], float]) -> None:
    """Add ``/`` and ``/vendor/uplot/<name>`` to the API app."""
    blueprint = Blueprint("dashboard", __name__)
    uplot_dir = settings.web_modules_path / UPLOT_DIST

    @blueprint.get("/")
    def index() -> Response:
        has_alerts = any(rule.rule == ALERTS_URL for rule in app.url_map.iter_rules())
        html = render_template(
            "dashboard.html", refresh_s=settings.dashboard_refresh_s, alerts_url=ALERTS_URL if has_alerts else "",
            uplot=all((uplot_dir / name).is_file() for name in UPLOT_FILES), ranges=RANGES, metrics=METRICS,
        )
        return Response(html, mimetype="text/html", headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})

    @blueprint.get("/vendor/uplot/<name>")
    def uplot(name: str) -> Response:
        if name not in UPLOT_FILES:
            raise not_found(f"no uPlot file {name[:60]!r} (known: {', '.join(UPLOT_FILES)})")
        path = uplot_dir / name
        if not path.is_file():
            raise not_found(f"uPlot is not installed: {path} is missing; run `make setup` (npm ci)")
        return send_file(path, mimetype=UPLOT_FILES[name], max_age=VENDOR_MAX_AGE_S)

    app.register_blueprint(blueprint)
