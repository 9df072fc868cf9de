"""What a module loads at start. Each check runs in a fresh interpreter.

A service: a heavy library it does not use is memory every replica pays. metric_api once imported
scikit-learn (and with it SciPy and pandas) for a one-line path helper: ~110 MB of its resident memory.
The benchmark: it once imported the test tree for the pipeline and the checker, now in harness/.
And no service imports another: what two services share lives in services/common (the JSON between
them in services/common/contracts); plot_api once imported metric_api's statistics.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from harness.processes import REPO_ROOT

NOT_NEEDED = {
    "services.metric_api.app": ["sklearn", "scipy", "pandas", "matplotlib"],
    "services.features_api.app": ["matplotlib", "pandas"],
    "services.plot_api.app": ["sklearn", "scipy"],
}


@pytest.mark.parametrize("module", sorted(NOT_NEEDED))
def test_a_service_does_not_import_libraries_it_does_not_use(module: str) -> None:
    check = f"import sys, {module}; print(' '.join(name for name in {NOT_NEEDED[module]!r} if name in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", check], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.split() == [], f"{module} imports {loaded.stdout.strip()}"


def test_the_bench_and_the_harness_do_not_import_the_test_tree() -> None:
    """The benchmark does not depend on the test tree: what it shares with the tests lives in harness/."""
    check = (
        "import sys, bench.run, bench.replicas, harness.checker, harness.pipeline, harness.proxy; "
        "print(' '.join(name for name in sys.modules if name == 'tests' or name.startswith('tests.')))"
    )
    loaded = subprocess.run([sys.executable, "-c", check], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == [], f"the bench imports {loaded.stdout.strip()}"


SERVICES = ("features_api", "model_api", "metric_api", "plot_api")


def imported_services(path: Path) -> set[str]:
    """The service packages a module imports, at its top or anywhere inside."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        found |= {name.split(".")[1] for name in names if name.startswith("services.") and name.split(".")[1] in SERVICES}
    return found


@pytest.mark.parametrize("package", [*SERVICES, "common"])
def test_no_service_imports_another_and_common_imports_none(package: str) -> None:
    modules = sorted((REPO_ROOT / "services" / package).rglob("*.py"))
    assert modules, f"no modules in services/{package}"
    foreign = {
        str(path.relative_to(REPO_ROOT)): sorted(others) for path in modules if (others := imported_services(path) - {package})
    }
    assert foreign == {}, f"services/{package} imports other services: {foreign}"
