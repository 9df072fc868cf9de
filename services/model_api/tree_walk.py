"""The loss model's trees walked for a few rows at once in numpy: ``CompiledTrees``. No I/O.

scikit-learn's ``HistGradientBoostingRegressor.predict`` calls a compiled routine once per tree,
each call with its own checks, output array and OpenMP region: for the loss model's 50 trees that
is ~0.5 ms a call whatever the rows, and concurrent ``POST /predict`` requests are estimated a
handful of rows at a time. Here every tree's nodes are put in flat arrays once, and all the rows
walk all the trees together, one level per step: ~0.05 ms for one row, ~0.1 ms for 20. Above
``ROWS_MAX`` rows scikit-learn's own loop is the faster, and is used.

It reads the fitted model's node arrays (``_predictors``, ``TreePredictor.nodes``, the baseline,
the known categories), which are scikit-learn's internals. So ``compile_trees`` checks itself:
the walk must give *exactly* scikit-learn's predictions (bit for bit: the leaves are summed in
scikit-learn's order) on the rows it is given (the reference's, with missing and unseen values
added); if it does not, or the model is not what it knows, it says why and the loss model keeps
scikit-learn's predict.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np

# Above this many rows scikit-learn's predict (one compiled call per tree) is the faster (bench/estimate.py).
ROWS_MAX = 128
_NODE_FIELDS = ("value", "feature_idx", "num_threshold", "missing_go_to_left", "left", "right", "is_leaf")


@dataclass(frozen=True, eq=False)
class CompiledTrees:
    """Every tree of a fitted ``HistGradientBoostingRegressor`` in flat arrays (nodes of all trees
    end to end; a leaf's two children are itself, so a row that reached one stays there)."""

    roots: np.ndarray  # each tree's first node
    children: np.ndarray  # node k's left child at 2k, its right at 2k + 1
    feature: np.ndarray
    threshold: np.ndarray
    missing_right: np.ndarray  # where a missing value (NaN) goes
    value: np.ndarray  # a leaf's value, 0 elsewhere
    categorical: np.ndarray  # the node splits a categorical feature
    any_categorical: bool  # some node does
    left_categories: np.ndarray  # a categorical node's bitset (8 x 32 bits) of the categories that go left
    known_categories: np.ndarray  # the feature's bitset of the categories seen in fit (others go as missing)
    depth: int
    baseline: float
    # With categorical features scikit-learn first re-codes them (its OrdinalEncoder: a category's
    # position among those seen in fit, NaN for another) and puts them first: the trees' columns.
    columns: np.ndarray | None = None  # the input's column of each of the trees' columns
    categories: tuple[tuple[int, np.ndarray], ...] = ()  # (trees' column, the sorted categories seen in fit)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The model's prediction of each row of ``x`` (a float matrix, the model's input columns)."""
        x = self._recoded(np.asarray(x, dtype=float))
        rows, width = x.shape
        trees = len(self.roots)
        flat = np.ascontiguousarray(x).ravel()
        node = np.tile(self.roots, rows)
        at = np.repeat(np.arange(rows) * width, trees)
        any_missing = bool(np.isnan(flat).any())  # most rows have none: a step then costs a third less
        for _ in range(self.depth):
            value = flat.take(at + self.feature.take(node))
            right = value > self.threshold.take(node)
            if any_missing or self.any_categorical:
                missing = np.isnan(value)
                right |= missing & self.missing_right.take(node)
                if self.any_categorical:
                    right = self._categorical(node, value, missing, right)
            node = self.children.take(node * 2 + right)
        summed = np.empty((rows, trees + 1))
        summed[:, 0] = self.baseline
        summed[:, 1:] = self.value.take(node).reshape(rows, trees)
        # Tree by tree from the baseline, as scikit-learn adds them (cumsum adds in order; sum would pair them).
        result: np.ndarray = np.cumsum(summed, axis=1)[:, -1]
        return result

    def _recoded(self, x: np.ndarray) -> np.ndarray:
        if self.columns is None:
            return x
        recoded = x[:, self.columns]
        for column, seen in self.categories:
            values = recoded[:, column]
            at = np.minimum(np.searchsorted(seen, values), len(seen) - 1)
            recoded[:, column] = np.where(seen[at] == values, at, np.nan)  # NaN and unseen values: NaN
        return recoded

    def _categorical(self, node: np.ndarray, value: np.ndarray, missing: np.ndarray, right: np.ndarray) -> np.ndarray:
        """``right`` with the categorical nodes' decisions: left when the category is in the node's
        bitset, right when it is another category seen in fit, and as a missing value when it is
        missing, negative (unseen here) or unseen in fit."""
        split = self.categorical.take(node)
        if not split.any():
            return right
        where = np.flatnonzero(split)
        nodes, values = node[where], value[where]
        usable = ~missing[where] & (values >= 0)
        code = np.where(usable, values, 0).astype(np.uint8)  # as scikit-learn reads it: a byte
        word, bit = (code >> 5).astype(np.intp), (code & 31).astype(np.uint32)
        goes_left = (self.left_categories[nodes, word] >> bit) & 1
        known = (self.known_categories[nodes, word] >> bit) & 1
        as_missing = self.missing_right.take(nodes)
        decided = np.where(usable & (goes_left == 1), False, np.where(usable & (known == 1), True, as_missing))
        right = right.copy()
        right[where] = decided
        return right


def compile_trees(model: Any, probes: int = 256, seed: int = 0) -> CompiledTrees | str:
    """``model``'s trees compiled, if the walk gives exactly its predictions on ``probe_rows``; else
    why not."""
    try:
        trees = _compile(model)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
        return f"its trees could not be read ({type(exc).__name__}: {exc})"
    if isinstance(trees, str):
        return trees
    rows = probe_rows(trees, int(model.n_features_in_), probes, np.random.default_rng(seed))
    for batch in (rows, rows[:1], rows[: ROWS_MAX + 1]):
        expected = np.asarray(model.predict(batch), dtype=float)
        got = trees.predict(batch)
        if not np.array_equal(expected, got):
            worst = float(np.nanmax(np.abs(expected - got)))
            return f"walking its trees did not give scikit-learn's predictions (off by up to {worst:g})"
    return trees


def probe_rows(trees: CompiledTrees, width: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Input rows that take every kind of turn: each numeric value drawn among the thresholds its
    feature is split at (a value equal to one goes left), the next float above one, and missing; a
    categorical one among the categories seen in fit, others (-1, 254: unseen) and missing."""
    inner = np.arange(width) if trees.columns is None else np.argsort(trees.columns)  # input column -> trees' column
    seen = dict(trees.categories)
    splits = trees.children[1::2] != np.arange(len(trees.feature))
    rows = np.empty((count, width))
    for column in range(width):
        at = int(inner[column])
        if at in seen:
            candidates = np.concatenate([seen[at], [-1.0, 254.0, np.nan]])
        else:
            thresholds = np.unique(trees.threshold[splits & (trees.feature == at) & ~trees.categorical])
            candidates = np.concatenate([thresholds, np.nextafter(thresholds, np.inf), [np.nan, 0.0]])
        rows[:, column] = rng.choice(candidates, size=count)
    return rows


def _compile(model: Any) -> CompiledTrees | str:
    if getattr(model, "n_trees_per_iteration_", None) != 1:
        return "it is not a fitted regressor of one tree per iteration"
    predictors = [iteration[0] for iteration in model._predictors]
    if not predictors:
        return "it has no trees"
    nodes = [predictor.nodes for predictor in predictors]
    if any(name not in tree.dtype.names for tree in nodes for name in (*_NODE_FIELDS, "is_categorical", "bitset_idx")):
        return "its nodes are not laid out as this scikit-learn's were"
    sizes = np.array([len(tree) for tree in nodes])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
    joined = np.concatenate(nodes)
    own = np.arange(len(joined), dtype=np.intp)
    shift = np.repeat(offsets, sizes)
    leaf = joined["is_leaf"].astype(bool)
    left = np.where(leaf, own, joined["left"].astype(np.intp) + shift)
    right = np.where(leaf, own, joined["right"].astype(np.intp) + shift)
    categorical = joined["is_categorical"].astype(bool) & ~leaf
    feature = np.where(leaf, 0, joined["feature_idx"].astype(np.intp))
    # Each tree's bitsets of the categories that go left, end to end, indexed per node.
    bitsets = [np.asarray(predictor.raw_left_cat_bitsets, dtype=np.uint32).reshape(-1, 8) for predictor in predictors]
    bitset_offsets = np.concatenate([[0], np.cumsum([len(b) for b in bitsets])[:-1]]).astype(np.intp)
    all_bitsets = np.concatenate([*bitsets, np.zeros((1, 8), dtype=np.uint32)])
    bitset_row = np.where(categorical, joined["bitset_idx"].astype(np.intp) + np.repeat(bitset_offsets, sizes), -1)
    known_bitsets, f_idx_map = model._bin_mapper.make_known_categories_bitsets()
    known_bitsets = np.concatenate([np.asarray(known_bitsets, dtype=np.uint32).reshape(-1, 8), np.zeros((1, 8), np.uint32)])
    known_row = np.where(categorical, np.asarray(f_idx_map, dtype=np.intp)[feature], -1)
    baseline = np.asarray(model._baseline_prediction, dtype=float).ravel()
    recoding = _recoding(model)
    if isinstance(recoding, str):
        return recoding
    columns, categories = recoding
    return CompiledTrees(
        roots=offsets,
        children=np.column_stack([left, right]).ravel(),
        feature=feature,
        threshold=np.where(leaf, 0.0, joined["num_threshold"].astype(float)),
        missing_right=~joined["missing_go_to_left"].astype(bool),
        value=np.where(leaf, joined["value"].astype(float), 0.0),
        categorical=categorical,
        any_categorical=bool(categorical.any()),
        left_categories=all_bitsets[bitset_row],  # row -1: the zero bitset, for the nodes that split no category
        known_categories=known_bitsets[known_row],
        depth=max(int(predictor.get_max_depth()) for predictor in predictors),
        baseline=float(baseline[0]),
        columns=columns,
        categories=categories,
    )


def _recoding(model: Any) -> tuple[np.ndarray | None, tuple[tuple[int, np.ndarray], ...]] | str:
    """How scikit-learn re-codes the input for the trees (``CompiledTrees.columns`` and ``categories``)."""
    preprocessor = getattr(model, "_preprocessor", None)
    if preprocessor is None:
        return None, ()
    steps = {name: (transformer, mask) for name, transformer, mask in preprocessor.transformers_}
    if set(steps) - {"encoder", "numerical", "remainder"} or np.asarray(steps.get("remainder", (None, []))[1]).any():
        return "its input goes through steps this walk does not know"
    encoder, categorical = steps["encoder"]
    numeric = steps["numerical"][1] if "numerical" in steps else np.zeros_like(categorical)
    if type(encoder).__name__ != "OrdinalEncoder" or not (
        np.isnan(encoder.unknown_value) and np.isnan(encoder.encoded_missing_value)
    ):
        return "its categories are encoded in a way this walk does not know"
    columns = np.concatenate([np.flatnonzero(categorical), np.flatnonzero(numeric)])
    seen = tuple(
        (k, np.asarray(c, dtype=float)[~np.isnan(np.asarray(c, dtype=float))]) for k, c in enumerate(encoder.categories_)
    )
    if any(len(categories) == 0 for _, categories in seen):
        return "a categorical feature had no category in fit"
    return columns, seen
