"""Helpers shared by the tests: the simulator, the real local Kafka broker, settings, oracles."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from confluent_kafka import KafkaError

from feed.client import UpstreamClient
from feed.settings import ApiSettings, Settings
from feed.simulator import Library, Simulator

REPO = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT = REPO / "scripts" / "kafka-local"


# -- the upstream ------------------------------------------------------------------------


@pytest.fixture
def library() -> Library:
    return Library(links=0, albums=5, seed=7)


@pytest.fixture
def sim(library: Library) -> Iterator[Simulator]:
    with Simulator([library]) as simulator:
        yield simulator


def api_settings(sim: Simulator, **overrides: Any) -> ApiSettings:
    """Client settings for a test: fast backoff, no rate limit worth mentioning."""
    values: dict[str, Any] = {
        "base_url": sim.url,
        "api_key": sim.api_key,
        "requests_per_second": 10_000,
        "backoff_initial_seconds": 0.01,
        "backoff_max_seconds": 0.05,
        "max_attempts": 4,
        "timeout_seconds": 5,
    }
    values.update(overrides)
    return ApiSettings(**values)


@pytest.fixture
def client(sim: Simulator) -> Iterator[UpstreamClient]:
    """A client with pages of two rows: the notation of cases.md."""
    with UpstreamClient(api_settings(sim, limit=2)) as upstream:
        yield upstream


def cursors(sim: Simulator) -> list[str | None]:
    """The starting_after_id of every list request, in order (None: a first page)."""
    out: list[str | None] = []
    for raw in list(sim.requests):
        parts = urlsplit(raw)
        query = parse_qs(parts.query)
        if parts.path == "/api/album-assets" and "ids" not in query:
            out.append(query.get("starting_after_id", [None])[0])
    return out


def seed_links(library: Library, count: int) -> list[str]:
    return [library.add(f"album_asset_{n}") for n in range(1, count + 1)]


# -- Kafka -------------------------------------------------------------------------------


def kafka_cmd(*args: str, home: Path | None = None, timeout: float = 300) -> str:
    """scripts/kafka-local, for the shared broker or (``home``) a broker of one test's own."""
    env = {**os.environ, "FEED_KAFKA_HOME": str(home)} if home else None
    result = subprocess.run(
        [str(KAFKA_SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"kafka-local {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""


def private_broker(home: Path) -> Iterator[str]:
    """A broker of its own under ``home``, for tests that stop and start it."""
    address = kafka_cmd("start", home=home)
    yield address
    kafka_cmd("stop", home=home)


def walk_once(settings: Settings) -> Any:
    """One walk by a fresh publisher, closed afterwards, as `feed once` does it."""
    from feed.engine import Feed

    feed = Feed(settings)
    try:
        feed.open()
        return feed.run_walk()
    finally:
        feed.close()


@pytest.fixture(scope="session")
def kafka() -> str:
    """The bootstrap address of the local broker, started if needed (never mocked)."""
    if os.environ.get("FEED_TEST_BOOTSTRAP"):
        return os.environ["FEED_TEST_BOOTSTRAP"]
    return kafka_cmd("start")


def make_settings(
    sim: Simulator, kafka: str, tmp_path: Path, *, transactions: bool = True, **api: Any
) -> Settings:
    """Settings with topics of their own, so that tests never see each other's events."""
    tag = uuid.uuid4().hex[:10]
    return Settings(
        api=api_settings(sim, **api),
        state={"path": tmp_path / "state.sqlite3"},
        kafka={
            "bootstrap_servers": kafka,
            "topic": f"t.{tag}.links",
            "watermark_topic": f"t.{tag}.watermarks",
            "dead_letter_topic": f"t.{tag}.dead",
            "checkpoint_topic": f"t.{tag}.checkpoints",
            "transactional_id": f"feed-test-{tag}",
            "transactions": transactions,
            "partitions": 3,
            "batch_seconds": 0.2,
        },
        metrics={"enabled": False},
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The same settings as FEED_ variables, for a feed subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEED_")}
    data = settings.model_dump(mode="json")
    data["api"]["api_key"] = settings.api.api_key.get_secret_value() if settings.api.api_key else ""
    for group, fields in data.items():
        for name, value in fields.items():
            if value is None:
                continue
            text = orjson.dumps(value).decode() if isinstance(value, dict | list) else str(value)
            env[f"FEED_{group.upper()}__{name.upper()}"] = text
    return env


def consume(
    bootstrap: str,
    topic: str,
    *,
    committed_only: bool = True,
    timeout: float = 60.0,
) -> list[dict[str, Any]]:
    """Every message of ``topic`` from the beginning, as a fresh consumer sees it.

    Partitions are assigned directly and read to their end (partition EOF), so the
    answer does not depend on how long a consumer group takes to form on a new broker.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed" if committed_only else "read_uncommitted",
        }
    )
    out: list[dict[str, Any]] = []
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            return out
        partitions = sorted(meta.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(at_end) < len(partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: partitions {at_end} of {partitions} done")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                    continue
                raise RuntimeError(str(msg.error()))
            at_end.discard(msg.partition())
            doc = orjson.loads(msg.value())
            doc["_headers"] = {k: v.decode() for k, v in (msg.headers() or [])}
            doc["_key"] = msg.key().decode() if msg.key() else None
            doc["_partition"] = msg.partition()
            out.append(doc)
    finally:
        consumer.close()
    return out


def fold(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Replay link events into the set of links they describe."""
    state: dict[str, dict[str, Any]] = {}
    for event in events:
        link = event["link"]
        if event["type"] == "link_removed":
            state.pop(link["id"], None)
        else:
            state[link["id"]] = link
    return state


def truth(library: Library) -> dict[str, dict[str, Any]]:
    """The simulator's ground truth, with timestamps in feed's canonical form."""
    from feed.links import parse_link

    return {
        link_id: dict(
            zip(
                ("id", "album_id", "asset_id", "created_at", "updated_at"),
                parse_link(row).as_row(),
                strict=True,
            )
        )
        for link_id, row in library.truth().items()
    }


def run_feed(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The feed CLI as a subprocess, the way an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "feed", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
