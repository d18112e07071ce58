"""Settings, read from ``FEED_<GROUP>__<FIELD>`` environment variables and ``.env``.

Every field is documented where it is declared; ``feed config`` and the README's
settings table are generated from these declarations (see ``settings_table``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from feed.errors import ConfigError

MAX_PAGE_LIMIT = 200
MAX_IDS_PER_LOOKUP = 100


class ApiSettings(BaseModel):
    """How to reach Gumnut's album-assets API."""

    base_url: str = Field(
        "http://127.0.0.1:8600",
        description="Base URL of the upstream; the default is the local simulator.",
    )
    api_key: SecretStr | None = Field(None, description="Bearer API key. Required; never logged.")
    library_id: str | None = Field(
        None, description="Library to follow; required when the account has several."
    )
    album_id: str | None = Field(None, description="Follow only the links of this album.")
    limit: int = Field(
        MAX_PAGE_LIMIT, ge=1, le=MAX_PAGE_LIMIT, description="Rows per page, 1 to 200."
    )
    timeout_seconds: float = Field(60.0, gt=0, description="Read timeout of one request.")
    connect_timeout_seconds: float = Field(5.0, gt=0, description="Connect timeout.")
    max_attempts: int = Field(8, ge=1, description="Attempts per request before giving up.")
    max_delay_seconds: float = Field(
        60.0, gt=0, description="Cap on one retry delay, Retry-After included."
    )
    retry_budget_seconds: float = Field(
        300.0, gt=0, description="Total time one request may spend retrying."
    )
    backoff_initial_seconds: float = Field(
        0.5, gt=0, description="First delay of the exponential backoff."
    )
    backoff_max_seconds: float = Field(
        8.0, gt=0, description="Largest delay of the exponential backoff."
    )
    requests_per_second: float = Field(
        20.0, gt=0, description="Request budget shared by every walk of the process."
    )
    concurrency: int = Field(
        1, ge=1, le=64, description="Albums walked at once (1: one sequential walk)."
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")


class StateSettings(BaseModel):
    """Where the checkpoint lives."""

    path: Path = Field(
        Path("feed-state.sqlite3"), description="SQLite file of the snapshot and cursor."
    )


class KafkaSettings(BaseModel):
    """Where and how events are published."""

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    topic: str = Field("gumnut.album-assets", description="Topic of the link events.")
    topic_per_type: bool = Field(
        False,
        description="Route each event type to `<topic>.<type>` (loses cross-type order).",
    )
    watermark_topic: str = Field(
        "", description="Topic of the watermark records; empty: `<topic>.watermarks`."
    )
    dead_letter_topic: str = Field(
        "", description="Topic of rows that became no event; empty: `<topic>.dead-letter`."
    )
    checkpoint_topic: str = Field(
        "",
        description="Compacted topic of the commit markers; empty: `<topic>.checkpoints`.",
    )
    key: Literal["album", "asset", "link"] = Field(
        "album", description="Message key: album id, asset id or link id."
    )
    transactions: bool = Field(
        True, description="Publish in Kafka transactions (exactly once for read_committed)."
    )
    transactional_id: str | None = Field(
        None,
        description="Override the transactional id (default: derived from the library).",
    )
    create_topics: bool = Field(True, description="Create missing topics at start.")
    partitions: int = Field(6, ge=1, description="Partitions of the events topic if created.")
    replication_factor: int = Field(1, ge=1, description="Replication factor if created.")
    batch_events: int = Field(
        10_000, ge=1, description="Events per checkpoint and Kafka transaction, at most."
    )
    batch_seconds: float = Field(
        2.0, gt=0, description="Seconds between checkpoints during a walk, at most."
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra librdkafka settings (JSON object): SASL, TLS, compression, linger.",
    )

    @model_validator(mode="after")
    def _topics_follow_the_events_topic(self) -> KafkaSettings:
        self.watermark_topic = self.watermark_topic or f"{self.topic}.watermarks"
        self.dead_letter_topic = self.dead_letter_topic or f"{self.topic}.dead-letter"
        self.checkpoint_topic = self.checkpoint_topic or f"{self.topic}.checkpoints"
        return self

    @field_validator("config")
    @classmethod
    def _no_overrides_of_guarantees(cls, value: dict[str, Any]) -> dict[str, Any]:
        locked = {"enable.idempotence", "acks", "transactional.id", "isolation.level"}
        clash = sorted(locked & set(value))
        if clash:
            raise ValueError(
                f"{', '.join(clash)} cannot be overridden: the delivery guarantees depend on it"
            )
        return value


class PollSettings(BaseModel):
    """How often `feed run` walks."""

    interval_seconds: float = Field(60.0, ge=0, description="Pause between two walks.")
    jitter_seconds: float = Field(5.0, ge=0, description="Random extra pause, up to this.")


class MetricsSettings(BaseModel):
    """The HTTP port of /metrics, /healthz and /readyz."""

    enabled: bool = Field(True, description="Serve metrics and health endpoints.")
    host: str = Field("127.0.0.1", description="Listen address (0.0.0.0 in containers).")
    port: int = Field(9464, ge=0, le=65535, description="Listen port (0 picks a free one).")
    ready_after_seconds: float = Field(
        300.0, gt=0, description="/readyz fails when upstream or broker were silent longer."
    )


class LogSettings(BaseModel):
    """Logging."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    format: Literal["text", "json"] = Field("text", description="`json` for log shippers.")


class Settings(BaseSettings):
    """All settings of feed."""

    model_config = SettingsConfigDict(
        env_prefix="FEED_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    api: ApiSettings = Field(default_factory=ApiSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    poll: PollSettings = Field(default_factory=PollSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log: LogSettings = Field(default_factory=LogSettings)


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning a validation failure into a readable ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    except SettingsError as exc:
        # A variable that should hold JSON (FEED_KAFKA__CONFIG) and does not.
        raise ConfigError(
            f"invalid configuration: {exc}; JSON values must be valid JSON, "
            "e.g. FEED_KAFKA__CONFIG='{\"linger.ms\": 20}'"
        ) from None


def describe_validation_error(exc: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for err in exc.errors():
        path = [str(p) for p in err["loc"]]
        env = "FEED_" + "__".join(p.upper() for p in path)
        value = err.get("input")
        shown = "<secret>" if "api_key" in path else repr(value)
        lines.append(f"  {env} = {shown}: {err['msg']}")
    return "\n".join(lines)


def masked(settings: Settings) -> dict[str, Any]:
    """The effective settings with every secret masked, for `feed config`."""
    data = settings.model_dump(mode="json")
    data["api"]["api_key"] = "**********" if settings.api.api_key else None
    data["kafka"]["config"] = {
        k: ("**********" if _looks_secret(k) else v) for k, v in settings.kafka.config.items()
    }
    return data


def _looks_secret(name: str) -> bool:
    # sasl.oauthbearer.config carries client credentials as text ("clientSecret=...").
    words = ("password", "secret", "key", "token", "credential", "jaas", "oauthbearer.config")
    return any(word in name.lower() for word in words)


_GROUPS: dict[str, type[BaseModel]] = {
    "api": ApiSettings,
    "state": StateSettings,
    "kafka": KafkaSettings,
    "poll": PollSettings,
    "metrics": MetricsSettings,
    "log": LogSettings,
}


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting, from the declarations above."""
    rows = []
    for group_name, model in _GROUPS.items():
        defaults = model()
        for name, field in model.model_fields.items():
            default = getattr(defaults, name)
            if isinstance(default, bool):
                shown = str(default).lower()
            else:
                shown = "(none)" if default in (None, {}) else str(default)
            rows.append(
                (f"FEED_{group_name.upper()}__{name.upper()}", shown, field.description or "")
            )
    return rows
