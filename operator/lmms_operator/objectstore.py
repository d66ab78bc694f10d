"""The operator's side of S3-compatible object storage (boto3).

The operator reads a run's results from the store when the runner cannot be reached,
and writes Leaderboard tables to it. What it may do there is narrow, because it acts
for every tenant:

- Credentials come from the Secret that the resource names (``credentialsSecret``:
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optionally AWS_SESSION_TOKEN), read by name
  in the resource's namespace, and only when the Secret is labelled usable by EvalRuns.
- Without one, the operator's own identity (boto3's default chain) is used only for the
  buckets the platform listed (``LMMS_OWN_IDENTITY_BUCKETS``); any other store is
  refused, so that a tenant cannot point the operator's identity at a bucket or an
  endpoint of its choosing.
- Every call (connect, send, headers, body, its one retry) ends within READ_DEADLINE
  seconds in all, whatever the store does, and every answer the operator reads (an
  object, a listing, an error) is capped at MAX_OBJECT_BYTES (``netguard``).
- The endpoint is checked before a client is made (``reconcile.endpoints``: syntax, and
  the class of an IP literal), and every connection goes through ``netguard``: only
  public addresses, or the networks the admin lists (``LMMS_OBJECT_STORE_ALLOWED_CIDRS``),
  to the address checked, with no proxy and no redirect.

Every failure, from making the client to the store's answer, is an ``ObjectStoreError``
whose message starts with the field of the resource that named the store
(``spec.output.s3``, ``spec.storage.s3``). Credentials are never logged: errors name
the bucket, the key and the store's error code only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from . import k8s, netguard
from .api import S3Output
from .api.runner import RESULTS_SUMMARY_FILE
from .errors import ObjectStoreError
from .reconcile.endpoints import Network, check_store_endpoint, parse_cidrs

#: Where the runner puts its results summary in the output it uploads.
SUMMARY_KEY = RESULTS_SUMMARY_FILE
#: The most the operator reads of one answer (an object, a listing, an error), and the
#: longest one call takes in all (connect, send, headers, body, retries).
MAX_OBJECT_BYTES = 8 * 1024 * 1024
READ_DEADLINE = 20.0
_CHUNK = 64 * 1024

#: The fields that name a store: an EvalRun's output, a Leaderboard's storage.
OUTPUT_FIELD = "spec.output.s3"
BOARD_FIELD = "spec.storage.s3"

_CREDENTIAL_KEYS = {
    "AWS_ACCESS_KEY_ID": "aws_access_key_id",
    "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key",
    "AWS_SESSION_TOKEN": "aws_session_token",
}


@dataclass(frozen=True)
class StorePolicy:
    """What the platform allows: object stores at all (the s3Output feature, which gates
    Leaderboard ``storage.s3`` too), the buckets (``bucket`` on AWS S3, ``host/bucket``
    elsewhere) that the operator's own identity may reach, and the networks beyond
    public addresses where stores may be (``allowed_cidrs``; none by default)."""

    enabled: bool = True
    own_identity_buckets: frozenset[str] = frozenset()
    allowed_cidrs: tuple[Network, ...] = ()

    @staticmethod
    def networks(items: Iterable[str], setting: str) -> tuple[Network, ...]:
        """The admin's CIDRs; a ValueError naming ``setting`` for one that is none."""
        return parse_cidrs(items, setting)

    def own_identity_allowed(self, s3: S3Output) -> bool:
        """Whether the listed ``host/bucket`` (or ``bucket`` on AWS S3) is this store. An
        endpoint with a path, a query or a fragment is never: botocore puts the path
        before the bucket (``http://host/other-bucket``), so the bucket reached would not
        be the one listed."""
        if not s3.endpoint:
            return s3.bucket in self.own_identity_buckets
        parts = urlsplit(s3.endpoint)
        if parts.path.strip("/") or parts.query or parts.fragment or not parts.netloc:
            return False
        return f"{parts.netloc}/{s3.bucket}" in self.own_identity_buckets


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key)."""
    if not url.startswith("s3://"):
        raise ObjectStoreError(f"not an s3:// URL: {url!r}")
    bucket, _, key = url[len("s3://") :].partition("/")
    if not bucket:
        raise ObjectStoreError(f"no bucket in {url!r}")
    return bucket, key


def _failed(
    field: str, doing: str, exc: Exception, deadline: netguard.Deadline
) -> ObjectStoreError:
    """The error for a failed call: the guard's refusal names the endpoint's field; once
    the deadline has passed, whatever broke, the deadline is the reason."""
    refused = netguard.refusal_in(exc)
    if refused is not None:
        return ObjectStoreError(f"{field}.endpoint: {refused}")
    if deadline.expired:
        return ObjectStoreError(
            f"{field}: {doing}: the store did not answer within {deadline.seconds:g} s"
        )
    if isinstance(exc, ObjectStoreError | netguard.TooLarge):
        return ObjectStoreError(f"{field}: {doing}: {exc}")
    return ObjectStoreError(f"{field}: {doing}: {_describe(exc)}")


def _describe(exc: Exception) -> str:
    # botocore's ClientError carries the code and message of the store, no credentials.
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        err = response["Error"]
        return f"{err.get('Code')}: {str(err.get('Message'))[:200]}"
    return type(exc).__name__ + (f": {exc}" if "Credential" not in type(exc).__name__ else "")


def _read_capped(body: Any, deadline: netguard.Deadline) -> bytes:
    """Reads a streaming body up to MAX_OBJECT_BYTES, taking what each receive brings;
    the deadline shuts the connection of a store that drips bytes."""
    raw = getattr(body, "_raw_stream", None)
    read = getattr(raw, "read1", None) or body.read
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            deadline.check()
            chunk = read(_CHUNK)
            if not chunk:
                deadline.check()  # cut short by the deadline, not the end
                return b"".join(chunks)
            size += len(chunk)
            if size > MAX_OBJECT_BYTES:
                raise ObjectStoreError(f"it is larger than {MAX_OBJECT_BYTES} bytes")
            chunks.append(chunk)
    finally:
        body.close()


class ObjectStore:
    """The operator's client of S3-compatible stores, under the platform's policy: a
    tenant's bucket is reached with the tenant's own credentials (a Secret of its
    namespace, labelled usable), the operator's identity only where the policy lists the
    bucket."""

    def __init__(
        self, policy: StorePolicy, api: k8s.Api, resolver: netguard.Resolver | None = None
    ) -> None:
        self.policy, self.api = policy, api
        self.guard = netguard.Guard(policy.allowed_cidrs, resolver or netguard.system_resolver)

    def _credentials(self, namespace: str, s3: S3Output) -> dict[str, str]:
        if not self.policy.enabled:
            raise ObjectStoreError(
                "object stores are not allowed by this operator (the s3Output feature is off)"
            )
        if not s3.credentials_secret:
            if not self.policy.own_identity_allowed(s3):
                raise ObjectStoreError(
                    f"no credentialsSecret for bucket {s3.bucket!r}, and the operator uses its "
                    "own identity only for the buckets the platform lists "
                    "(settings.objectStore.ownIdentityBuckets)"
                )
            return {}
        data = self.api.read_tenant_secret(namespace, s3.credentials_secret)
        if data is None:
            raise ObjectStoreError(
                f"Secret {s3.credentials_secret!r} is not usable by EvalRuns: it must exist and "
                f"be labelled {k8s.USABLE_LABEL}=true"
            )
        creds: dict[str, str] = {}
        for key, arg in _CREDENTIAL_KEYS.items():
            try:
                value = (data.get(key) or b"").decode().strip()
            except UnicodeDecodeError:
                value = ""
            if value:
                creds[arg] = value
        if "aws_access_key_id" not in creds or "aws_secret_access_key" not in creds:
            raise ObjectStoreError(
                f"Secret {namespace}/{s3.credentials_secret} lacks AWS_ACCESS_KEY_ID or "
                "AWS_SECRET_ACCESS_KEY"
            )
        return creds

    def _client(self, namespace: str, s3: S3Output, field: str, deadline: netguard.Deadline) -> Any:
        """A client of the store that connects only through the guard. Every failure is
        an ObjectStoreError that names ``field`` (the resource's ``...s3``)."""
        problem = check_store_endpoint(f"{field}.endpoint", s3.endpoint, self.policy.allowed_cidrs)
        if problem is not None:
            raise ObjectStoreError(str(problem))
        try:
            creds = self._credentials(namespace, s3)
        except ObjectStoreError as exc:
            raise ObjectStoreError(f"{field}: {exc}") from None
        try:
            import boto3
            from botocore.config import Config

            client = boto3.client(
                "s3",
                endpoint_url=s3.endpoint or None,
                region_name=s3.region or "us-east-1",
                config=Config(
                    retries={"max_attempts": 2, "mode": "standard"},
                    connect_timeout=5,
                    read_timeout=5,
                    proxies={},
                    s3={"addressing_style": "path"} if s3.endpoint else None,
                ),
                **creds,
            )
            netguard.guard_client(client, self.guard, deadline, MAX_OBJECT_BYTES)
        except Exception as exc:
            error = _failed(field, "no client for the store", exc, deadline)
            raise ObjectStoreError(_scrub(str(error), creds)) from None
        return client

    @contextmanager
    def _call(
        self, namespace: str, s3: S3Output, field: str, doing: str
    ) -> Iterator[tuple[Any, netguard.Deadline]]:
        """A client for one call, which ends within READ_DEADLINE seconds in all (connect,
        send, headers, body, retries) and closes its connections at the end; every failure
        is an ObjectStoreError naming ``field`` and what was being done."""
        with netguard.Deadline(READ_DEADLINE) as deadline:
            client = self._client(namespace, s3, field, deadline)
            try:
                yield client, deadline
                deadline.check()  # a store cut off mid-headers may look like an empty 200
            except Exception as exc:
                raise _failed(field, doing, exc, deadline) from None
            finally:
                netguard.close_client(client)

    def get_json(self, namespace: str, s3: S3Output, url: str, *, field: str = OUTPUT_FIELD) -> Any:
        """The JSON document at ``url`` (``s3://bucket/key``), at most MAX_OBJECT_BYTES read
        within READ_DEADLINE seconds."""
        bucket, key = split_url(url)
        where = f"s3://{bucket}/{key}"
        with self._call(namespace, s3, field, f"reading {where}") as (client, deadline):
            response = client.get_object(Bucket=bucket, Key=key)
            length = int(response.get("ContentLength") or 0)
            if length > MAX_OBJECT_BYTES:
                response["Body"].close()
                raise ObjectStoreError(f"it is {length} bytes; at most {MAX_OBJECT_BYTES}")
            data = _read_capped(response["Body"], deadline)
        try:
            return json.loads(data)
        except ValueError as exc:
            raise ObjectStoreError(f"{field}: {where} is not JSON: {exc}") from None

    def put_texts(
        self,
        namespace: str,
        s3: S3Output,
        key_prefix: str,
        files: dict[str, str],
        *,
        field: str = OUTPUT_FIELD,
    ) -> str:
        """Writes ``files`` (name -> text) under ``key_prefix`` in the bucket, all within
        READ_DEADLINE seconds; returns the ``s3://`` URL of the prefix."""
        types = {".json": "application/json", ".csv": "text/csv", ".md": "text/markdown"}
        url = f"s3://{s3.bucket}/{key_prefix}"
        with self._call(namespace, s3, field, f"writing {url}") as (client, _):
            for name, text in files.items():
                ctype = next((t for ext, t in types.items() if name.endswith(ext)), "text/plain")
                client.put_object(
                    Bucket=s3.bucket, Key=key_prefix + name, Body=text.encode(), ContentType=ctype
                )
        return url

    def list_keys(
        self,
        namespace: str,
        s3: S3Output,
        key_prefix: str,
        limit: int = 1000,
        *,
        field: str = OUTPUT_FIELD,
    ) -> list[str]:
        """The keys under ``key_prefix`` in the bucket (at most ``limit``, one request,
        within READ_DEADLINE seconds, a listing of at most MAX_OBJECT_BYTES)."""
        doing = f"listing s3://{s3.bucket}/{key_prefix}"
        with self._call(namespace, s3, field, doing) as (client, _):
            response = client.list_objects_v2(Bucket=s3.bucket, Prefix=key_prefix, MaxKeys=limit)
        return [str(o.get("Key")) for o in response.get("Contents") or []][:limit]


def _scrub(message: str, creds: dict[str, str]) -> str:
    """``message`` without any credential value in it."""
    for value in creds.values():
        if len(value) >= 4:
            message = message.replace(value, "***")
    return message
