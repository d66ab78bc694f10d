"""The operator's side of S3-compatible object storage (boto3).

The operator reads a run's results from the store when the runner cannot be reached,
and writes Leaderboard tables to it. Credentials come from the Secret that the
resource names (``credentialsSecret``: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
optionally AWS_SESSION_TOKEN), read by name in the resource's namespace; without one,
boto3's default chain (the operator's own identity) is used. Credentials are never
logged: errors name the bucket, the key and the store's error code only.
"""

from __future__ import annotations

import json
from typing import Any

from . import k8s
from .api import S3Output
from .api.runner import RESULTS_SUMMARY_FILE
from .errors import ObjectStoreError

#: Where the runner puts its results summary in the output it uploads.
SUMMARY_KEY = RESULTS_SUMMARY_FILE

_CREDENTIAL_KEYS = {
    "AWS_ACCESS_KEY_ID": "aws_access_key_id",
    "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key",
    "AWS_SESSION_TOKEN": "aws_session_token",
}


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key)."""
    if not url.startswith("s3://"):
        raise ObjectStoreError(f"not an s3:// URL: {url!r}")
    bucket, _, key = url[len("s3://") :].partition("/")
    if not bucket:
        raise ObjectStoreError(f"no bucket in {url!r}")
    return bucket, key


def _client(namespace: str, s3: S3Output) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:  # pragma: no cover - a dependency of the operator
        raise ObjectStoreError(f"boto3 is not installed: {exc}") from None
    creds: dict[str, str] = {}
    if s3.credentials_secret:
        data = k8s.read_secret(namespace, s3.credentials_secret) or {}
        creds = {arg: data[key] for key, arg in _CREDENTIAL_KEYS.items() if data.get(key)}
        if "aws_access_key_id" not in creds or "aws_secret_access_key" not in creds:
            raise ObjectStoreError(
                f"Secret {namespace}/{s3.credentials_secret} lacks AWS_ACCESS_KEY_ID or "
                "AWS_SECRET_ACCESS_KEY"
            )
    return boto3.client(
        "s3",
        endpoint_url=s3.endpoint or None,
        region_name=s3.region or "us-east-1",
        config=Config(
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
            s3={"addressing_style": "path"} if s3.endpoint else None,
        ),
        **creds,
    )


def _describe(exc: Exception) -> str:
    # botocore's ClientError carries the code and message of the store, no credentials.
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        err = response["Error"]
        return f"{err.get('Code')}: {err.get('Message')}"
    return type(exc).__name__ + (f": {exc}" if "Credential" not in type(exc).__name__ else "")


def get_json(namespace: str, s3: S3Output, url: str) -> Any:
    """The JSON document at ``url`` (``s3://bucket/key``)."""
    bucket, key = split_url(url)
    client = _client(namespace, s3)
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:
        raise ObjectStoreError(f"reading s3://{bucket}/{key}: {_describe(exc)}") from None
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ObjectStoreError(f"s3://{bucket}/{key} is not JSON: {exc}") from None


def put_texts(namespace: str, s3: S3Output, key_prefix: str, files: dict[str, str]) -> str:
    """Writes ``files`` (name -> text) under ``key_prefix`` in the bucket; returns the
    ``s3://`` URL of the prefix."""
    client = _client(namespace, s3)
    types = {".json": "application/json", ".csv": "text/csv", ".md": "text/markdown"}
    for name, text in files.items():
        key = key_prefix + name
        content_type = next((t for ext, t in types.items() if name.endswith(ext)), "text/plain")
        try:
            client.put_object(
                Bucket=s3.bucket, Key=key, Body=text.encode(), ContentType=content_type
            )
        except Exception as exc:
            raise ObjectStoreError(f"writing s3://{s3.bucket}/{key}: {_describe(exc)}") from None
    return f"s3://{s3.bucket}/{key_prefix}"
