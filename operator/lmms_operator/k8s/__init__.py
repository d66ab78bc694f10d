"""The only layer that talks to the API server (and the only one importing ``kubernetes``).

Requests go through one ``Api`` per process (``client``: plain dicts in and out, errors
as ``errors.ApiError``), made by the command line and passed to what reads; informers
(``watch``) list and watch with server-side label selectors through it. Writes
(``writes.Writer``) are the applier's alone: this package does not re-export them.
"""

from .client import USABLE_LABEL, Api, current_namespace, own_namespace, path
from .watch import Informer, Sink

__all__ = ["USABLE_LABEL", "Api", "Informer", "Sink", "current_namespace", "own_namespace", "path"]
