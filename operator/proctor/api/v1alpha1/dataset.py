"""What an EvalRun reads and keeps beyond generated cases: a dataset in, outputs out."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from proctor.api.v1alpha1.base import ApiModel, LocalObjectReference

DatasetFormat = Literal["jsonl", "jsonl.gz", "jsonl.zst", "csv", "parquet"]
DATASET_FORMATS: tuple[DatasetFormat, ...] = ("jsonl", "jsonl.gz", "jsonl.zst", "csv", "parquet")
"""The formats a dataset may be in; a file's suffix names its format when ``format`` is unset."""


class DatasetSpec(ApiModel):
    """Rows the run evaluates: case i is row i of the dataset's files in key order."""

    uri: str = Field(
        min_length=1,
        max_length=2048,
        pattern=r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?|file://.+|[^:]+)$",
        description="Where the rows are: s3://bucket/prefix (every object under it), a local "
        "path or file:// (proctor run only), a file, a folder (Hive partitions key=value/ "
        "included) or a glob (`*`, `?`, `**`) over the keys.",
    )
    format: DatasetFormat | None = Field(
        default=None,
        description="jsonl, jsonl.gz, jsonl.zst, csv or parquet; unset: from each file's "
        "suffix (.jsonl, .jsonl.gz, .jsonl.zst, .csv, .parquet).",
    )
    limit: int | None = Field(
        default=None, ge=1, le=1_000_000_000, description="Use only the first this many rows."
    )
    columns: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Read only these columns (fields of a JSON row); unset: all of them.",
    )
    id_field: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="The column that identifies a row in the results; unset: "
        "`<file relative to uri>#<row number in that file>`.",
    )
    endpoint: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="Endpoint URL of an S3-compatible store; unset: the run's storage endpoint.",
    )
    region: str | None = Field(
        default=None, description="Bucket region; unset: the run's storage region."
    )
    secret_ref: LocalObjectReference | None = Field(
        default=None,
        description="Secret with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (optionally "
        "`AWS_SESSION_TOKEN`) to read the dataset; unset: the run's storage credentials.",
    )


MAX_OUTPUT_BYTES = 16 * 1024 * 1024


class ResultsSpec(ApiModel):
    """What the results keep beyond each case's outcome."""

    outputs: bool = Field(
        default=False,
        description="Keep each side's output (JSON-encodable) in its case's record: the "
        "product of a batch scoring run.",
    )
    max_output_bytes: int = Field(
        default=65_536,
        ge=1,
        le=MAX_OUTPUT_BYTES,
        description="The largest output kept, JSON-encoded; a larger one errors its case "
        "(unencodable) saying so.",
    )
