"""One settings class for the whole system, read from the environment (docs/operations.md lists them)."""

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, cast, get_args

from pydantic import AfterValidator, AnyHttpUrl, Field, SecretStr, TypeAdapter, UrlConstraints, model_validator
from pydantic_core import Url
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.delay import LabelDelay
from services.common.tags import parse_segment_keys

AmqpUrl = Annotated[Url, UrlConstraints(allowed_schemes=["amqp", "amqps"], host_required=True)]
Port = Annotated[int, Field(ge=1, le=65535)]
_AMQP_URL = TypeAdapter(AmqpUrl)
MAX_SHARDS = 1024


def parse_brokers(value: str) -> tuple[Url, ...]:
    """The brokers of a comma-separated AMQP_URL, in order; ValueError saying what is wrong."""
    parts = [part.strip() for part in value.split(",")]
    if not all(parts):
        raise ValueError("an empty entry: list the brokers as amqp://...,amqp://...")
    urls = tuple(_AMQP_URL.validate_python(part) for part in parts)
    if len({(url.scheme, url.username, url.password, url.path or "/", url.query) for url in urls}) > 1:
        raise ValueError(
            "the brokers listed must be nodes of one cluster: the same scheme, user, password, "
            "virtual host and options; only host and port may differ"
        )
    return urls


def _normalised_brokers(value: str) -> str:
    return ",".join(str(url) for url in parse_brokers(value))


def parse_metric_apis(value: str) -> tuple[AnyHttpUrl, ...]:
    """The metric_api's of a comma-separated METRIC_API_URL (one per shard of the join), in order."""
    parts = [part.strip() for part in value.split(",")]
    if not all(parts):
        raise ValueError("an empty entry: list the metric_api's as http://...,http://...")
    urls = tuple(_HTTP_URL.validate_python(part) for part in parts)
    if len({str(url) for url in urls}) < len(urls):
        raise ValueError("a metric_api is listed twice: list each shard's metric_api once")
    return urls


_HTTP_URL = TypeAdapter(AnyHttpUrl)


def _normalised_metric_apis(value: str) -> str:
    return ",".join(str(url) for url in parse_metric_apis(value))


# One metric_api, or one per shard of the join, comma-separated (plot_api shows their union).
MetricApiUrls = Annotated[str, AfterValidator(_normalised_metric_apis)]

QueueType = Literal["classic", "quorum"]

# One broker, or several nodes of one cluster, comma-separated (the first is tried first).
AmqpUrls = Annotated[str, AfterValidator(_normalised_brokers)]


