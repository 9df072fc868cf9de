"""Register your model with its reference file:
``python -m services.model_api.register MODEL --reference FILE --target COLUMN``.

FILE is a CSV or Parquet table of labelled rows (docs/own-model.md says what it needs): every
column but the target (and those ``--ignore`` names) is a feature. Register unpickles MODEL
(run it only on a file you made or trust: unpickling runs code), checks that it takes those
columns (by name when it was fitted on a DataFrame, by count when it is a bare estimator),
predicts every row, and writes beside MODEL:

- ``MODEL.json``, the sidecar: MODEL's sha256 (model_api refuses the file if it changes
  afterwards), type, parameters, scikit-learn version, its feature schema (names in the order
  the model takes them, each numeric or categorical with the categories seen, the share
  missing), its MAE, RMSE and R² over the file's rows, and the target's mean (the baseline);
- ``MODEL.reference.parquet``: the file's rows (at most 10,000, a seeded sample of a larger
  file) with their targets and the model's predictions — drift's reference, the demo's rows;
- ``MODEL.loss.pkl``: the loss model fitted on those rows (services/model_api/loss_model.py),
  which estimates each prediction's absolute error before its label comes.

Every row of FILE both scores the model and makes the reference, so FILE should be rows the
model was **not** fitted on (a validation or recent held-out set): training rows flatter the
metrics, and their predictions are tighter than new rows' for a model that overfits, which would
read as drift of the prediction.

A model served elsewhere: ``register --reference FILE --target COLUMN --prediction-column COLUMN
[--out PATH]`` writes the same sidecar (a profile, ``"served": "elsewhere"``, no model file) at
``PATH.json`` (MODEL_PATH by default), the predictions taken from the file's column.
"""

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sklearn

from services.common.estimate import LOSS_MODEL
from services.common.files import atomic_write, metadata_path
from services.common.reference import BadReference, reference_path, write_reference
from services.common.registration import ELSEWHERE, EXTERNAL_VERSION, SERVED
from services.common.settings import get_settings
from services.model_api.loss_model import fit_loss_model, write_loss_model
from services.model_api.modelstore import (
    NOT_A_REGRESSOR_ACCEPTED,
    ModelFileError,
    check_regressor,
    model_version,
    pickled_sklearn_version,
    predictor_for,
    read_model_file,
    unpickle,
    warning_text,
    write_metadata,
)
from services.model_api.predictor import Predictor, model_names, reason
from services.model_api.profiling import (
    BadTable,
    feature_columns,
    infer_schema,
    json_safe_params,
    numeric_target,
    reference_table,
    score,
)

PARQUET = (".parquet", ".pq")
CSV = (".csv", ".csv.gz", ".csv.bz2", ".csv.zip", ".csv.xz", ".tsv")
FEW_ROWS = 100  # fewer labelled rows than this make a weak reference: said, not refused


class RegisterError(RuntimeError):
    """Why a model or profile cannot be registered; the message says what to do."""


def read_table(path: Path) -> pd.DataFrame:
    """FILE as pandas reads it: Parquet by its suffix .parquet or .pq, else CSV (.csv, compressed, .tsv)."""
    name = path.name.lower()
    try:
        if name.endswith(PARQUET):
            return pd.read_parquet(path)
        if name.endswith(CSV):
            return pd.read_csv(path, sep="\t" if name.endswith(".tsv") else ",")
    except FileNotFoundError:
        raise RegisterError(f"the reference file {path} does not exist") from None
    except (OSError, ValueError, ImportError) as exc:
        raise RegisterError(f"cannot read the reference file {path}: {type(exc).__name__}: {exc}") from exc
    raise RegisterError(f"the reference file {path} is neither CSV ({', '.join(CSV)}) nor Parquet ({', '.join(PARQUET)})")


