"""The console: a small single-page web UI (plain HTML/JS/CSS in static/, served at /console by `graft serve`)
and the few read models it needs beyond the public API (views.py)."""

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
