"""The four services of one run, on their own queues (QUEUE_PREFIX) and LOGS_DIR."""

import contextlib
import signal
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd

from harness.processes import PORT_SETTING, REPO_ROOT, SERVICES, ServiceProcess, free_port, service_env, stop_all, wait_until
from harness.queues import delete_queues, queue_state, unique_prefix
from services.common.files import METRIC_LOG
from services.features_api.publisher import MAX_BURST
from services.metric_api.merge import with_rotated
from services.plot_api.charts import CHARTS, LOG_WINDOWS

# plot_api's chart routes and the file each is written to in LOGS_DIR
CHART_ROUTES = {chart.url: chart.file for chart in CHARTS.values()}
# The charts of metric_log.csv's rows (not of model_api's drift report or of plot_api's own samples of the estimate).
ROW_CHART_ROUTES = tuple(chart.url for chart in CHARTS.values() if chart.window in LOG_WINDOWS)
RETRY_503_S = 0.2  # between tries of a publish refused while the broker connection is down


@dataclass
class Pipeline:
    """The four services of one run, on their own queues (QUEUE_PREFIX) and LOGS_DIR."""

    services: dict[str, ServiceProcess]
    logs_dir: Path
    model_path: Path
    amqp_url: str
    prefix: str

    def url(self, name: str) -> str:
        return self.services[name].url

    @property
    def csv(self) -> Path:
        return self.logs_dir / METRIC_LOG

    def rows(self) -> pd.DataFrame:
        """Every row of the log: the rotated files (METRIC_LOG_MAX_BYTES), oldest first, then metric_log.csv."""
        files = [path for path in with_rotated([self.csv]) if path.exists()]
        if not files:
            return pd.DataFrame({"id": []}, dtype=str)
        return pd.concat([pd.read_csv(path, dtype={"id": str}) for path in files], ignore_index=True)

    def sent(self) -> int:
        sent: int = httpx.get(f"{self.url('features_api')}/features/status").json()["sent"]
        return sent

    def wait_all_joined(self, timeout: float = 60) -> pd.DataFrame:
        """Wait until every sample sent so far has its row, and return the rows."""
        wait_until(lambda: len(self.rows()) == self.sent(), timeout, "one CSV row per sample sent")
        return self.rows()

    @property
    def auth(self) -> dict[str, str]:
        """The header a route that changes state asks for, when the pipeline runs with an API_TOKEN."""
        token = self.services["features_api"].env.get("API_TOKEN")
        return {"Authorization": f"Bearer {token}"} if token else {}

    def burst(self, count: int, timeout: float = 60) -> list[str]:
        """Publish ``count`` samples now, in requests of at most MAX_BURST; their ids.

        A 503 (the broker connection is down: nothing was published) is tried again, as a
        client should, until ``timeout`` has passed since the last request that was taken.
        """
        ids: list[str] = []
        deadline = time.monotonic() + timeout
        while len(ids) < count:
            answer = httpx.post(
                f"{self.url('features_api')}/features/publish",
                json={"count": min(MAX_BURST, count - len(ids))},
                headers=self.auth,
                timeout=timeout,
            )
            if answer.status_code == 503 and time.monotonic() < deadline:
                time.sleep(RETRY_503_S)
                continue
            assert answer.status_code == 200, answer.text
            ids.extend(answer.json()["ids"])
            deadline = time.monotonic() + timeout
        return ids

    def queues(self) -> dict[str, tuple[int, int]]:
        return queue_state(self.amqp_url, self.prefix, int(self.services["features_api"].env.get("METRIC_SHARDS", "1")))

    def settled_charts(self, timeout: float = 30, routes: Iterable[str] = CHART_ROUTES) -> dict[str, httpx.Response]:
        """plot_api's charts (``routes``) once served and no longer changing (drawn from every row there
        is): the same ETags before and after more than two refresh periods (PLOT_INTERVAL_S=0.5).
        A chart fetched earlier may still be redrawn from rows plot_api had not read yet."""
        routes = tuple(routes)

        def get_all() -> dict[str, httpx.Response]:
            return {route: httpx.get(f"{self.url('plot_api')}{route}") for route in routes}

        def settled() -> dict[str, httpx.Response] | None:
            before = get_all()
            time.sleep(1.2)
            after = get_all()
            served = all(answer.status_code == 200 for answer in after.values())
            same = all(before[route].headers.get("etag") == after[route].headers.get("etag") for route in routes)
            return after if served and same else None

        return wait_until(settled, timeout, "the charts to be served and settled")

    def replicas(self, name: str) -> list[ServiceProcess]:
        """Every running process of one service (several for model_api with ``model_replicas``)."""
        return [service for service in self.services.values() if service.name == name]

    def restart(self, key: str, sig: int = signal.SIGKILL) -> None:
        """Stop one service (kill -9 by default) and start it again, as a supervisor would.

        ``key`` is its key in ``services``: its name, or e.g. "model_api-2" for a replica."""
        old = self.services[key]
        old.stop(sig)
        self.services[key] = ServiceProcess(old.name, old.env, self.logs_dir, old.cwd).start()
        self.services[key].wait_healthy()


@contextlib.contextmanager
def running_pipeline(
    work_dir: Path,
    model_path: Path,
    amqp_url: str,
    *,
    model_replicas: int = 1,
    services_root: Path | str = REPO_ROOT,
    **settings: str,
) -> Iterator[Pipeline]:
    """Start the four services against ``amqp_url`` (or, via AMQP_URL in ``settings``, a proxy).

    ``services_root``: the checkout whose ``services`` run (another's, for a before-figure in the
    same benchmark); this one's by default.

    ``model_replicas`` > 1 starts that many model_api processes, each on its own port and
    log folder, all on the same queues: ``services["model_api"]``, ``["model_api-2"]``, ...
    """
    prefix = unique_prefix()
    logs_dir = work_dir / "logs"
    logs_dir.mkdir(exist_ok=True)
    ports = {setting: str(free_port()) for setting in PORT_SETTING.values()}
    env = service_env(
        **{
            "AMQP_URL": amqp_url,
            "QUEUE_PREFIX": prefix,
            "LOGS_DIR": str(logs_dir),
            "MODEL_PATH": str(model_path),
            "FEATURES_INTERVAL_S": "3600",
            "PLOT_INTERVAL_S": "0.5",
            "METRIC_API_URL": f"http://127.0.0.1:{ports['METRIC_PORT']}",
            "MODEL_API_URL": f"http://127.0.0.1:{ports['MODEL_PORT']}",
            **ports,
            **settings,
        }
    )
    root = Path(services_root)
    services = {name: ServiceProcess(name, env, work_dir, root) for name in SERVICES}
    for replica in range(2, model_replicas + 1):
        replica_dir = work_dir / f"model_api-{replica}"
        replica_dir.mkdir(exist_ok=True)
        replica_env = {**env, PORT_SETTING["model_api"]: str(free_port())}
        services[f"model_api-{replica}"] = ServiceProcess("model_api", replica_env, replica_dir, root)
    pipeline = Pipeline(services, logs_dir, model_path, amqp_url, prefix)
    try:
        for service in services.values():
            service.start()
        for service in services.values():
            # They all start at once: each extra process slows everyone's start-up.
            service.wait_healthy(timeout=30 + 10 * (model_replicas - 1))
        yield pipeline
    finally:
        try:
            stop_all(list(pipeline.services.values()))
        finally:
            delete_queues(amqp_url, prefix, settings.get("LABEL_DELAY_S", "0"), int(settings.get("METRIC_SHARDS", "1")))