def labelled_rows(frame: pd.DataFrame, target: str, notes: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows with a target (the others are said and left out), and their targets."""
    try:
        values = numeric_target(frame, target)
    except BadTable as exc:
        raise RegisterError(str(exc)) from exc
    labelled = np.isfinite(values)
    if not labelled.all():
        notes.append(f"{int((~labelled).sum()):,} rows without a finite {target!r} were left out")
        frame, values = frame.loc[labelled].reset_index(drop=True), values[labelled]
    if len(frame) < 2:
        raise RegisterError(
            f"the reference file has {len(frame)} labelled rows: it needs at least 2 (and hundreds to judge drift)"
        )
    if len(frame) < FEW_ROWS:
        notes.append(f"only {len(frame)} labelled rows: drift against so few is coarse; hundreds or more are better")
    return frame, values


def predict_frame(predictor: Predictor, frame: pd.DataFrame, notes: list[str]) -> np.ndarray:
    """The model's prediction of every row (NaN where it raised or gave no finite number; said in ``notes``)."""
    failures: list[str] = []

    def predict(part: pd.DataFrame) -> list[float]:
        try:
            return predictor.predict_input(predictor.frame_input(part))
        except Exception as exc:  # noqa: BLE001 - the user's model may raise anything: the rows are counted, the reason kept
            if len(part) == 1:
                failures.append(reason(exc))
                return [float("nan")]
        middle = len(part) // 2
        return [*predict(part.iloc[:middle]), *predict(part.iloc[middle:])]

    predictions = np.asarray(predict(frame), dtype=float)
    if failures:
        if len(failures) == len(frame):
            raise RegisterError(f"the model refused every row of the reference file: {failures[0]}")
        notes.append(f"the model refused {len(failures):,} rows (first: {failures[0]}); they are not scored")
    return predictions


def check_names(model: Any, names: list[str], ignored: list[str]) -> list[str]:
    """The schema's order: the model's ``feature_names_in_`` when it has them (refused, naming the
    missing and the extra columns, when they are not the file's), else the file's."""
    fitted = model_names(model)
    if fitted is None:
        count = getattr(model, "n_features_in_", None)
        if count is not None and count != len(names):
            raise RegisterError(
                f"the model expects {count} features (a bare estimator, fed them in the file's order), and the reference "
                f"file has {len(names)} feature columns: {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}"
            )
        return names
    missing = [name for name in fitted if name not in names]
    extra = [name for name in names if name not in fitted]
    if missing or extra:
        said = []
        if missing:
            said.append(f"missing from the file (the model needs them): {', '.join(missing[:20])}")
        if extra:
            said.append(f"extra in the file (the model was not fitted on them): {', '.join(extra[:20])}")
        hint = " (leave extra columns out with --ignore COLUMN)" if extra else ""
        already = f"; --ignore left out {', '.join(ignored)}" if ignored else ""
        raise RegisterError(
            f"the model's feature_names_in_ differ from the reference file's columns: {'; '.join(said)}{hint}{already}"
        )
    return fitted


def out_of_bounds(frame: pd.DataFrame, names: list[str], target: np.ndarray, notes: list[str]) -> None:
    """Say which columns hold values the services would refuse (FEATURE_ABS_MAX, TARGET_ABS_MAX)."""
    settings = get_settings()
    wide = [
        name
        for name in names
        if pd.api.types.is_numeric_dtype(frame[name])
        and float(np.nanmax(np.abs(frame[name].to_numpy(dtype=float, na_value=np.nan)), initial=0)) > settings.FEATURE_ABS_MAX
    ]
    if wide:
        notes.append(
            f"{', '.join(wide[:10])} hold values beyond ±{settings.FEATURE_ABS_MAX:g}, "
            "which the services refuse: raise FEATURE_ABS_MAX"
        )
    if float(np.max(np.abs(target))) > settings.TARGET_ABS_MAX:
        notes.append(
            f"the target holds values beyond ±{settings.TARGET_ABS_MAX:g}, which the services refuse: raise TARGET_ABS_MAX"
        )


def common_metadata(
    frame: pd.DataFrame,
    target_column: str,
    target: np.ndarray,
    predictions: np.ndarray,
    reference: Path,
    names: list[str],
    out: Path,
    notes: list[str],
) -> dict[str, Any]:
    """What both kinds of sidecar record: the schema, the metrics, the baseline, the reference and the
    loss model (both written now)."""
    schema = infer_schema(frame, names, target_column)
    scores = score(target, predictions)
    table = reference_table(frame, schema, target, predictions, f"{reference.name}")
    try:
        reference_record = write_reference(out, table)
    except BadReference as exc:
        raise RegisterError(f"cannot make the reference from {reference}: {exc}") from exc
    loss: dict[str, Any] = {}
    try:
        # The file's rows are held out from the model's training (see above): their losses are honest as they are.
        fitted = fit_loss_model(schema, table.encoded(), table.target, table.prediction)
        loss[LOSS_MODEL] = write_loss_model(out, fitted, f"the {table.rows:,} reference rows of {reference.name}, as predicted")
    except ValueError as exc:
        notes.append(f"no loss model, so no estimated error: {exc}")
    return {
        **loss,
        "feature_names": list(schema.names),
        "schema": schema.to_json(),
        "metrics": {**scores.to_json(), "on": f"every labelled row of {reference.name}"},
        "target_mean": float(np.mean(target)),
        "reference": reference_record,
        "registered_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def register(
    path: Path, reference: Path, target: str, *, ignore: list[str] | None = None, not_a_regressor: bool = False
) -> tuple[dict[str, Any], list[str]]:
    """Register the model file ``path`` with its reference file; return the sidecar and what to tell the user."""
    ignored = list(ignore or [])
    data = read_model_file(path)
    model, caught = unpickle(data, path)
    check_regressor(model, path, accepted=not_a_regressor)
    notes = [warning_text(w) for w in caught]
    frame, values = labelled_rows(read_table(reference), target, notes)
    try:
        names = check_names(model, feature_columns(frame, target, ignored), ignored)
        schema = infer_schema(frame.iloc[:0], names, target)  # the order and kinds; categories come with the metadata
    except BadTable as exc:
        raise RegisterError(str(exc)) from exc
    predictor = predictor_for(model, "unregistered", path, schema)
    out_of_bounds(frame, names, values, notes)
    predictions = predict_frame(predictor, frame, notes)
    metadata = {
        SERVED: "here",
        "model_type": type(model).__name__,
        "params": json_safe_params(model),
        "sklearn_version": pickled_sklearn_version(caught) or sklearn.__version__,
        "trained_at": datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds"),
        **common_metadata(frame, target, values, predictions, reference, names, path, notes),
    }
    if not_a_regressor:
        metadata[NOT_A_REGRESSOR_ACCEPTED] = True
    return write_metadata(path, data, metadata), notes


def register_elsewhere(
    out: Path,
    reference: Path,
    target: str,
    prediction_column: str,
    *,
    version: str = EXTERNAL_VERSION,
    ignore: list[str] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Write the profile of a model served elsewhere at ``out``'s sidecar; the predictions are the file's column."""
    notes: list[str] = []
    if out.exists():
        notes.append(f"{out} exists and is not used: with a profile, model_api loads no model file")
    frame, values = labelled_rows(read_table(reference), target, notes)
    try:
        predictions = numeric_target(frame, prediction_column, "prediction")
        names = feature_columns(frame, target, [prediction_column, *(ignore or [])])
    except BadTable as exc:
        raise RegisterError(str(exc)) from exc
    out_of_bounds(frame, names, values, notes)
    metadata = {
        SERVED: ELSEWHERE,
        "model_type": None,
        "model_version": version,
        "prediction_column": prediction_column,
        **common_metadata(frame, target, values, predictions, reference, names, out, notes),
    }
    atomic_write(metadata_path(out), json.dumps(metadata, indent=2).encode())
    return metadata, notes


def summary_line(done: str, out: Path, metadata: dict[str, Any]) -> str:
    metrics = metadata["metrics"]
    version = metadata.get("model_version") or model_version(metadata.get("sha256", ""))
    what = metadata.get("model_type") or "served elsewhere"
    schema = metadata["schema"]["features"]
    categorical = sum(feature["kind"] == "categorical" for feature in schema)
    return (
        f"{done} {out} ({what}, model_version {version}; {len(schema)} features, {categorical} categorical; "
        f"reference {reference_path(out).name}, {metadata['reference']['rows']:,} rows): "
        f"MAE {metrics['mae']:.4g}, RMSE {metrics['rmse']:.4g}, R2 {metrics['r2']:.3f} over {metrics['rows']:,} rows"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.model_api.register",
        description=(__doc__ or "").splitlines()[0] + " " + (__doc__ or "").splitlines()[1],
    )
    parser.add_argument("model", type=Path, nargs="?", help="your pickled, fitted model (omit with --prediction-column)")
    parser.add_argument("--reference", type=Path, required=True, help="labelled rows the model was not fitted on: CSV or Parquet")
    parser.add_argument("--target", required=True, help="the column of FILE holding the true value")
    parser.add_argument(
        "--prediction-column", help="a model served elsewhere: the column of FILE holding its predictions (no MODEL)"
    )
    parser.add_argument(
        "--out", type=Path, help="with --prediction-column: where the profile goes (PATH.json; default MODEL_PATH)"
    )
    parser.add_argument(
        "--model-version", default=EXTERNAL_VERSION, help="with --prediction-column: the version its predictions carry by default"
    )
    parser.add_argument(
        "--ignore", action="append", default=[], metavar="COLUMN", help="a column of FILE that is not a feature (repeat)"
    )
    parser.add_argument(
        "--not-a-regressor",
        action="store_true",
        help="register it even though scikit-learn does not call it a regressor (its predictions must be values of y)",
    )
    args = parser.parse_args(argv)
    try:
        if args.prediction_column is not None:
            if args.model is not None:
                parser.error("give MODEL (served here) or --prediction-column (served elsewhere), not both")
            out = args.out or get_settings().MODEL_PATH
            metadata, notes = register_elsewhere(
                out, args.reference, args.target, args.prediction_column, version=args.model_version, ignore=args.ignore
            )
        else:
            if args.model is None:
                parser.error("give MODEL, or --prediction-column for a model served elsewhere")
            out = args.model
            metadata, notes = register(
                args.model, args.reference, args.target, ignore=args.ignore, not_a_regressor=args.not_a_regressor
            )
    except (ModelFileError, RegisterError) as exc:
        print(f"register: {exc}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    print(summary_line("registered", out, metadata))
    return 0


if __name__ == "__main__":
    sys.exit(main())
