"""What features_api works from: the registered model's schema (every ``/samples`` row is checked
against it) and its reference table (the demo draws from it), read from MODEL_PATH's sidecar as
model_api reads them, and read again when ``register`` or ``train`` rewrites that sidecar.

Without a sidecar at MODEL_PATH (features_api started alone, or a container without the model)
the demo is the diabetes one, from the data scikit-learn ships: the default schema.
"""

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.files import metadata_path
from services.common.reference import ReferenceTable, read_reference
from services.common.registration import RegistrationError, read_registration
from services.common.schema import DIABETES, FeatureSchema
from services.features_api.sampler import ReferenceSampler

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 2.0  # how often the sidecar's stat is compared with the one read


def diabetes_table() -> ReferenceTable:
    from sklearn.datasets import load_diabetes  # ships with scikit-learn: no download; only for this fallback

    features, targets = load_diabetes(return_X_y=True)
    columns = tuple(np.ascontiguousarray(features[:, j], dtype=float) for j in range(features.shape[1]))
    nothing = np.full(len(targets), np.nan)
    return ReferenceTable(DIABETES, columns, np.asarray(targets, dtype=float), nothing, "scikit-learn's diabetes data")


@dataclass(frozen=True)
class Registered:
    """The schema, and the sampler of the demo (None, for the reason given, when there is no reference to draw)."""

    schema: FeatureSchema
    sampler: ReferenceSampler | None
    unavailable: str | None
    served_elsewhere: bool
    source: str  # where it came from, for /features/status and the log


def read_registered(model_path: os.PathLike[str], seed: int | None) -> Registered:
    """MODEL_PATH's registration as features_api uses it (file I/O: run it off the event loop)."""
    path = Path(model_path)
    try:
        registration = read_registration(path)
    except RegistrationError as exc:
        if metadata_path(path).exists():  # there, but unreadable: the schema is unknown, nothing is guessed
            return Registered(DIABETES, None, str(exc), False, str(metadata_path(path)))
        log.info("no registration at MODEL_PATH=%s: the demo draws scikit-learn's diabetes rows (the default schema)", path)
        return Registered(DIABETES, ReferenceSampler(diabetes_table(), seed), None, False, "scikit-learn's diabetes data")
    loaded = read_reference(path, registration.metadata, registration.schema)
    if isinstance(loaded, str):
        return Registered(
            registration.schema, None, f"no demo: {loaded}", registration.served_elsewhere, str(registration.sidecar)
        )
    try:
        sampler = ReferenceSampler(loaded.table, seed, with_predictions=registration.served_elsewhere)
    except ValueError as exc:
        return Registered(registration.schema, None, f"no demo: {exc}", registration.served_elsewhere, str(loaded.path))
    return Registered(registration.schema, sampler, None, registration.served_elsewhere, str(loaded.path))


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


class RegistrationWatch:
    """The registration in use, and whether the sidecar changed since it was read (checked at most
    every CHECK_INTERVAL_S): the caller reads it again then, off the event loop."""

    def __init__(self, model_path: os.PathLike[str], seed: int | None) -> None:
        self.model_path = model_path
        self.seed = seed
        self._sidecar = metadata_path(Path(model_path))
        self._stamp = _stamp(self._sidecar)
        self.current = read_registered(model_path, seed)
        self._checked = time.monotonic()
        self._kept_for: str | None = None  # why a changed sidecar was not taken (logged once per reason)
        self._describe()

    def _describe(self) -> None:
        current = self.current
        if current.unavailable:
            log.warning("schema %s (%s); %s", current.schema.fingerprint, current.schema.describe(), current.unavailable)
        else:
            log.info(
                "schema %s (%s); the demo draws from %s", current.schema.fingerprint, current.schema.describe(), current.source
            )

    def changed(self) -> bool:
        """Whether the sidecar's stat differs from the one read (looked at most every CHECK_INTERVAL_S)."""
        now = time.monotonic()
        if now - self._checked < CHECK_INTERVAL_S:
            return False
        self._checked = now
        return _stamp(self._sidecar) != self._stamp

    def reload(self) -> Registered:
        """Read the registration again (file I/O); the caller puts it in use with ``use``.

        A sidecar of the same schema whose reference cannot be read (a copy of the model's three
        files under way, the sidecar first) leaves the demo drawing the rows it has: the one in use
        is returned, and the sidecar is read again at the next check until its reference is there.
        """
        stamp = _stamp(self._sidecar)
        registered = read_registered(self.model_path, self.seed)
        current = self.current
        if registered.sampler is None and current.sampler is not None and registered.schema == current.schema:
            if registered.unavailable != self._kept_for:
                log.warning(
                    "the sidecar changed but %s; the demo goes on drawing from %s and reads it again in %gs",
                    registered.unavailable, current.source, CHECK_INTERVAL_S,
                )  # fmt: skip
                self._kept_for = registered.unavailable
            return current
        self._stamp = stamp
        self._kept_for = None
        return registered

    def use(self, registered: Registered) -> None:
        if registered is self.current:
            return
        self.current = registered
        self._describe()
