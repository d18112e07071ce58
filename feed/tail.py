"""`feed tail`: read the events topic and print each event readably."""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException

from feed.settings import Settings


def tail(
    settings: Settings,
    *,
    from_beginning: bool,
    album: str | None,
    asset: str | None,
    limit: int,
    idle_timeout: float,
    as_json: bool,
    stop: threading.Event,
) -> int:
    """Print events until stopped, ``limit`` events, or ``idle_timeout`` seconds of quiet."""
    k = settings.kafka
    topics = (
        [f"{k.topic}.{t}" for t in ("link_added", "link_updated", "link_removed")]
        if k.topic_per_type
        else [k.topic]
    )
    consumer = Consumer(
        {
            "bootstrap.servers": k.bootstrap_servers,
            **k.config,
            "group.id": f"feed-tail-{uuid.uuid4()}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        },
        logger=logging.getLogger("feed.librdkafka"),
    )
    problem = _check_topics(consumer, topics, k.bootstrap_servers)
    if problem:
        consumer.close()
        print(f"feed tail: {problem}", file=sys.stderr)
        return 6
    start = OFFSET_BEGINNING if from_beginning else OFFSET_END

    def on_assign(c: Any, partitions: list[Any]) -> None:
        for p in partitions:
            p.offset = start
        c.assign(partitions)

    consumer.subscribe(topics, on_assign=on_assign)
    shown = 0
    quiet_since = time.monotonic()
    try:
        while not stop.is_set():
            msg = consumer.poll(0.5)
            if msg is None:
                if idle_timeout and time.monotonic() - quiet_since > idle_timeout:
                    break
                continue
            error, value = msg.error(), msg.value()
            if error is not None or value is None:
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    print(f"feed tail: {error}", file=sys.stderr)
                continue
            quiet_since = time.monotonic()
            doc = orjson.loads(value)
            link = doc.get("link", {})
            if album and link.get("album_id") != album:
                continue
            if asset and link.get("asset_id") != asset:
                continue
            where = f"p{msg.partition()}@{msg.offset()}"
            print(value.decode() if as_json else _line(doc, where), flush=True)
            shown += 1
            if limit and shown >= limit:
                break
    finally:
        consumer.close()
    return 0


def _check_topics(consumer: Any, topics: list[str], bootstrap: str) -> str | None:
    """Why tailing cannot start (broker unreachable, topic missing), or None."""
    try:
        known = consumer.list_topics(timeout=10).topics
    except KafkaException as exc:
        return (
            f"cannot reach Kafka at {bootstrap} ({exc}); check FEED_KAFKA__BOOTSTRAP_SERVERS"
            " (scripts/kafka-local bootstrap prints the local broker's address)"
        )
    missing = [t for t in topics if t not in known]
    if missing:
        return (
            f"topic {', '.join(missing)} does not exist yet; set FEED_KAFKA__TOPIC to the "
            "publisher's topic, or wait for its first walk"
        )
    return None


def _line(doc: dict[str, Any], where: str) -> str:
    link = doc["link"]
    sign = {"link_added": "+", "link_updated": "~", "link_removed": "-"}.get(doc["type"], "=")
    line = (
        f"{doc['detected_at'][:19]}Z {sign} {doc['type']:<13} {link['id']}  "
        f"album={link['album_id']} asset={link['asset_id']} "
        f"updated_at={link['updated_at']}  [{where} walk {doc['source']['walk']}]"
    )
    previous = doc.get("previous")
    if previous and previous.get("updated_at") != link["updated_at"]:
        line += f"  (was {previous['updated_at']})"
    return line
