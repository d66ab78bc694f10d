"""The operator's exception tree. Every error it raises on purpose is an ``OperatorError``.

::

    OperatorError
    ├── ApiError            the API server refused or could not be reached (``status``,
    │   │                   ``reason``, ``message``: the server's own words, no HTTP dump)
    │   ├── NotFound        404
    │   ├── Conflict        409: already exists, or a stale resourceVersion
    │   ├── Invalid         400, 422: the object was refused (the message names the field)
    │   ├── Forbidden       401, 403
    │   ├── Gone            410: a watch or list continuation is too old
    │   └── Unavailable     no answer (connection refused, timeout) or a 5xx
    ├── KubeconfigError     no cluster to talk to: the kubeconfig is missing or unusable
    ├── InvalidSpec         an EvalRun spec that cannot run (``problems`` name each field)
    ├── RetryLater          not the spec's fault: something it needs does not exist yet
    ├── ObjectStoreError    reading or writing S3 failed (the message holds no secret)
    ├── ScrapeError         a runner did not answer, or answered nonsense
    └── NotLeading          a write refused: this process no longer holds the leader Lease

Only ``k8s/`` talks to the API server; it translates the client library's exceptions
into ``ApiError`` so that no other module needs to know which client is used.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ApiError",
    "Conflict",
    "Forbidden",
    "Gone",
    "Invalid",
    "InvalidSpec",
    "KubeconfigError",
    "NotFound",
    "NotLeading",
    "ObjectStoreError",
    "OperatorError",
    "Problem",
    "RetryLater",
    "ScrapeError",
    "Unavailable",
]


class OperatorError(Exception):
    """Base of every error the operator raises on purpose."""


class ApiError(OperatorError):
    """The API server answered with an error, or did not answer."""

    status: int = 0

    def __init__(self, message: str, *, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.reason = reason


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class Invalid(ApiError):
    status = 422


class Forbidden(ApiError):
    status = 403


class Gone(ApiError):
    status = 410


class Unavailable(ApiError):
    status = 503


def api_error(status: int, message: str, reason: str = "") -> ApiError:
    """The ApiError subclass for an HTTP status."""
    kind: type[ApiError] = {
        404: NotFound,
        409: Conflict,
        400: Invalid,
        422: Invalid,
        401: Forbidden,
        403: Forbidden,
        410: Gone,
    }.get(status, Unavailable if status == 0 or status >= 500 else ApiError)
    return kind(message, status=status, reason=reason)


class KubeconfigError(OperatorError):
    """There is no cluster to talk to: the kubeconfig (or its context) is missing or
    cannot be used, and the process does not run in a pod."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec: the field (``spec.tasks[1]``) and why."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class InvalidSpec(OperatorError, ValueError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


class RetryLater(OperatorError):
    """Not an error of the spec: something it needs does not exist yet."""

    def __init__(self, message: str, delay: float = 10.0) -> None:
        super().__init__(message)
        self.delay = delay


class ObjectStoreError(OperatorError):
    """Reading or writing the object store failed; the message holds no secret."""


class PublishFailed(OperatorError):
    """A Leaderboard publish failed and will be tried again (the run counts its tries)."""


class ScrapeError(OperatorError):
    """A runner could not be scraped."""


class NotLeading(OperatorError):
    """A write was refused before it was sent: this process no longer holds the leader
    Lease (``--leader-elect``), so another replica may be doing the work."""
