"""The model's feature schema: the ordered feature names, each numeric or categorical, and what a
valid value of each is. No I/O.

Every way in validates a features body here (the ``features`` and ``predictions`` queues,
``/predict``, ``/predictions``, ``/samples``), the demo draws in its order, drift reads its names
and kinds, and the dashboard shows its names. The schema is the registered model's, recorded in
its sidecar (``register --reference FILE --target COLUMN``, or ``train`` for the demo); a sidecar
written before schemas existed means the diabetes demo's ten numeric columns (``DIABETES``).

A body is an object ``{"sqft": 1200.0, "city": "Lyon", ...}`` with every feature of the schema
and no other, or a list of the values in schema order (the seed's form, and what the services
publish on the queues: smaller, and already in order). A numeric feature takes a finite number
within ±FEATURE_ABS_MAX, a categorical one a string of at most ``CATEGORY_MAX_CHARS``
characters; either takes ``null``, counted as missing. A category the reference never showed is
taken (and counted by drift as "unseen"), not refused. A refusal names the feature and what
was expected (``SchemaViolation``).
"""

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np

from services.common.settings import get_settings

Kind = Literal["numeric", "categorical"]
KINDS: tuple[Kind, ...] = ("numeric", "categorical")
SCHEMA_FORMAT = 1
# The diabetes demo's ten columns (scikit-learn's names), the default schema.
DIABETES_NAMES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")
FEATURES_MAX = 2000  # features in a schema: a message of that many values stays within MAX_MESSAGE_BYTES
NAME_MAX_CHARS = 100
CATEGORY_MAX_CHARS = 200  # a categorical value longer than this is refused (a free text is not a category)
# Categories a schema records per feature, the most frequent first: beyond that a column is more an id
# than a category. The values past them count, for drift, with the unseen ones (the reference's share of
# them included, so a steady stream of them is not drift).
CATEGORIES_MAX = 1000
PROBLEMS_SHOWN = 5  # problems of one body reported (a 422's items, an x-dlq-reason)
# What drift calls the model's output beside the features (GET /drift's "prediction"): no feature takes the name.
PREDICTION = "prediction"

# What a refusal was, for counting (model_api's model_inputs_refused{reason}).
ProblemKind = Literal[
    "missing_feature", "unknown_feature", "feature_count", "wrong_type", "non_finite", "out_of_range", "not_a_body"
]


@dataclass(frozen=True)
class FeatureProblem:
    """One thing wrong with a body: where (the feature's name, or the position in a list) and what."""

    kind: ProblemKind
    msg: str
    loc: tuple[str | int, ...] = ()