def _usable_token(token: SecretStr) -> SecretStr:
    """Sent as ``Authorization: Bearer <token>``: characters a header carries as they are, and long enough not to guess."""
    value = token.get_secret_value()
    if not 16 <= len(value) <= 256 or not re.fullmatch(r"[A-Za-z0-9._~+/=-]+", value):
        raise ValueError(
            "API_TOKEN must be 16 to 256 letters, digits or -._~+/= "
            "(e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token


ApiToken = Annotated[SecretStr, AfterValidator(_usable_token)]


def _delay_spec(spec: str) -> str:
    LabelDelay.parse(spec)  # a DelaySpecError (a ValueError) says what is wrong and what is expected
    return spec


DelaySpec = Annotated[str, AfterValidator(_delay_spec)]

# The parts of services/common/amqp/fastpath (each a gate.Part with its key), as FASTPATH_OFF names them.
FastpathPart = Literal["publish", "deliveries", "frames"]
FASTPATH_PARTS: tuple[FastpathPart, ...] = get_args(FastpathPart)


def parse_fastpath_off(value: str) -> frozenset[FastpathPart]:
    """The fastpath parts a FASTPATH_OFF turns off: comma-separated keys, or ``all``; a ValueError naming the keys."""
    keys = [key.strip().lower() for key in value.split(",") if key.strip()]
    unknown = [key for key in keys if key != "all" and key not in FASTPATH_PARTS]
    if unknown:
        raise ValueError(
            f"FASTPATH_OFF: {', '.join(repr(key) for key in unknown)} is not a part of fastpath; "
            f"the parts are {', '.join(FASTPATH_PARTS)} (or all), comma-separated"
        )
    return frozenset(FASTPATH_PARTS) if "all" in keys else frozenset(cast(list[FastpathPart], keys))


def _fastpath_off(value: str) -> str:
    parse_fastpath_off(value)
    return value


FastpathOff = Annotated[str, AfterValidator(_fastpath_off)]

# The exact percentiles of a population of rows (every row, one model version's) keep 8 bytes a row;
# beyond ALL_EXACT_ROWS rows a quantile sketch of 32 KiB takes over (services/common/quantile_sketch.py,
# p50/p90/p95 within 0.5 %). 1,000,000: a population's exact values stay below 8.4 MB (the array's
# capacity), and a day of traffic at the rates we measure (up to 20 labelled rows/s) is exact.
ALL_EXACT_ROWS = 1_000_000


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", frozen=True)

    AMQP_URL: AmqpUrls = "amqp://guest:guest@localhost:5672/"
    # quorum: every queue and DLQ a quorum queue (replicated over a cluster's nodes; docs/cluster.md).
    QUEUE_TYPE: QueueType = "classic"
    QUEUE_PREFIX: str = Field("", pattern=r"^[A-Za-z0-9_.:-]*$", max_length=100)
    LOGS_DIR: Path = Path("logs")
    FEATURES_INTERVAL_S: float = Field(10.0, ge=0)
    # features_api's demo loop (a sample every FEATURES_INTERVAL_S); off, only the routes publish.
    FEATURES_LOOP: bool = True
    FEATURES_SEED: int | None = None
    PLOT_INTERVAL_S: float = Field(10.0, gt=0)
    MODEL_PATH: Path = Path("services/model_api/myfile.pkl")
    # Load a model file whose sha256 does not match its metadata (or that has none). Unpickling
    # runs code: set it only for a file you trust.
    MODEL_ALLOW_UNVERIFIED: bool = False
    HTTP_HOST: str = "127.0.0.1"
    FEATURES_PORT: Port = 8001
    MODEL_PORT: Port = 8002
    METRIC_PORT: Port = 8003
    PLOT_PORT: Port = 8004
    METRIC_API_URL: MetricApiUrls = "http://localhost:8003"
    # The join split by id into METRIC_SHARDS shards (docs/cluster.md, "The sharded join"): every
    # service must have the same METRIC_SHARDS; a metric_api owns shard METRIC_SHARD (0-based).
    METRIC_SHARDS: int = Field(1, ge=1, le=MAX_SHARDS)
    METRIC_SHARD: int = Field(0, ge=0)
    # plot_api: where it finds model_api's GET /drift for the dashboard's drift panel and chart.
    MODEL_API_URL: AnyHttpUrl = AnyHttpUrl("http://localhost:8002")
    # Unacked messages each consumer may hold; RabbitMQ suggests 100-300 per consumer.
    PREFETCH: int = Field(200, ge=1, le=65535)
    # A half whose partner has not come within this time is counted an orphan (and listed in
    # orphans.csv); it stays held, so a partner that comes later still makes its row.
    ORPHAN_TTL_S: float = Field(3600.0, gt=0)
    # metric_api's state is bounded by these (docs/guarantees.md, "How long the state remembers"): a
    # half still without its partner after HALF_RETENTION_S (3 days) leaves for expired_halves.log (its
    # id remembered as long again); a written id is remembered WRITTEN_HORIZON_S (7 days) for the
    # exactly-once check.
    HALF_RETENTION_S: float = Field(3 * 86400.0, gt=0)
    WRITTEN_HORIZON_S: float = Field(7 * 86400.0, gt=0)
    # metric_api: once a batch leaves metric_log.csv over this many bytes, the file is renamed
    # metric_log.<generation>.csv and a new one begun (docs/guarantees.md, "Rotation by size"); 0 never.
    METRIC_LOG_MAX_BYTES: int = Field(0, ge=0)
    # The demo's labels reach y_true this much later, waiting on the broker: seconds, or a
    # distribution (exp:MEAN, uniform:LOW:HIGH); services/common/delay.py.
    LABEL_DELAY_S: DelaySpec = "0"
    # model_api: publish every prediction served over HTTP to y_pred (off: e.g. for load tests).
    MONITOR_HTTP_PREDICTIONS: bool = True
    PUBLISH_TIMEOUT_S: float = Field(10.0, gt=0)
    # A connection that stops answering is given up after about 3 heartbeats, then remade.
    AMQP_HEARTBEAT_S: int = Field(5, ge=1, le=600)
    # metric_api's MAE alert (docs/monitoring.md, "The MAE alert"): cusum, a change detector calibrated
    # from the model's reference errors; or threshold, raised while the last_100 MAE is above MAE_ALERT
    # (the default when only MAE_ALERT is set). Each change is POSTed to ALERT_WEBHOOK_URL.
    MAE_DETECTOR: Literal["cusum", "threshold"] = "cusum"
    MAE_ALERT: float | None = Field(None, ge=0, allow_inf_nan=False)
    ALERT_WEBHOOK_URL: AnyHttpUrl | None = None
    # metric_api: the constant predictor's value for baseline_mae/skill; by default the
    # training-set mean of y from the model's sidecar (<MODEL_PATH>.json, target_mean).
    BASELINE_MEAN: float | None = Field(None, allow_inf_nan=False)
    # model_api: its drift window holds the last DRIFT_WINDOW_SIZE samples it saw, of the last
    # DRIFT_WINDOW_S seconds (docs/monitoring.md, "Drift and data quality").
    DRIFT_WINDOW_SIZE: int = Field(300, ge=30, le=100_000)  # below 30 samples a window is not judged
    DRIFT_WINDOW_S: float = Field(3600.0, gt=0, allow_inf_nan=False)
    # HTTP: with a token set, every route that changes state asks for it (docs/operations.md, "Who may change state").
    API_TOKEN: ApiToken | None = None
    # The largest request body any route takes; a larger one is answered 413 before it is read. 16 MiB
    # holds the largest requests the routes take: 10,000 labels with 64-character ids (about 1 MB), and
    # 10,000 predictions from elsewhere with their features (about 1 KB each with 50 features).
    HTTP_BODY_MAX_BYTES: int = Field(16 << 20, ge=1024, le=1 << 30)
    # Sane bounds on the numbers of a sample, on the queues and over HTTP alike: a value beyond them is
    # refused (the DLQ, or a 422) before it reaches a model, the CSV or the statistics. The diabetes
    # features are within ±0.3 and its target within 25..346; register says when a reference holds more.
    FEATURE_ABS_MAX: float = Field(1e12, gt=0, le=1e100, allow_inf_nan=False)
    TARGET_ABS_MAX: float = Field(1e12, gt=0, le=1e100, allow_inf_nan=False)
    # Segments (docs/monitoring.md, "Segments"): the tag keys and categorical features whose values are
    # segments; per key at most SEGMENT_VALUES_MAX values tracked (the most frequent), the rest in "other".
    SEGMENT_KEYS: str = Field("", max_length=2000)
    SEGMENT_VALUES_MAX: int = Field(50, ge=1, le=1000)
    # The segment alert: a segment's last_100 MAE above the global reference MAE by this factor, once it
    # has SEGMENT_ALERT_MIN_ROWS rows (docs/monitoring.md, "The segment alert").
    SEGMENT_ALERT_FACTOR: float = Field(1.5, gt=1, allow_inf_nan=False)
    SEGMENT_ALERT_MIN_ROWS: int = Field(50, ge=1)
    # The error by prediction time: buckets of TIME_BUCKET_S seconds; TIME_BUCKETS_KEPT newest kept.
    TIME_BUCKET_S: float = Field(3600.0, ge=1, le=31 * 86400, allow_inf_nan=False)
    TIME_BUCKETS_KEPT: int = Field(168, ge=1, le=10_000)
    # metric_api: the percentiles of a population (all rows, a model version's; segments and time buckets
    # at most PART_EXACT_ROWS) are exact up to this many rows, then approximate (docs/monitoring.md,
    # "How it is computed"); see ALL_EXACT_ROWS above for why 1,000,000.
    ALL_EXACT_ROWS: int = Field(ALL_EXACT_ROWS, ge=1)
    # The parts of the AMQP fast path (services/common/amqp/fastpath, on aiormq internals) turned off in this
    # process, comma-separated (publish, deliveries, frames; all): each then takes aiormq's
    # public path, correct and slower. For measuring what a part buys (python -m bench.fastpath), and an
    # escape hatch when a part is suspected of a fault (docs/operations.md, "Settings").
    FASTPATH_OFF: FastpathOff = Field("", max_length=200)

    @model_validator(mode="after")
    def _segment_keys_valid(self) -> "Settings":
        parse_segment_keys(self.SEGMENT_KEYS)  # a ValueError naming SEGMENT_KEYS and the key
        return self

    @model_validator(mode="after")
    def _shard_within_shards(self) -> "Settings":
        if self.METRIC_SHARD >= self.METRIC_SHARDS:
            raise ValueError(
                f"METRIC_SHARD={self.METRIC_SHARD} is not a shard of METRIC_SHARDS={self.METRIC_SHARDS}: "
                f"the shards are numbered 0 to {self.METRIC_SHARDS - 1}"
            )
        return self

    @property
    def fastpath_off(self) -> frozenset[FastpathPart]:
        """The fastpath parts FASTPATH_OFF turns off."""
        return parse_fastpath_off(self.FASTPATH_OFF)

    @property
    def segment_keys(self) -> tuple[str, ...]:
        return parse_segment_keys(self.SEGMENT_KEYS)

    @property
    def mae_detector(self) -> Literal["cusum", "threshold"]:
        """MAE_DETECTOR; threshold when only MAE_ALERT is set (as before there was a choice)."""
        if "MAE_DETECTOR" not in self.model_fields_set and self.MAE_ALERT is not None:
            return "threshold"
        return self.MAE_DETECTOR

    @property
    def metric_apis(self) -> tuple[AnyHttpUrl, ...]:
        """The metric_api's of METRIC_API_URL: one, or one per shard."""
        return parse_metric_apis(self.METRIC_API_URL)

    @property
    def brokers(self) -> tuple[Url, ...]:
        """The brokers of AMQP_URL, in the order they are tried."""
        return parse_brokers(self.AMQP_URL)

    def label_delay(self) -> LabelDelay:
        return LabelDelay.parse(self.LABEL_DELAY_S)

    def queue(self, base: str) -> str:
        """The broker name of one of the system's queues, with QUEUE_PREFIX applied."""
        return f"{self.QUEUE_PREFIX}{base}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
