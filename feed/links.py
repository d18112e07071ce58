"""Link records and the pages that carry them, validated.

A link is the junction between an album and an asset. Timestamps are kept as one
canonical text form, ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC, so that two spellings of
the same instant compare equal and the snapshot can compare them as strings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
)

from feed.errors import PageFormatError

log = logging.getLogger(__name__)


def canonical_time(value: Any) -> str:
    """Parse an ISO-8601 timestamp into the canonical UTC form.

    A timestamp without a zone is read as UTC; the page parser reports and warns about it.
    """
    return _fast_canonical(value) or _canonical(_moment(value))


def _moment(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("not an ISO-8601 date-time") from None
    raise ValueError("not an ISO-8601 date-time")


def _fast_canonical(value: Any) -> str | None:
    """The canonical form of the two spellings the upstream uses, without formatting.

    ``...:SSZ`` and ``...:SS.ffffffZ`` only need a suffix; ``fromisoformat`` still
    checks that they are real instants. Anything else takes the general path.
    """
    if not isinstance(value, str) or not value.endswith("Z"):
        return None
    if len(value) == 20:
        canonical = value[:19] + ".000000Z"
    elif len(value) == 27 and value[19] == ".":
        canonical = value
    else:
        return None
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return None
    return canonical


def _canonical(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _timestamp_field(value: Any, info: ValidationInfo) -> str:
    # ``info`` must stay a required argument: pydantic hands it only to validators whose
    # signature demands it, and an optional one silently received None.
    fast = _fast_canonical(value)
    if fast is not None:
        return fast
    moment = _moment(value)
    if moment.tzinfo is None and isinstance(info.context, dict):
        link_id = info.data.get("id", "?")
        info.context.setdefault("naive", []).append(f"{link_id} {info.field_name}={value}")
    return _canonical(moment)


Timestamp = Annotated[str, BeforeValidator(_timestamp_field)]
NonEmpty = Annotated[str, Field(min_length=1)]


class Link(BaseModel):
    """One album-asset link as the upstream reports it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: NonEmpty
    album_id: NonEmpty
    asset_id: NonEmpty
    created_at: Timestamp
    updated_at: Timestamp

    def as_row(self) -> tuple[str, str, str, str, str]:
        return (self.id, self.album_id, self.asset_id, self.created_at, self.updated_at)


_LINKS = TypeAdapter(list[Link])
_LINK = TypeAdapter(Link)


@dataclass(frozen=True)
class RowRejection:
    """A row that did not validate: set aside, counted and reported, never dropped."""

    link_id: str | None
    field: str
    value: str
    reason: str
    raw: Any

    def describe(self) -> str:
        who = repr(self.link_id) if self.link_id else "a row without a usable id"
        return f"{who}: field {self.field!r} = {self.value}: {self.reason}"


@dataclass
class ParsedPage:
    """The validated content of one page."""

    links: list[Link]
    rejected: list[RowRejection]
    has_more: bool
    row_count: int
    last_id: str | None
    # One "<link id> <field>=<value>" entry per timestamp without a zone (read as UTC).
    naive_timestamps: list[str] = field(default_factory=list)


def parse_page(body: bytes) -> ParsedPage:
    """Turn a response body into a page, or raise PageFormatError if it is not one."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PageFormatError(
            f"the page body is not JSON ({exc}); {len(body)} bytes, starting {body[:60]!r}"
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise PageFormatError(
            f"the page body is JSON but not a page: expected an object with a `data` list, "
            f"got {_shape(doc)}"
        )
    has_more = doc.get("has_more")
    if not isinstance(has_more, bool):
        raise PageFormatError(f"the page body has no boolean `has_more` (found {has_more!r})")
    rows: list[Any] = doc["data"]
    context: dict[str, list[str]] = {}
    try:
        links = _LINKS.validate_python(rows, context=context)
        rejected: list[RowRejection] = []
    except ValidationError:
        # A fresh context: the failed pass may already have noted some naive stamps.
        context = {}
        links, rejected = _validate_one_by_one(rows, context)
    naive = context.get("naive", [])
    if naive:
        log.warning(
            "%d timestamp(s) without a zone, read as UTC: %s",
            len(naive),
            "; ".join(naive[:5]),
        )
    last = rows[-1] if rows else None
    last_id = last.get("id") if isinstance(last, dict) else None
    return ParsedPage(
        links=links,
        rejected=rejected,
        has_more=has_more,
        row_count=len(rows),
        last_id=last_id if isinstance(last_id, str) and last_id else None,
        naive_timestamps=naive,
    )


def parse_link(raw: Any) -> Link:
    return _LINK.validate_python(raw)


def _validate_one_by_one(
    rows: list[Any], context: dict[str, list[str]]
) -> tuple[list[Link], list[RowRejection]]:
    links: list[Link] = []
    rejected: list[RowRejection] = []
    for raw in rows:
        # Per row, so that a rejected row's stamps are not reported as read.
        row_context: dict[str, list[str]] = {}
        try:
            links.append(_LINK.validate_python(raw, context=row_context))
        except ValidationError as exc:
            rejected.append(_rejection(raw, exc))
            continue
        context.setdefault("naive", []).extend(row_context.get("naive", []))
    return links, rejected


def _rejection(raw: Any, exc: ValidationError) -> RowRejection:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(row)"
    link_id = raw.get("id") if isinstance(raw, dict) else None
    # For a missing field pydantic's "input" is the whole row; say what is wrong instead.
    value = "(missing)" if first["type"] == "missing" else repr(first.get("input"))
    if len(value) > 120:
        value = value[:117] + "..."
    return RowRejection(
        link_id=link_id if isinstance(link_id, str) and link_id else None,
        field=where,
        value=value,
        reason=first["msg"],
        raw=raw,
    )


def _shape(doc: Any) -> str:
    if isinstance(doc, dict):
        return "an object with keys " + ", ".join(sorted(map(str, doc))[:8])
    return type(doc).__name__
