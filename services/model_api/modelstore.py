"""Reading and writing the model file and its sidecar metadata (``<model file>.json``).

Unpickling runs code, so a model file is loaded only when its sha256 is the one its
sidecar records: the sidecar is written when the file is made (``train``) or vouched for
(``register``), and a file changed since then is refused. ``MODEL_ALLOW_UNVERIFIED=1``
lifts that check for an operator who trusts the file anyway.

A sidecar may also be a profile of a model served elsewhere (``register --reference FILE
--target COLUMN --prediction-column COLUMN``, no model file): model_api then loads no model,
answers ``/predict`` with a 503 saying so, and monitors what ``/predictions`` reports.
"""

import hashlib
import json
import pickle
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sklearn
from sklearn.base import is_classifier, is_regressor
from sklearn.exceptions import InconsistentVersionWarning

from services.common.files import atomic_write, metadata_path
from services.common.registration import Registration, RegistrationError, read_sidecar, schema_of, served_elsewhere
from services.common.schema import FeatureSchema
from services.model_api.loss_model import LossModel, read_loss_model
from services.model_api.predictor import Predictor

TRAIN_COMMAND = "python -m services.model_api.train"
REGISTER_COMMAND = "python -m services.model_api.register"
# In a sidecar: the user registered a model scikit-learn does not call a regressor, on purpose (--not-a-regressor).
NOT_A_REGRESSOR_ACCEPTED = "not_a_regressor_accepted"


class ModelFileError(RuntimeError):
    """The model file is missing or unusable; the message says which file and what to do."""


@dataclass(frozen=True)
class LoadedModel:
    """A verified (or knowingly unverified) model in service, and what is known about it; for a
    profile of a model served elsewhere, no predictor (``unservable`` says why)."""

    predictor: Predictor | None
    path: Path
    metadata: dict[str, Any]  # the sidecar's, with ``sha256`` always that of the file read (when there is one)
    verified: bool
    warnings: tuple[str, ...]
    loaded_at: str
    load_seconds: float
    schema: FeatureSchema
    version: str
    # The loss model that estimates each prediction's error, or why there is none (issue 24).
    loss: LossModel | str = "no loss model was loaded"

    @property
    def estimate_problem(self) -> str | None:
        """Why this model's predictions carry no estimated error ("estimate unavailable, because …"), or None."""
        return self.loss if isinstance(self.loss, str) else None

    @property
    def registration(self) -> Registration:
        return Registration(self.path, self.metadata, self.schema)

    @property
    def serving(self) -> Predictor:
        """The model's predictor; ModelFileError (saying why) for a profile of a model served elsewhere."""
        if self.predictor is None:
            raise ModelFileError(self.unservable or "no model")
        return self.predictor

    @property
    def unservable(self) -> str | None:
        """Why /predict cannot be served with this model, or None when it can."""
        if self.predictor is not None:
            return None
        return (
            f"no model file is registered here: {metadata_path(self.path)} is the profile of a model served elsewhere "
            "(register --prediction-column); report its predictions to POST /predictions, or register a model file "
            "and reload"
        )


def model_version(sha256: str) -> str:
    """What predictions carry to say which model made them: the first 12 hex of the file's sha256."""
    return sha256[:12]


def save_model(model: Any, path: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """Pickle ``model`` to ``path`` and write its metadata, with the file's sha256, beside it."""
    data = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    atomic_write(path, data)
    return write_metadata(path, data, metadata)


def write_metadata(path: Path, data: bytes, metadata: dict[str, Any]) -> dict[str, Any]:
    """Write ``<path>.json``: ``metadata`` plus the sha256 of ``data`` (the model file's bytes)."""
    metadata = {**metadata, "sha256": hashlib.sha256(data).hexdigest()}
    atomic_write(metadata_path(path), json.dumps(metadata, indent=2).encode())
    return metadata


def read_model_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(
            f"model file {path} does not exist (MODEL_PATH): train the demo there with `{TRAIN_COMMAND} --out {path}`, "
            f"register your own with `{REGISTER_COMMAND} {path} --reference FILE --target COLUMN`, or profile a model "
            f"served elsewhere with `{REGISTER_COMMAND} --out {path} --reference FILE --target COLUMN "
            "--prediction-column COLUMN`; "
            "make run trains the demo model only at its default path"
        ) from None
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc}") from exc


def unpickle(data: bytes, path: Path) -> tuple[Any, list[warnings.WarningMessage]]:
    """The object pickled in ``data``, and the warnings unpickling it raised.

    scikit-learn warns (InconsistentVersionWarning) when the pickle was made by another
    version; that is worth telling the operator, not a reason to refuse, so it is recorded.
    (catch_warnings is process-wide: during a reload, a warning another thread raises in these
    milliseconds is recorded here instead of shown — an accepted cost of a rare event.)
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = pickle.loads(data)  # noqa: S301 - verified against the sidecar, or explicitly allowed
        except Exception as exc:
            raise ModelFileError(f"model file {path} could not be unpickled: {type(exc).__name__}: {exc}") from exc
    return model, caught


def warning_text(caught: warnings.WarningMessage) -> str:
    return f"{caught.category.__name__}: {caught.message}"


def predictor_for(model: Any, version: str, path: Path, schema: FeatureSchema) -> Predictor:
    """The model as a Predictor of ``schema``'s rows, or a ModelFileError saying why it cannot be one."""
    try:
        return Predictor(model, version, schema)
    except TypeError as exc:
        raise ModelFileError(f"model file {path} holds no usable model: {exc}") from exc
    except ValueError as exc:
        raise ModelFileError(
            f"model file {path} does not fit the schema its metadata {metadata_path(path)} records ({schema.describe()}): "
            f"{exc}; register it with its reference file: `{REGISTER_COMMAND} {path} --reference FILE --target COLUMN`"
        ) from exc


