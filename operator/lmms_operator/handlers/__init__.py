"""Kopf handlers. Importing this package registers them."""

from . import evalrun, startup

__all__ = ["evalrun", "startup"]
