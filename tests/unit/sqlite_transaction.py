"""One SqliteHalfStore transaction as a context manager, for test_join.py and test_store.py."""

from collections.abc import Iterator
from contextlib import contextmanager

from services.metric_api.store import SqliteHalfStore


@contextmanager
def transaction(store: SqliteHalfStore) -> Iterator[None]:
    """BEGIN; COMMIT if the block succeeds, ROLLBACK (and re-raise) if it fails."""
    store.begin()
    try:
        yield
    except BaseException:
        store.rollback()
        raise
    store.commit()
