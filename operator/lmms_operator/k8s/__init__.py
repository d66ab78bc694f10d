"""The only layer that talks to the API server (and the only one importing ``kubernetes``).

Requests (``client``) take and return plain dicts and raise ``errors.ApiError``;
informers (``watch``) list and watch with server-side label selectors. Writes
(``writes``) are the applier's alone: this package does not re-export them.
"""

from .client import (
    USABLE_LABEL,
    api,
    call,
    config_map_exists,
    current_namespace,
    get_evalrun,
    get_job,
    get_leaderboard,
    list_config_maps,
    list_evalruns,
    list_jobs,
    list_pods,
    path,
    pvc_exists,
    read_config_map,
    read_secret,
    read_secret_value,
    read_tenant_secret,
    request,
)
from .watch import Informer, Sink

__all__ = [
    "USABLE_LABEL",
    "Informer",
    "Sink",
    "api",
    "call",
    "config_map_exists",
    "current_namespace",
    "get_evalrun",
    "get_job",
    "get_leaderboard",
    "list_config_maps",
    "list_evalruns",
    "list_jobs",
    "list_pods",
    "path",
    "pvc_exists",
    "read_config_map",
    "read_secret",
    "read_secret_value",
    "read_tenant_secret",
    "request",
]
