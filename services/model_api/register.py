"""Vouch for your own model file: ``python -m services.model_api.register PATH``.

Writes ``PATH.json``, the metadata model_api needs to load a pickled scikit-learn
regressor you made yourself: its sha256 (model_api refuses the file if it changes
afterwards), type, parameters, scikit-learn version, and its metrics on the same held-out
rows of the diabetes data that ``train`` reports; and ``PATH.reference.json``, the training rows
of that split with your model's predictions on them, for drift. Run it only on a file you made
or trust: it unpickles the file, and unpickling runs code.
"""

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sklearn

from services.model_api.drift import BadReference
from services.model_api.modelstore import (
    NOT_A_REGRESSOR_ACCEPTED,
    ModelFileError,
    check_regressor,
    pickled_sklearn_version,
    predictor_for,
    read_model_file,
    unpickle,
    warning_text,
    write_metadata,
)
from services.model_api.train import DEFAULT_SEED, describe, diabetes_split, summary_line, write_reference_for


def register(path: Path, seed: int = DEFAULT_SEED, *, not_a_regressor: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Write ``path``'s sidecar; return it and the warnings unpickling the file raised.

    A model scikit-learn does not call a regressor (a classifier, say) is refused unless
    ``not_a_regressor`` says the user knows: the sidecar then records that, and model_api loads it."""
    data = read_model_file(path)
    model, caught = unpickle(data, path)
    predictor_for(model, "unregistered", path)  # refuses what cannot serve this pipeline
    check_regressor(model, path, accepted=not_a_regressor)
    made_with = pickled_sklearn_version(caught) or sklearn.__version__
    split = diabetes_split(seed)
    metadata = describe(model, split, sklearn_version=made_with, trained_at=datetime.fromtimestamp(path.stat().st_mtime, UTC))
    metadata["registered_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    if not_a_regressor:
        metadata[NOT_A_REGRESSOR_ACCEPTED] = True
    notes = [warning_text(w) for w in caught]
    try:
        metadata["reference"] = write_reference_for(model, split, path)
    except BadReference as exc:
        notes.append(f"no drift reference written, so drift will be unavailable for this model: {exc}")
    return write_metadata(path, data, metadata), notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.model_api.register", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="your pickled, fitted scikit-learn regressor (10 features)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random_state of the held-out split")
    parser.add_argument(
        "--not-a-regressor",
        action="store_true",
        help="register it even though scikit-learn does not call it a regressor (its predictions must be values of y)",
    )
    args = parser.parse_args(argv)
    try:
        metadata, warnings = register(args.path, args.seed, not_a_regressor=args.not_a_regressor)
    except ModelFileError as exc:
        print(f"register: {exc}", file=sys.stderr)
        return 1
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(summary_line("registered", args.path, metadata))
    return 0


if __name__ == "__main__":
    sys.exit(main())
