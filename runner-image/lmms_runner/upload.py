"""Uploads the output directory to an S3-compatible store (boto3)."""

from __future__ import annotations

from pathlib import Path

from lmms_operator.api import S3Output
from lmms_operator.api.runner import results_prefix


class UploadError(RuntimeError):
    """The upload failed (exit code 4); the results are still served."""


def key_prefix(s3: S3Output, namespace: str, name: str, config_hash: str) -> str:
    return results_prefix(s3.prefix, namespace, name) + config_hash + "/"


def upload_dir(directory: Path, s3: S3Output, prefix: str) -> str:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:  # pragma: no cover - the image has boto3
        raise UploadError(f"boto3 is not installed: {exc}") from None
    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint or None,
        region_name=s3.region or None,
        config=Config(
            retries={"max_attempts": 5, "mode": "standard"},
            s3={"addressing_style": "path"} if s3.endpoint else None,
        ),
    )
    try:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            rel = path.relative_to(directory).as_posix()
            client.upload_file(str(path), s3.bucket, prefix + rel)
    except Exception as exc:
        # botocore's messages name the bucket and the error code, never the credentials.
        raise UploadError(f"upload to s3://{s3.bucket}/{prefix} failed: {exc}") from None
    return f"s3://{s3.bucket}/{prefix}"