class SchemaViolation(ValueError):
    """A features body that does not fit the schema; ``problems`` says each thing wrong, naming the feature."""

    def __init__(self, problems: Sequence[FeatureProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(problem.msg for problem in self.problems))

    @property
    def kind(self) -> ProblemKind:
        return self.problems[0].kind


@dataclass(frozen=True)
class FeatureSpec:
    """One feature: its name, its kind, and for a categorical one the categories the reference showed
    (the most frequent first); the share of the reference's rows where it was missing."""

    name: str
    kind: Kind
    categories: tuple[str, ...] = ()
    missing_share: float = 0.0

    def __post_init__(self) -> None:
        name: object = self.name  # from a sidecar: checked, not trusted to be a string
        if not isinstance(name, str) or not 1 <= len(name) <= NAME_MAX_CHARS:
            raise ValueError(f"a feature's name is a string of 1 to {NAME_MAX_CHARS} characters, not {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"feature {self.name!r}: its kind is numeric or categorical, not {self.kind!r}")
        if self.kind == "numeric" and self.categories:
            raise ValueError(f"feature {self.name!r} is numeric: it has no categories")
        if not all(isinstance(c, str) for c in self.categories) or len(set(self.categories)) != len(self.categories):
            raise ValueError(f"feature {self.name!r}: its categories are distinct strings")
        if not 0.0 <= self.missing_share <= 1.0:
            raise ValueError(f"feature {self.name!r}: missing_share {self.missing_share} is not a share (0 to 1)")

    @property
    def numeric(self) -> bool:
        return self.kind == "numeric"

    def expected(self) -> str:
        return "a number or null" if self.numeric else "a string or null"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "missing_share": self.missing_share}
        if not self.numeric:
            out["categories"] = list(self.categories)
        return out


def _describe(value: Any) -> str:
    """A JSON value as a refusal names it: its kind, and a short excerpt."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    if isinstance(value, int | float):
        return f"the number {value:g}" if isinstance(value, float) else f"the number {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {json.dumps(shown)}"
    return "an object" if isinstance(value, dict) else "a list" if isinstance(value, list) else type(value).__name__


@dataclass(frozen=True, eq=False)
class FeatureSchema:
    """The ordered features of the model's inputs (see the module's docstring for the rules)."""

    features: tuple[FeatureSpec, ...]
    # The reference's target column, when the schema came from a labelled file (documentation only).
    target: str | None = None
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= len(self.features) <= FEATURES_MAX:
            raise ValueError(f"a schema has 1 to {FEATURES_MAX} features, not {len(self.features)}")
        names = [spec.name for spec in self.features]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"a feature name may appear once in a schema; repeated: {', '.join(repeated[:5])}")
        object.__setattr__(self, "_index", {name: i for i, name in enumerate(names)})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FeatureSchema) and self.features == other.features

    def __hash__(self) -> int:
        return hash(self.features)

    # -- what it is
    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.features)

    @cached_property
    def numeric_only(self) -> bool:
        return all(spec.numeric for spec in self.features)

    @cached_property
    def categorical(self) -> tuple[int, ...]:
        """The positions of the categorical features."""
        return tuple(i for i, spec in enumerate(self.features) if not spec.numeric)

    @cached_property
    def fingerprint(self) -> str:
        """12 hex of the sha256 of the names and kinds in order: what a list body's positions mean.
        The categories seen are not part of it (a new category is a value, not a new schema)."""
        text = json.dumps([[spec.name, spec.kind] for spec in self.features], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def __len__(self) -> int:
        return len(self.features)

    def position(self, name: str) -> int:
        """The position of feature ``name``; a KeyError naming the schema's features if it has none."""
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"unknown feature {name!r}: {self.listing()}") from None

    def spec(self, name: str) -> FeatureSpec:
        return self.features[self.position(name)]

    def listing(self, limit: int = 20) -> str:
        """'the schema's features are a, b, c' (the first ``limit`` of them, then how many more)."""
        shown = ", ".join(self.names[:limit])
        more = f" and {len(self) - limit} more" if len(self) > limit else ""
        return f"the schema's {len(self)} features are {shown}{more}"

    def describe(self) -> str:
        numeric = len(self) - len(self.categorical)
        return f"{len(self)} features ({numeric} numeric, {len(self.categorical)} categorical)"

    # -- validating a body
    def row(self, body: Any) -> list[float | str | None]:
        """The values of ``body`` (an object by name, or a list in schema order), in schema order:
        numbers as floats, categories as strings, missing values as None. SchemaViolation if it does
        not fit, each problem naming the feature and what was expected."""
        if type(body) is list:
            if len(body) == len(self.features) and self.numeric_only:
                # The common case (the demo's and the seed's form) checked in one pass, then again in
                # detail only when something is off.
                bound = get_settings().FEATURE_ABS_MAX
                if all(type(v) is float and -bound <= v <= bound for v in body):
                    return body
            return self._checked(body, list(range(len(body))), list_form=True)
        if isinstance(body, Mapping):
            return self._by_name(body)
        raise SchemaViolation(
            [FeatureProblem("not_a_body", f"features must be an object by name or a list in schema order, not {_describe(body)}")]
        )

    def _by_name(self, body: Mapping[str, Any]) -> list[float | str | None]:
        missing = [name for name in self.names if name not in body]
        unknown = [str(name)[:NAME_MAX_CHARS] for name in body if name not in self._index]
        problems = [
            FeatureProblem("missing_feature", f"feature {name!r} is missing (null is how to say its value is unknown)", (name,))
            for name in missing
        ] + [FeatureProblem("unknown_feature", f"unknown feature {name!r}: {self.listing()}", (name,)) for name in unknown]
        if problems:
            raise SchemaViolation(problems[:PROBLEMS_SHOWN])
        return self._checked([body[name] for name in self.names], list(self.names), list_form=False)

    def _checked(self, values: list[Any], where: Sequence[str | int], *, list_form: bool) -> list[float | str | None]:
        if list_form and len(values) != len(self.features):
            raise SchemaViolation(
                [
                    FeatureProblem(
                        "feature_count",
                        f"a list of features holds {len(self.features)} values in schema order, not {len(values)} "
                        f"({self.listing()}); or send an object by name",
                    )
                ]
            )
        bound = get_settings().FEATURE_ABS_MAX
        out: list[float | str | None] = []
        problems: list[FeatureProblem] = []
        for spec, value, loc in zip(self.features, values, where, strict=True):
            checked = _check_value(spec, value, bound)
            if isinstance(checked, FeatureProblem):
                problems.append(FeatureProblem(checked.kind, checked.msg, (loc,)))
                if len(problems) >= PROBLEMS_SHOWN:
                    break
            else:
                out.append(checked)
        if problems:
            raise SchemaViolation(problems)
        return out

    # -- for the model, drift and the demo
    def encode(self, rows: Sequence[Sequence[float | str | None]]) -> np.ndarray:
        """Rows as a float matrix: numbers as they are, a category as its position in the feature's
        categories (``UNSEEN`` for one not among them), missing as NaN. What drift's window holds."""
        if not len(rows):
            return np.zeros((0, len(self.features)))
        if self.numeric_only:
            return np.array(rows, dtype=float)  # None becomes NaN
        return self.encode_columns(list(zip(*rows, strict=True)))

    def encode_columns(self, columns: Sequence[Sequence[Any]]) -> np.ndarray:
        """``encode`` of the same values given column by column (a reference table's)."""
        rows = len(columns[0]) if columns else 0
        matrix = np.empty((rows, len(self.features)))
        for j, (spec, column) in enumerate(zip(self.features, columns, strict=True)):
            if spec.numeric:
                matrix[:, j] = np.array(column, dtype=float)
            else:
                codes = self._codes[j]
                matrix[:, j] = [math.nan if value is None else codes.get(value, UNSEEN) for value in column]
        return matrix

    @cached_property
    def _codes(self) -> dict[int, dict[str, float]]:
        return {j: {c: float(k) for k, c in enumerate(self.features[j].categories)} for j in self.categorical}

    # -- what /docs shows
    def json_schema(self) -> dict[str, Any]:
        """A features body as JSON Schema (OpenAPI 3.1): an object with every feature by name, or a list
        in schema order; a number or null for a numeric feature, a string or null for a categorical one."""
        bound = get_settings().FEATURE_ABS_MAX

        def value(spec: FeatureSpec) -> dict[str, Any]:
            if spec.numeric:
                taken: dict[str, Any] = {"type": "number", "minimum": -bound, "maximum": bound}
            else:
                taken = {"type": "string", "maxLength": CATEGORY_MAX_CHARS}
                if spec.categories:
                    taken["examples"] = list(spec.categories[:5])
            return {"title": spec.name, "anyOf": [taken, {"type": "null"}]}

        values = [value(spec) for spec in self.features]
        return {
            "title": "Features",
            "description": f"the model's {self.describe()}: an object by name, or a list in schema order "
            f"(schema {self.fingerprint})",
            "anyOf": [
                {
                    "type": "object",
                    "properties": dict(zip(self.names, values, strict=True)),
                    "required": list(self.names),
                    "additionalProperties": False,
                },
                {"type": "array", "prefixItems": values, "items": False, "minItems": len(values), "maxItems": len(values)},
            ],
        }

    # -- the sidecar's record
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": SCHEMA_FORMAT, "features": [spec.to_json() for spec in self.features]}
        if self.target is not None:
            out["target"] = self.target
        return out

    @classmethod
    def from_json(cls, data: Any) -> "FeatureSchema":
        """A schema from its record in a sidecar; ValueError saying what is wrong with it."""
        if not isinstance(data, dict) or data.get("format") != SCHEMA_FORMAT or not isinstance(data.get("features"), list):
            raise ValueError(f"not a feature schema of format {SCHEMA_FORMAT}: {str(data)[:200]}")
        specs = []
        for item in data["features"]:
            if not isinstance(item, dict):  # a ValueError, as every other way a record is unusable
                raise ValueError(f"a schema's feature is an object with name and kind, not {item!r}")  # noqa: TRY004
            specs.append(
                FeatureSpec(
                    name=item.get("name"),  # type: ignore[arg-type]  # FeatureSpec checks it
                    kind=item.get("kind"),  # type: ignore[arg-type]  # FeatureSpec checks it
                    categories=tuple(item.get("categories") or ()),
                    missing_share=float(item.get("missing_share", 0.0)),
                )
            )
        target = data.get("target")
        return cls(tuple(specs), target if isinstance(target, str) else None)

    @classmethod
    def numeric(cls, names: Iterable[str]) -> "FeatureSchema":
        return cls(tuple(FeatureSpec(name, "numeric") for name in names))


