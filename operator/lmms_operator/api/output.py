"""Where an EvalRun keeps more than its status: the cache volume (HF_HOME and the
runner's resume state) and an S3-compatible object store for the full output.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field

from .base import DNS_SUBDOMAIN, ApiModel


class CacheSpec(ApiModel):
    """A volume for the Hugging Face cache (HF_HOME) and the runner's resume state."""

    persistent_volume_claim: str = Field(
        description="Name of a PersistentVolumeClaim in the run's namespace.",
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )


class S3Output(ApiModel):
    """An S3-compatible object store for the full output."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.endpoint) || self.endpoint == '' || "
                    "has(self.credentialsSecret)",
                    "message": "an endpoint needs credentialsSecret: the operator never takes "
                    "its own identity to a store a resource names",
                    "fieldPath": ".credentialsSecret",
                }
            ]
        }
    )

    bucket: str = Field(
        description="Bucket name.",
        min_length=3,
        max_length=63,
        pattern=r"^[a-z0-9][a-z0-9.\-]*[a-z0-9]$",
    )
    prefix: str = Field(
        default="",
        description="Key prefix, e.g. runs/.",
        max_length=512,
        pattern=r"^[A-Za-z0-9!_.*'()/\-]*$",
    )
    endpoint: str = Field(
        default="",
        description="Endpoint URL of an S3-compatible store; empty means AWS S3. A store "
        "other than AWS S3 needs credentialsSecret: the operator never takes its own "
        "identity to an endpoint a run names.",
        max_length=1024,
        pattern=r"^(https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~/\-]*)?)?$",
    )
    region: str = Field(
        default="", description="Region name.", max_length=64, pattern=r"^[a-z0-9\-]*$"
    )
    credentials_secret: str | None = Field(
        default=None,
        description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and optionally "
        "AWS_SESSION_TOKEN), labelled eval.lmms.dev/usable-by-evalruns=true. Empty: the "
        "pod's own identity (IRSA, workload identity); the operator then reads the results "
        "only from buckets the platform lists (settings.objectStore.ownIdentityBuckets).",
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )


class OutputSpec(ApiModel):
    """Where results go besides the run's status and results ConfigMap."""

    s3: S3Output | None = Field(default=None, description="Upload the full output to S3.")
