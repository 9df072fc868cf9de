"""model_api's drift report, ``GET /drift``: the window of inputs and predictions against the
model's reference, column by column. Made by services/model_api/drift/ (``DriftMonitor.assess``)
and drift_watch.py (``DriftWatch.report``, which adds the model version, the reference file, the
refusals and the data quality); relayed and drawn by plot_api. docs/monitoring.md, "Drift and data
quality", says what each field means.

A numeric and a categorical column have different fields: ``kind`` tells which. A report whose
drift is ``unavailable`` (no usable reference) has columns with ``drifted`` and ``kind`` only."""

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, TypeAdapter

from services.common.contracts import Contract

DRIFT_ROUTE = "/drift"
Status = Literal["calm", "drifted", "collecting"]
PsiBand = Literal["stable", "moderate", "significant"]


class DriftWindow(Contract):
    """The samples assessed: how many, over which time, of how many seen; the window's limits."""

    count: int
    since: float | None
    until: float | None
    seen: int
    size: int
    max_age_s: float
    min_count: int
    memory_bytes: int


class DriftRule(Contract):
    """Which tests decide ``drifted`` and at which p-value (Bonferroni over the columns)."""

    decides: str
    categorical: str
    missing: str
    threshold: float
    alpha: float
    tests: int
    text: str


class SchemaShape(Contract):
    features: int
    numeric: int
    categorical: int


class NumericWindow(Contract):
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    count: int


class NumericReferenceSummary(Contract):
    min: float
    max: float
    mean: float
    std: float
    count: int


class NumericBins(Contract):
    """The reference's quantile bins: the inner edges, and the counts of the reference and the window in each."""

    edges: list[float]
    reference: list[int]
    current: list[int]


class NumericColumn(Contract):
    kind: Literal["numeric"]
    drifted: bool
    decided_by: Literal["ks", "missing"] | None
    ks_p: float | None
    ks_statistic: float | None
    psi: float | None
    psi_band: PsiBand | None
    js: float | None
    wasserstein_norm: float | None
    out_of_range_share: float | None
    missing_share: float | None
    reference_missing_share: float
    missing_p: float | None
    window: NumericWindow
    reference: NumericReferenceSummary
    bins: NumericBins


class CategoryShare(Contract):
    label: str
    share: float


class CategoricalWindow(Contract):
    count: int
    top: list[CategoryShare]  # the most frequent labels of the window


class CategoricalBins(Contract):
    """Per category of the schema, then "(unseen)" or "(other)", then "(missing)": the counts of the reference and the window."""

    labels: list[str]
    reference: list[int]
    current: list[int]


class CategoricalColumn(Contract):
    kind: Literal["categorical"]
    drifted: bool
    decided_by: Literal["chi2", "missing", "unseen"] | None
    chi2_p: float | None
    chi2_statistic: float | None
    psi: float | None
    psi_band: PsiBand | None
    js: float | None
    unseen_share: float | None
    missing_share: float | None
    reference_missing_share: float
    missing_p: float | None
    unseen_p: float | None
    window: CategoricalWindow
    bins: CategoricalBins


Column = Annotated[NumericColumn | CategoricalColumn, Field(discriminator="kind")]


class UnjudgedColumn(Contract):
    """A column of a report whose drift is unavailable: its kind, never drifted."""

    kind: Literal["numeric", "categorical"]
    drifted: Literal[False]


class ReferenceInfo(Contract):
    rows: int
    source: str
    bins: int
    # The reference file and its sha256: what DriftWatch adds (DriftMonitor alone knows no file).
    file: str | None = Field(default=None, exclude_if=lambda value: value is None)
    sha256: str | None = Field(default=None, exclude_if=lambda value: value is None)


class Refused(Contract):
    """Inputs refused before the window, by path (``queue``, ``http``) and kind, since model_api started."""

    queue: dict[str, int]
    http: dict[str, int]
    since: float


class DataQuality(Contract):
    """Missing values and unseen categories per feature (only those with any), over ``rows`` inputs."""

    rows: int
    missing: dict[str, int]
    unseen: dict[str, int]


class ReportBase(Contract):
    """The fields of every report, in the order model_api writes them; each kind narrows some."""

    # "schema" would shadow BaseModel.schema(): the field is schema_, its JSON name "schema".
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    status: str
    reason: str | None
    drifted: list[str]
    window: DriftWindow
    rule: DriftRule | None
    schema_: SchemaShape = Field(alias="schema")
    features: Mapping[str, NumericColumn | CategoricalColumn | UnjudgedColumn]
    prediction: NumericColumn | UnjudgedColumn
    reference: ReferenceInfo | None
    model_version: str
    refused: Refused
    quality: DataQuality


class AssessedReport(ReportBase):
    """The window judged (``calm``, ``drifted``), or still ``collecting`` samples (shown, not judged)."""

    status: Status
    rule: DriftRule
    features: Mapping[str, Column]
    prediction: NumericColumn
    reference: ReferenceInfo


class UnavailableReport(ReportBase):
    """No usable reference: ``reason`` says why."""

    status: Literal["unavailable"]
    rule: None
    features: Mapping[str, UnjudgedColumn]
    prediction: UnjudgedColumn
    reference: None


DriftReport = Annotated[AssessedReport | UnavailableReport, Field(discriminator="status")]
DRIFT_REPORT: TypeAdapter[AssessedReport | UnavailableReport] = TypeAdapter(DriftReport)
