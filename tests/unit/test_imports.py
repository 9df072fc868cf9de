"""What each service loads at start: a heavy library it does not use is memory every replica pays.

metric_api once imported scikit-learn (and with it SciPy and pandas) for a one-line path helper:
~110 MB of its resident memory. Each check runs in a fresh interpreter.
"""

import subprocess
import sys

import pytest

from tests.support import REPO_ROOT

NOT_NEEDED = {
    "services.metric_api.app": ["sklearn", "scipy", "pandas", "matplotlib"],
    "services.features_api.app": ["matplotlib", "pandas"],
    "services.plot_api.app": ["sklearn", "scipy"],
}


@pytest.mark.parametrize("module", sorted(NOT_NEEDED))
def test_a_service_does_not_import_libraries_it_does_not_use(module: str) -> None:
    check = (
        f"import sys, {module}; "
        f"print(' '.join(name for name in {NOT_NEEDED[module]!r} if name in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", check], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.split() == [], f"{module} imports {loaded.stdout.strip()}"
