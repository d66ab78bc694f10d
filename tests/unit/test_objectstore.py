"""The operator's own identity reaches only the stores the platform listed."""

from __future__ import annotations

import pytest

from lmms_operator import objectstore
from lmms_operator.api import S3Output
from lmms_operator.errors import ObjectStoreError
from lmms_operator.k8s import Api


def test_without_credentials_only_listed_buckets_use_the_operators_identity() -> None:
    aws = S3Output(bucket="platform-evals")
    minio = S3Output(bucket="evals", endpoint="http://minio.storage:9000")
    default = objectstore.ObjectStore(objectstore.StorePolicy(), Api())
    for store in (aws, minio):
        with pytest.raises(ObjectStoreError, match="own identity only for the buckets"):
            default._credentials("team-a", store)
    listed = objectstore.ObjectStore(
        objectstore.StorePolicy(
            own_identity_buckets=frozenset({"platform-evals", "minio.storage:9000/evals"})
        ),
        Api(),
    )
    assert listed._credentials("team-a", aws) == {}
    assert listed._credentials("team-a", minio) == {}
    # The same bucket name on another endpoint is another store.
    other = S3Output(bucket="evals", endpoint="http://evil.example")
    with pytest.raises(ObjectStoreError):
        listed._credentials("team-a", other)


def test_object_stores_can_be_turned_off() -> None:
    off = objectstore.ObjectStore(
        objectstore.StorePolicy(enabled=False, own_identity_buckets=frozenset({"b"})), Api()
    )
    with pytest.raises(ObjectStoreError, match="s3Output feature is off"):
        off._credentials("team-a", S3Output(bucket="bbb"))


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://minio.storage:9000/other-bucket",
        "http://minio.storage:9000/evals",
        "http://minio.storage:9000/evals/",
    ],
)
def test_the_operators_identity_is_not_lent_to_an_endpoint_with_a_path(endpoint: str) -> None:
    # botocore puts the endpoint's path before the bucket: http://host/other-bucket with
    # bucket "evals" reaches other-bucket/evals/..., not the bucket the platform listed.
    listed = objectstore.ObjectStore(
        objectstore.StorePolicy(own_identity_buckets=frozenset({"minio.storage:9000/evals"})),
        Api(),
    )
    assert (
        listed._credentials(
            "team-a", S3Output(bucket="evals", endpoint="http://minio.storage:9000/")
        )
        == {}
    )
    with pytest.raises(ObjectStoreError, match="own identity only for the buckets"):
        listed._credentials("team-a", S3Output(bucket="evals", endpoint=endpoint))
