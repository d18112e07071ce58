"""The events feed publishes: their JSON body, their id, their key and their headers.

The body follows ``feed/schemas/link-event.v1.json``; headers follow the CloudEvents
Kafka binding in binary mode. The event id is a hash of what changed and of the walk that
found it, so an event keeps its id whichever retry or restart publishes it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from feed import __version__

SCHEMA = "gumnut.album_asset.link_event.v1"
EventType = Literal["link_added", "link_updated", "link_removed", "link_snapshot"]
KeyBy = Literal["album", "asset", "link"]

# (id, album_id, asset_id, created_at, updated_at)
LinkRow = tuple[str, str, str, str, str]


@dataclass(frozen=True)
class Change:
    """One change of one link, as the diff found it."""

    type: EventType
    link: LinkRow
    previous: LinkRow | None = None


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_id(library: str, change: Change, salt: str = "") -> str:
    """Deterministic: the same change, found by the same walk, always gets the same id.

    ``salt`` carries the walk (or the snapshot run), so that equal values found by two
    different walks, a link removed and re-added as it was, are two events.
    """
    prev = change.previous or ("", "", "", "", "")
    parts = (SCHEMA, library, change.type, *change.link, *prev[1:], salt)
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def link_doc(row: LinkRow) -> dict[str, str]:
    return {
        "id": row[0],
        "album_id": row[1],
        "asset_id": row[2],
        "created_at": row[3],
        "updated_at": row[4],
    }


def message_key(row: LinkRow, key_by: KeyBy) -> bytes:
    return {"album": row[1], "asset": row[2], "link": row[0]}[key_by].encode()


def event_body(
    library: str,
    change: Change,
    *,
    event_id_: str,
    walk: int,
    seq: int,
    detected_at: str,
    bootstrap: bool = False,
) -> bytes:
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "event_id": event_id_,
        "type": change.type,
        "library_id": library,
        "link": link_doc(change.link),
        "previous": link_doc(change.previous) if change.previous else None,
        "detected_at": detected_at,
        "source": {"walk": walk, "seq": seq, "publisher": f"feed/{__version__}"},
        "bootstrap": bootstrap,
    }
    return orjson.dumps(doc)


def cloudevent_headers(
    library: str, type_: str, ident: str, time_: str, subject: str | None
) -> list[tuple[str, bytes]]:
    """CloudEvents 1.0, Kafka protocol binding, binary content mode."""
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", ident.encode()),
        ("ce_source", f"/gumnut/libraries/{library}/album-assets".encode()),
        ("ce_type", f"ai.gumnut.album_asset.{type_}".encode()),
        ("ce_time", time_.encode()),
        ("content-type", b"application/json"),
    ]
    if subject is not None:
        headers.append(("ce_subject", subject.encode()))
    return headers


def encode_headers(headers: list[tuple[str, bytes]]) -> bytes:
    """Headers as stored in the outbox, next to the body they belong to."""
    return orjson.dumps([[name, value.decode()] for name, value in headers])


def decode_headers(stored: bytes) -> list[tuple[str, bytes]]:
    return [(name, value.encode()) for name, value in orjson.loads(stored)]


def watermark_body(library: str, walk: int, watermark: float, seq: int) -> tuple[str, bytes]:
    ident = hashlib.sha256(f"{SCHEMA}\x1fwatermark\x1f{library}\x1f{walk}".encode()).hexdigest()
    doc = {
        "schema": "gumnut.album_asset.watermark.v1",
        "event_id": ident[:32],
        "library_id": library,
        "walk": walk,
        "watermark": _iso(watermark),
        "published_at": now_iso(),
        "through_seq": seq,
    }
    return ident[:32], orjson.dumps(doc)


def dead_letter_body(
    library: str, walk: int, link_id: str | None, reason: str, detail: dict[str, Any]
) -> tuple[str, bytes]:
    basis = f"dead\x1f{library}\x1f{walk}\x1f{link_id}\x1f{reason}"
    ident = hashlib.sha256(basis.encode()).hexdigest()[:32]
    doc = {
        "schema": "gumnut.album_asset.dead_letter.v1",
        "event_id": ident,
        "library_id": library,
        "walk": walk,
        "link_id": link_id,
        "reason": reason,
        "detail": detail,
        "detected_at": now_iso(),
    }
    return ident, orjson.dumps(doc, default=repr)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
