"""`make run` as a user runs it: which model it trains, the pids it shows, and Ctrl-C.

The first two tests run make itself (no venv, no broker needed). The last runs `make run` for real
in a pseudo-terminal, as a shell would: the pid honcho prints is the service's (SIGHUP reloads the
model), and Ctrl-C stops the four services and make with them, without "make: *** Error 130"."""

import os
import re
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness.processes import PORT_SETTING, REPO_ROOT, free_port
from harness.queues import delete_queues, unique_prefix

DEFAULT_MODEL = "services/model_api/myfile.pkl"


def make(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    environment = {k: v for k, v in os.environ.items() if k != "MODEL_PATH"}
    return subprocess.run(
        ["make", *args], cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=60, check=False
    )


def test_a_model_path_that_does_not_exist_is_an_error_naming_it_and_nothing_is_trained(tmp_path: Path) -> None:
    typo = tmp_path / "mymodle.pkl"
    result = make("model", f"MODEL_PATH={typo}")
    assert result.returncode != 0
    assert f"MODEL_PATH={typo} does not exist" in result.stdout and "services.model_api.train --out" in result.stdout
    assert not typo.exists() and list(tmp_path.iterdir()) == []


def test_make_run_trains_only_the_default_model_at_the_default_path(tmp_path: Path) -> None:
    mine = tmp_path / "mine.pkl"
    mine.write_bytes(b"a model of the user's")
    trains = re.compile(r"^\S*python -m services\.model_api\.train --out (\S+)(?: --if-needed)?$", re.MULTILINE)
    assert trains.findall(make("--dry-run", "run", f"MODEL_PATH={mine}").stdout) == []
    assert trains.findall(make("--dry-run", "--always-make", "model").stdout) == [DEFAULT_MODEL]
    # A profile of a model served elsewhere is a sidecar without a model file: make run takes it.
    profile = tmp_path / "theirs.pkl"
    profile.with_name("theirs.pkl.json").write_text("{}")
    assert make("model", f"MODEL_PATH={profile}").returncode == 0
    refused = make("model", f"MODEL_PATH={tmp_path / 'typo.pkl'}")
    assert refused.returncode != 0 and "typo.pkl does not exist" in refused.stdout + refused.stderr


class Terminal:
    """A command run as a terminal's foreground job: Ctrl-C is the terminal's, not a signal we send."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.master, slave = os.openpty()
        # setsid --ctty: a session of its own whose controlling terminal is this one, as a login shell's job.
        self.process = subprocess.Popen(
            ["setsid", "--ctty", *command], stdin=slave, stdout=slave, stderr=slave, cwd=REPO_ROOT, env=env
        )
        os.close(slave)
        self.output = b""

    def read(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # the other side is closed: everything has exited
                    return
                if not data:
                    return
                self.output += data

    def wait_for(self, pattern: bytes, timeout: float) -> re.Match[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := re.search(pattern, self.output):
                return found
            self.read(0.5)
        raise AssertionError(f"no {pattern!r} within {timeout}s:\n{self.text[-3000:]}")

    def ctrl_c(self) -> None:
        os.write(self.master, b"\x03")

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        os.close(self.master)


@pytest.mark.broker
@pytest.mark.slow
def test_make_run_shows_the_services_pids_sighup_reloads_and_ctrl_c_ends_cleanly(
    tmp_path: Path, model_path: Path, amqp_url: str
) -> None:
    if shutil.which("setsid") is None or shutil.which("make") is None:
        pytest.skip("setsid (util-linux) and make are needed to run make in a terminal")
    prefix = unique_prefix()
    ports = {setting: str(free_port()) for setting in PORT_SETTING.values()}
    env = {
        **{k: v for k, v in os.environ.items() if k not in ports},
        **ports,
        "AMQP_URL": amqp_url,
        "QUEUE_PREFIX": prefix,
        "LOGS_DIR": str(tmp_path / "logs"),
        "MODEL_PATH": str(model_path),
        "FEATURES_INTERVAL_S": "3600",
        "METRIC_API_URL": f"http://127.0.0.1:{ports['METRIC_PORT']}",
    }
    terminal = Terminal(["make", "run"], env)
    try:
        pid = int(terminal.wait_for(rb"model\.1 started \(pid=(\d+)\)", 120).group(1))
        for service in ("features_api", "model_api", "metric_api"):
            terminal.wait_for(rf"connected to RabbitMQ at \S+ as {service}".encode(), 120)
        terminal.wait_for(rb"plot\.1 .*Uvicorn running", 120)
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:3] == [b"python", b"-m", b"services.model_api"]
        os.kill(pid, signal.SIGHUP)
        terminal.wait_for(rb"model reloaded: (\w+) -> \1", 30)
        assert terminal.process.poll() is None and Path(f"/proc/{pid}").exists()  # reloaded, not killed

        terminal.ctrl_c()
        terminal.wait_for(rb"SIGINT received", 30)
        terminal.process.wait(timeout=60)
        terminal.read(1)
        for service in ("features", "model", "metric", "plot"):
            assert re.search(rf"{service}\.1 +\| .*Application shutdown complete".encode(), terminal.output), terminal.text[
                -3000:
            ]
        assert "Error" not in terminal.text and "Traceback" not in terminal.text, terminal.text[-3000:]
        # make ends as any program does on Ctrl-C: by the signal, having said nothing of an error.
        assert terminal.process.returncode in (0, -signal.SIGINT), terminal.process.returncode
    finally:
        terminal.close()
        delete_queues(amqp_url, prefix)
