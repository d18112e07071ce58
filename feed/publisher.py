"""Kafka: the topics, the producer, and the commit marker that ties Kafka to the outbox.

With transactions on, every batch of outbox records goes to Kafka in one transaction
together with a *commit marker*: a record on the checkpoint topic, keyed by the
transactional id, that names the last outbox sequence number in the batch. After a
crash, the last committed marker tells exactly which outbox records Kafka already
holds, so none is published twice (``docs/guarantees.md`` has the whole argument).

With transactions off, records are produced idempotently and removed from the outbox
once every delivery is confirmed; a crash in between republishes some of them, with the
same event ids.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from feed import failpoints, metrics
from feed.errors import ConfigError, ProducerFencedError, PublishError
from feed.events import decode_headers
from feed.settings import KafkaSettings
from feed.store import OutboxRecord

log = logging.getLogger(__name__)

MARKER_SCAN = 2_000  # how far back from the end of the checkpoint topic to look first


def _kafka_client(factory: Any, config: dict[str, Any], **kwargs: Any) -> Any:
    """A librdkafka client; a setting librdkafka refuses is a configuration error."""
    try:
        return factory(config, **kwargs)
    except KafkaException as exc:
        err = exc.args[0]
        if err.code() != KafkaError._INVALID_ARG:
            raise
        raise ConfigError(
            f"invalid Kafka setting: {err.str().strip()}; check FEED_KAFKA__CONFIG"
        ) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid Kafka setting: {exc}; check FEED_KAFKA__CONFIG") from None


class Publisher:
    """Owns one producer; recreates it after a fatal error."""

    def __init__(self, settings: KafkaSettings, library: str, state_id: str = "") -> None:
        self.settings = settings
        self.library = library
        # Outbox sequence numbers count within one state file: a marker written for
        # another file (one moved aside, or another publisher's) says nothing about ours.
        self.state_id = state_id
        self.transactional = settings.transactions
        self.transactional_id = settings.transactional_id or f"feed-{library}"
        try:
            self.max_message_bytes = int(settings.config.get("message.max.bytes", 1_000_000))
            float(settings.config.get("message.timeout.ms", 0))
        except (TypeError, ValueError):
            names = ("message.max.bytes", "message.timeout.ms")
            numbers = {k: settings.config[k] for k in names if k in settings.config}
            raise ConfigError(
                f"invalid FEED_KAFKA__CONFIG: these must be numbers, got {numbers!r}"
            ) from None
        self._producer: Any = None
        self._failed: list[str] = []

    # -- topics ------------------------------------------------------------------------

    def base_config(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.settings.bootstrap_servers,
            **self.settings.config,
        }

    def topics(self) -> dict[str, dict[str, str]]:
        """Every topic feed writes to, with the settings it creates it with."""
        s = self.settings
        events = (
            [
                f"{s.topic}.{t}"
                for t in ("link_added", "link_updated", "link_removed", "link_snapshot")
            ]
            if s.topic_per_type
            else [s.topic]
        )
        wanted: dict[str, dict[str, str]] = {t: {} for t in events}
        wanted[s.watermark_topic] = {}
        wanted[s.dead_letter_topic] = {}
        wanted[s.checkpoint_topic] = {"cleanup.policy": "compact", "segment.ms": "3600000"}
        return wanted

    def ensure_topics(self, timeout: float = 30.0) -> None:
        """Create missing topics if allowed; a missing topic we may not create is an error."""
        admin = _kafka_client(AdminClient, self.base_config())
        try:
            existing = set(admin.list_topics(timeout=timeout).topics)
        except KafkaException as exc:
            raise PublishError(
                f"cannot reach Kafka at {self.settings.bootstrap_servers} ({exc}); check "
                "FEED_KAFKA__BOOTSTRAP_SERVERS and that the broker runs"
            ) from None
        missing = [t for t in self.topics() if t not in existing]
        if not missing:
            return
        if not self.settings.create_topics:
            raise ConfigError(
                f"topic(s) {', '.join(missing)} do not exist and FEED_KAFKA__CREATE_TOPICS "
                "is false: create them, or let feed create them"
            )
        self._create(admin, missing)

    def _create(self, admin: Any, missing: list[str]) -> None:
        s = self.settings
        specs = [
            NewTopic(
                t,
                num_partitions=1 if t == s.checkpoint_topic else s.partitions,
                replication_factor=s.replication_factor,
                config=self.topics()[t],
            )
            for t in missing
        ]
        for topic, future in admin.create_topics(specs, operation_timeout=30).items():
            try:
                future.result(timeout=60)
                log.info("created topic %s", topic)
            except KafkaException as exc:
                if exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                raise ConfigError(
                    f"topic {topic} does not exist and could not be created ({exc}); "
                    "create it yourself or grant feed the right to"
                ) from None

    # -- producing ---------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> int:
        """Create the producer; return the last outbox seq Kafka is known to hold (0: none).

        With transactions, ``init_transactions`` first aborts whatever the previous
        incarnation left open, so the marker read afterwards is final.
        """
        self._producer = self._new_producer()
        if not self.transactional:
            return 0
        try:
            self._producer.init_transactions(timeout)
        except KafkaException as exc:
            self._producer = None
            raise PublishError(f"could not initialise Kafka transactions: {exc}") from None
        metrics.LIVENESS.broker_ok()
        return self.read_marker()

    def _new_producer(self) -> Any:
        config: dict[str, Any] = {
            "linger.ms": 20,
            "compression.type": "lz4",
            **self.base_config(),
            "enable.idempotence": True,
            "acks": "all",
        }
        if self.transactional:
            config["transactional.id"] = self.transactional_id
            config.setdefault("transaction.timeout.ms", 120_000)
        metrics.PRODUCERS.inc()
        return _kafka_client(Producer, config, logger=logging.getLogger("feed.librdkafka"))

    def publish(self, records: Sequence[OutboxRecord], walk: int) -> None:
        """Deliver ``records`` (in order) or raise PublishError; nothing in between."""
        if not records:
            return
        if self._producer is None:
            # A replaced producer: the last transaction of the old one may have
            # committed even though its commit call failed. The marker knows.
            held = self.start()
            records = [r for r in records if r.seq > held]
            if not records:
                return
        try:
            if self.transactional:
                self._publish_transaction(records, walk)
            else:
                self._publish_plain(records)
        except KafkaException as exc:
            self._handle(exc)
        metrics.LIVENESS.broker_ok()

    def _publish_transaction(self, records: Sequence[OutboxRecord], walk: int) -> None:
        p = self._producer
        p.begin_transaction()
        for n, record in enumerate(records):
            self._produce(record)
            if n == len(records) // 2 and failpoints.armed("mid_produce"):
                p.flush(10)  # let the first half reach the broker before dying
                failpoints.hit("mid_produce")
        marker = orjson.dumps(
            {"seq": records[-1].seq, "state": self.state_id, "walk": walk, "at": time.time()}
        )
        p.produce(self.settings.checkpoint_topic, marker, self.transactional_id.encode())
        failpoints.hit("before_kafka_commit")
        p.commit_transaction(self._commit_timeout())

    def _publish_plain(self, records: Sequence[OutboxRecord]) -> None:
        self._failed = []
        for n, record in enumerate(records):
            self._produce(record)
            if n == len(records) // 2 and failpoints.armed("mid_produce"):
                self._producer.flush(10)
                failpoints.hit("mid_produce")
        failpoints.hit("before_kafka_commit")  # produced, deliveries not yet confirmed
        left = self._producer.flush(self._commit_timeout())
        if left or self._failed:
            reason = self._failed[0] if self._failed else f"{left} still queued"
            raise PublishError(f"Kafka did not confirm every event ({reason})")

    def _produce(self, record: OutboxRecord) -> None:
        headers = decode_headers(record.headers)
        while True:
            try:
                self._producer.produce(
                    record.topic,
                    record.value,
                    record.key,
                    headers=headers,
                    on_delivery=None if self.transactional else self._on_delivery,
                )
                return
            except BufferError:
                # The local queue is full: let deliveries drain it rather than grow it.
                self._producer.poll(0.1)

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._failed.append(str(err))

    def _commit_timeout(self) -> float:
        return float(self.settings.config.get("message.timeout.ms", 300_000)) / 1000 + 30

    def _handle(self, exc: KafkaException) -> None:
        err = exc.args[0]
        metrics.ERRORS.labels("kafka").inc()
        if err.code() == KafkaError._FENCED or "fenced" in str(err).lower():
            self._producer = None
            raise ProducerFencedError(
                f"another publisher took over transactional id {self.transactional_id!r}; "
                "run one publisher per library"
            ) from None
        if self.transactional and err.txn_requires_abort():
            self._abort()
        elif err.fatal() or not err.retriable():
            log.warning("Kafka producer failed fatally (%s); it will be replaced", err)
            self._drop_producer()
        else:
            self._abort()
        raise PublishError(f"Kafka did not take the batch: {err}") from None

    def _abort(self) -> None:
        try:
            self._producer.abort_transaction(30)
        except KafkaException as exc:
            log.warning("aborting the Kafka transaction failed (%s); replacing the producer", exc)
            self._drop_producer()

    def _drop_producer(self) -> None:
        # A fresh producer re-runs init_transactions, which aborts anything left open.
        self._producer = None

    # -- the marker --------------------------------------------------------------------

    def read_marker(self, timeout: float = 30.0) -> int:
        """The outbox seq of the last committed marker of this transactional id (0: none)."""
        consumer = Consumer(
            {
                **self.base_config(),
                "group.id": f"feed-marker-reader-{uuid.uuid4()}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        try:
            return self._scan_markers(consumer, timeout)
        except KafkaException as exc:
            # Right after the topic was created its leader may not be elected yet.
            raise PublishError(f"cannot read the checkpoint topic yet: {exc}") from None
        finally:
            consumer.close()

    def _scan_markers(self, consumer: Any, timeout: float) -> int:
        topic = self.settings.checkpoint_topic
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            return 0
        key = self.transactional_id.encode()
        best = 0
        for partition in meta.partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout
            )
            start = max(low, high - MARKER_SCAN)
            where = TopicPartition(topic, partition)
            found = self._scan_range(consumer, where, start, high, key=key, timeout=timeout)
            if found is None and start > low:
                found = self._scan_range(consumer, where, low, high, key=key, timeout=timeout)
            best = max(best, found or 0)
        return best

    def _scan_range(
        self,
        consumer: Any,
        where: TopicPartition,
        start: int,
        high: int,
        *,
        key: bytes,
        timeout: float,
    ) -> int | None:
        if high <= start:
            return None
        topic = where.topic
        consumer.assign([TopicPartition(topic, where.partition, start)])
        found: int | None = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    break
                raise PublishError(f"cannot read the checkpoint topic {topic}: {msg.error()}")
            if msg.key() == key:
                marker = orjson.loads(msg.value() or b"{}")
                if marker.get("state") == self.state_id:
                    found = max(found or 0, int(marker["seq"]))
        else:
            raise PublishError(f"timed out reading the checkpoint topic {topic}")
        return found

    def close(self, timeout: float = 30.0) -> None:
        if self._producer is not None:
            self._producer.flush(timeout)
            self._producer = None
