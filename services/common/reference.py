"""The model's reference table: labelled rows of its inputs, their targets, and the model's
predictions on them, in ``<model file>.reference.parquet`` beside the model, vouched for by its
sha256 in the model's sidecar (``"reference": {"file", "sha256", "rows", "source"}``).

model_api judges drift against it; features_api's demo draws its rows (with their targets, and
for a model served elsewhere with the predictions the reference file recorded). ``train`` and
``register`` write it (services/model_api/register.py says which rows). A reference that is
missing, changed or unreadable is "unavailable" with the reason; it never stops a model from
serving (reading Parquet runs no code).

The file is an ordinary Parquet table, readable with ``pandas.read_parquet``: one column per
feature in schema order (float64 for a numeric one, string for a categorical one, null where
missing), then ``__target__`` and ``__prediction__`` (float64).
"""

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from services.common.files import atomic_write, read_vouched
from services.common.schema import FeatureSchema

TARGET_COLUMN = "__target__"
PREDICTION_COLUMN = "__prediction__"
RESERVED = (TARGET_COLUMN, PREDICTION_COLUMN)
META_KEY = b"model_quality_monitor.reference"
REFERENCE_FORMAT = 2
# The rows kept: a uniform sample of a larger file (seeded, so the same file gives the same sample). Enough
# for every drift statistic against a window of a few hundred, and for the demo; the metrics use every row.
ROWS_MAX = 10_000
REWRITE = (
    "write one with `python -m services.model_api.train` (the demo) or "
    "`python -m services.model_api.register <model file> --reference FILE --target COLUMN` (yours)"
)


class BadReference(ValueError):
    """A reference that cannot be used; the message says what is wrong with it."""


def reference_path(model_path: Path) -> Path:
    """The model's reference (``<file>.reference.parquet``); its sha256 is in the sidecar."""
    return model_path.with_name(model_path.name + ".reference.parquet")


@dataclass(frozen=True)
class ReferenceTable:
    """Rows of the model's inputs, column by column in schema order: a numeric column as floats
    (NaN where missing), a categorical one as an object array of strings (None where missing);
    the rows' targets, and the model's predictions on them (NaN where it predicted none)."""

    schema: FeatureSchema
    columns: tuple[np.ndarray, ...]
    target: np.ndarray
    prediction: np.ndarray
    source: str

    def __post_init__(self) -> None:
        rows = len(self.target)
        if len(self.columns) != len(self.schema):
            raise BadReference(f"the reference has {len(self.columns)} feature columns for {self.schema.describe()}")
        if rows < 2:
            raise BadReference(f"a reference needs at least 2 rows, got {rows}")
        if any(len(column) != rows for column in self.columns) or len(self.prediction) != rows:
            raise BadReference("the reference's columns are not all as long as its targets")
        if not np.isfinite(self.target).all():
            raise BadReference("the reference's targets must all be finite numbers")

    @property
    def rows(self) -> int:
        return len(self.target)

    def row(self, i: int) -> list[float | str | None]:
        """Row ``i`` as a features body in schema order (the form the demo publishes)."""
        out: list[float | str | None] = []
        for spec, column in zip(self.schema.features, self.columns, strict=True):
            value = column[i]
            if spec.numeric:
                out.append(None if np.isnan(value) else float(value))
            else:
                out.append(value)
        return out

    def encoded(self) -> np.ndarray:
        """The feature columns as drift's float matrix (``FeatureSchema.encode``)."""
        return (
            self.schema.encode([self.row(i) for i in range(self.rows)])
            if not self.schema.numeric_only
            else np.column_stack(self.columns)
        )

    # -- the file
    def to_parquet(self) -> bytes:
        arrays: dict[str, pa.Array] = {}
        for spec, column in zip(self.schema.features, self.columns, strict=True):
            if spec.numeric:
                arrays[spec.name] = pa.array(column, type=pa.float64(), from_pandas=True)
            else:
                arrays[spec.name] = pa.array(list(column), type=pa.string())
        arrays[TARGET_COLUMN] = pa.array(self.target, type=pa.float64())
        arrays[PREDICTION_COLUMN] = pa.array(self.prediction, type=pa.float64(), from_pandas=True)
        meta = {"format": REFERENCE_FORMAT, "source": self.source, "schema": self.schema.fingerprint}
        table = pa.table(arrays).replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        return buffer.getvalue()

    @classmethod
    def from_parquet(cls, data: bytes, schema: FeatureSchema) -> "ReferenceTable":
        """The table in ``data``, checked against ``schema`` (the sidecar's); BadReference says what is wrong."""
        try:
            table = pq.read_table(pa.BufferReader(data))
        except (pa.ArrowException, OSError) as exc:
            raise BadReference(f"not a readable Parquet file: {exc}") from None
        meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
        if meta.get("format") != REFERENCE_FORMAT:
            raise BadReference(f"not a reference of format {REFERENCE_FORMAT} (format: {meta.get('format')!r})")
        expected = [*schema.names, *RESERVED]
        if table.column_names != expected:
            raise BadReference(
                f"its columns are not the schema's features then {', '.join(RESERVED)}: "
                f"{', '.join(table.column_names[:8])}{'...' if table.num_columns > 8 else ''}"
            )
        columns = []
        for spec in schema.features:
            column = table.column(spec.name)
            if spec.numeric:
                columns.append(column.to_numpy(zero_copy_only=False).astype(float))
            else:
                columns.append(np.array(column.to_pylist(), dtype=object))
        return cls(
            schema,
            tuple(columns),
            table.column(TARGET_COLUMN).to_numpy(zero_copy_only=False).astype(float),
            table.column(PREDICTION_COLUMN).to_numpy(zero_copy_only=False).astype(float),
            str(meta.get("source", "unknown")),
        )


def write_reference(model_path: Path, reference: ReferenceTable) -> dict[str, Any]:
    """Write the reference beside ``model_path``; return what the sidecar records of it."""
    path = reference_path(model_path)
    data = reference.to_parquet()
    atomic_write(path, data)
    return {"file": path.name, "sha256": hashlib.sha256(data).hexdigest(), "rows": reference.rows, "source": reference.source}


@dataclass(frozen=True)
class LoadedReference:
    table: ReferenceTable
    path: Path
    sha256: str


def read_reference(model_path: Path, metadata: dict[str, Any], schema: FeatureSchema) -> LoadedReference | str:
    """The reference the model's sidecar vouches for, or why there is none to use."""
    vouched = read_vouched(model_path, metadata, "reference", "reference", REWRITE, suffix=".parquet")
    if isinstance(vouched, str):
        return vouched
    path, data, sha256 = vouched
    try:
        table = ReferenceTable.from_parquet(data, schema)
    except (BadReference, ValueError) as exc:
        return f"the reference {path} is unusable: {exc}"
    return LoadedReference(table, path, sha256)
