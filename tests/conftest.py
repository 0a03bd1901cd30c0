"""Shared fixtures: real Redis and moto (S3, SQS) servers, one each per test session.

The servers come from e2e/harness/services.py. A missing redis-server fails the tests that
need it, loudly: CI installs it (apt-get install -y redis-server).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import redis

from e2e.harness import services


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with services.redis_server() as service:
        yield service.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with services.moto_server() as service:
        yield service.url


@pytest.fixture
def run_id() -> str:
    return f"run-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def s3_bucket(moto_url: str) -> str:
    name = f"proctor-{uuid.uuid4().hex[:12]}"
    client: Any = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def aws_env(moto_url: str) -> dict[str, str]:
    """Environment for a worker subprocess talking to moto."""
    env = dict(os.environ)
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=moto_url,
    )
    return env
