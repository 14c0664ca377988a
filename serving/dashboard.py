"""(being written)"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask

from healthmon.config import Settings


def register(app: Flask, settings: Settings, clock: Callable[[], float]) -> None:
    """Add this module's routes to the API app."""
