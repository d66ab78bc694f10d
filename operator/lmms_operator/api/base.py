"""Shared building blocks of the API models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, BeforeValidator, ConfigDict
from pydantic.alias_generators import to_camel

GROUP = "eval.lmms.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

#: RFC 1123 label (names of ConfigMaps, Secrets, PVCs, queues, ...).
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: RFC 1123 subdomain (most object names).
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A Kubernetes resource quantity such as ``4``, ``500m``, ``32Gi``.
QUANTITY = r"^([+]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"


#: Bounds of the numbers and lists of a status (well above what a run produces).
MAX_COUNT = 2**53 - 1


def cap(n: int) -> BeforeValidator:
    """Cuts a string or a list to ``n``: a status field the operator fills from what
    runners and lmms-eval report stays within the schema's bound instead of failing."""

    def cut(value: Any) -> Any:
        return value[:n] if isinstance(value, str | list) else value

    return BeforeValidator(cut)


def clamp(low: float, high: float) -> BeforeValidator:
    """Brings a reported number within the schema's bounds."""

    def bound(value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return min(max(value, low), high)
        return value

    return BeforeValidator(bound)


class ApiModel(BaseModel):
    """Base of every API type: camelCase on the wire, unknown fields refused.

    Refusing unknown fields here matches the API server, which prunes them (and, with
    ``kubectl apply --validate=strict``, refuses them): a typo never passes silently.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it (camelCase, unset optionals left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
