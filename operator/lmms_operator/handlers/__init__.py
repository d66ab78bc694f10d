"""Kopf handlers. Importing this package registers them."""

from . import operator, startup

__all__ = ["operator", "startup"]