# A category's code (its position among the feature's categories) when it is not among them.
UNSEEN = -1.0


def problem_errors(exc: SchemaViolation, loc: tuple[str | int, ...], body: Any) -> list[dict[str, Any]]:
    """A refused body's problems as the errors of a 422 (FastAPI's shape): ``loc`` is where the body
    is in the request, each problem's feature (or position) follows; the input is that value."""
    errors = []
    for problem in exc.problems:
        value: Any = body
        for part in problem.loc:
            try:
                value = value[part]
            except (KeyError, IndexError, TypeError):
                value = None
                break
        errors.append({"type": f"feature_{problem.kind}", "loc": (*loc, *problem.loc), "msg": problem.msg, "input": value})
    return errors


def _check_value(spec: FeatureSpec, value: Any, bound: float) -> float | str | FeatureProblem | None:
    """The value as the feature takes it, or the problem with it (without its location)."""
    if value is None:
        return None
    if spec.numeric:
        if type(value) is float or (isinstance(value, int | float) and not isinstance(value, bool)):
            number = float(value)
            if not math.isfinite(number):
                return FeatureProblem("non_finite", f"{spec.name} is numeric: expected a finite number or null, got {number}")
            if abs(number) > bound:
                return FeatureProblem(
                    "out_of_range", f"{spec.name} is numeric: {number:g} is beyond ±{bound:g} (FEATURE_ABS_MAX)"
                )
            return number
        return FeatureProblem("wrong_type", f"{spec.name} is numeric: expected {spec.expected()}, got {_describe(value)}")
    if isinstance(value, str):
        if len(value) > CATEGORY_MAX_CHARS:
            return FeatureProblem(
                "out_of_range",
                f"{spec.name} is categorical: a category is at most {CATEGORY_MAX_CHARS} characters, not {len(value)}",
            )
        return value
    return FeatureProblem("wrong_type", f"{spec.name} is categorical: expected {spec.expected()}, got {_describe(value)}")


DIABETES = FeatureSchema.numeric(DIABETES_NAMES)