def regressor_problem(model: Any) -> str | None:
    """Why ``model`` is not a regressor — its predictions would not be values of y — or None."""
    name = type(model).__name__
    try:
        if is_regressor(model):
            return None
        kind = "a classifier" if is_classifier(model) else "not a regressor"
    except (AttributeError, TypeError):  # no scikit-learn tags: not an estimator at all
        return f"{name} is not a scikit-learn estimator, so nothing says its predictions are values of y"
    return f"{name} is {kind} (scikit-learn's is_regressor says no), so its predictions are not values of y"


def check_regressor(model: Any, path: Path, *, accepted: bool) -> None:
    """ModelFileError unless ``model`` is a regressor or the user accepted it as one (register --not-a-regressor)."""
    if accepted or (problem := regressor_problem(model)) is None:
        return
    raise ModelFileError(
        f"model file {path}: {problem}. Monitoring it would compare its outputs (class labels, scores) with the labels "
        f"as if they were predictions. If they are values of y, say so: `{REGISTER_COMMAND} --not-a-regressor {path} "
        "--reference FILE --target COLUMN`"
    )


def _unverified(path: Path, why: str, allow_unverified: bool) -> str:
    """The warning for a model loaded unverified, or the error refusing it."""
    if not allow_unverified:
        raise ModelFileError(
            f"refusing to load model file {path}: {why}. Unpickling runs code, so only a file whose sha256 "
            f"matches its metadata is loaded. If you made this model, write its metadata with "
            f"`{REGISTER_COMMAND} {path} --reference FILE --target COLUMN` "
            f"(or retrain with `{TRAIN_COMMAND} --out {path}`); if you trust "
            "the file as it is, set MODEL_ALLOW_UNVERIFIED=1"
        )
    return f"unverified model file {path}: {why}; loaded because MODEL_ALLOW_UNVERIFIED=1"


def pickled_sklearn_version(caught: list[warnings.WarningMessage]) -> str | None:
    """The scikit-learn version a pickle was made with, when it is not this one (scikit-learn
    warns only then), from the warnings caught while unpickling it."""
    return next(
        (w.message.original_sklearn_version for w in caught if isinstance(w.message, InconsistentVersionWarning)),
        None,
    )


def _sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar's metadata; None when there is none; ModelFileError when it is unreadable."""
    try:
        return read_sidecar(path)
    except FileNotFoundError:
        return None
    except RegistrationError as exc:
        raise ModelFileError(str(exc)) from exc


def _schema(metadata: dict[str, Any], path: Path) -> FeatureSchema:
    try:
        return schema_of(metadata, metadata_path(path))
    except RegistrationError as exc:
        raise ModelFileError(f"{exc}; register the model again") from exc


def load_profile(path: Path, metadata: dict[str, Any], started: float) -> LoadedModel:
    """The profile of a model served elsewhere: its schema and reference, no model."""
    registration = Registration(path, metadata, _schema(metadata, path))
    return LoadedModel(
        predictor=None,
        path=path,
        metadata=metadata,
        verified=True,  # nothing is unpickled: a profile runs no code
        warnings=(),
        loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
        load_seconds=time.perf_counter() - started,
        schema=registration.schema,
        version=registration.model_version,
        loss=read_loss_model(path, metadata, registration.schema),
    )


def load_model(path: Path, *, allow_unverified: bool = False) -> LoadedModel:
    """Read, verify, unpickle and schema-check the model file (or read the profile of a model served
    elsewhere); ModelFileError says what is wrong."""
    started = time.perf_counter()
    metadata = _sidecar(path)
    if metadata is not None and served_elsewhere(metadata):
        return load_profile(path, metadata, started)
    data = read_model_file(path)
    sha256 = hashlib.sha256(data).hexdigest()
    sidecar = metadata_path(path)
    notes: list[str] = []
    if metadata is None:
        metadata = {}
        notes.append(_unverified(path, f"it has no metadata file {sidecar} (sha256 of the file: {sha256})", allow_unverified))
    expected = metadata.get("sha256")
    verified = expected == sha256
    if metadata and not verified:
        notes.append(
            _unverified(
                path,
                f"its sha256 is {sha256} but its metadata {sidecar} expects {expected}: "
                "the file changed after the metadata was written",
                allow_unverified,
            )
        )
    model, caught = unpickle(data, path)
    notes.extend(warning_text(w) for w in caught)
    trained_with = metadata.get("sklearn_version")
    sklearn_warned = pickled_sklearn_version(caught) is not None
    if trained_with and trained_with != sklearn.__version__ and not sklearn_warned:
        notes.append(
            f"model file {path} was made with scikit-learn {trained_with} (its metadata says) and this "
            f"service runs {sklearn.__version__}: its predictions may differ or fail; retrain it with this version"
        )
    schema = _schema(metadata, path)
    predictor = predictor_for(model, model_version(sha256), path, schema)
    check_regressor(model, path, accepted=verified and metadata.get(NOT_A_REGRESSOR_ACCEPTED) is True)
    return LoadedModel(
        predictor=predictor,
        path=path,
        metadata={**metadata, "sha256": sha256},
        verified=verified,
        warnings=tuple(notes),
        loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
        load_seconds=time.perf_counter() - started,
        schema=schema,
        version=predictor.version,
        loss=read_loss_model(path, metadata, schema)
        if verified
        else "the model file is unverified, so its loss model is not trusted",
    )
