"""Compare what a walk saw with the snapshot, page by page, and name each change.

- ``link_added``: an id the snapshot does not hold.
- ``link_updated``: a known id whose album, asset, ``created_at`` or ``updated_at``
  differs; the change carries the previous values.
- ``link_removed``: decided elsewhere (``feed.engine``), only after a complete walk and
  an ``ids`` lookup that confirms the link is gone.

A row seen twice in one walk yields at most one event: the second sighting finds the
snapshot already equal to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from feed.events import Change, LinkRow
from feed.links import Link
from feed.store import SnapshotStore, WalkState


@dataclass
class PageDiff:
    changes: list[Change] = field(default_factory=list)
    duplicates: int = 0


def diff_page(store: SnapshotStore, walk: WalkState, links: Sequence[Link]) -> PageDiff:
    """Apply one page to the snapshot (inside the caller's transaction); return its changes.

    Rows the walk itself added (row id above ``walk.base_rid``) count as seen without a
    bit; seeing one of them again is a duplicate like any other.
    """
    seen = walk.seen
    result = PageDiff()
    latest: dict[str, LinkRow] = {}
    for link in links:
        if link.id in latest:
            result.duplicates += 1
        latest[link.id] = link.as_row()
    if not latest:
        return result

    known = store.get_many(list(latest))
    added: list[LinkRow] = []
    updated: list[LinkRow] = []
    for link_id, row in latest.items():
        old = known.get(link_id)
        if old is None:
            added.append(row)
            continue
        rid = old[0]
        if rid > walk.base_rid or rid in seen:
            result.duplicates += 1
        else:
            seen.add(rid)
        previous: LinkRow = old[1:]
        if previous != row:
            updated.append(row)
            result.changes.append(Change("link_updated", row, previous))

    store.insert_links(added)  # above the walk's base row id: seen without a bit
    result.changes.extend(Change("link_added", row) for row in added)
    if updated:
        store.update_links(updated)
    return result


def diff_confirmed(
    store: SnapshotStore,
    candidates: Sequence[LinkRow],
    still_there: dict[str, Link | None],
) -> list[Change]:
    """Turn removal candidates into changes, given which of them an id lookup still found.

    A candidate the lookup found was missed by the walk (it moved under the cursor): it
    is not removed, and it is an update if it changed. One found in a row that does not
    validate (None) is left as it is: unreadable is not removed.
    """
    changes: list[Change] = []
    gone: list[str] = []
    for old in candidates:
        if old[0] not in still_there:
            changes.append(Change("link_removed", old))
            gone.append(old[0])
            continue
        current = still_there[old[0]]
        if current is None:
            continue
        row = current.as_row()
        if row != old:
            store.update_links([row])
            changes.append(Change("link_updated", row, old))
    store.delete_links(gone)
    return changes
