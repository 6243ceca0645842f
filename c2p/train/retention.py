"""Keep-K (``checkpoint.keep``): which checkpoint tags a run keeps, in its run directory and in its
remote mirror alike.

One rule for both places: keep the newest ``keep`` committed tags not known damaged, the newest
one known good (verified, or written by this process) even when newer ones are not yet
verified, and every damaged one (left for the operator; a new save of its step replaces it).
Everything else that looks like a tag and is older than the newest committed tag goes: older
committed tags and uncommitted leftovers of crashed saves. A folder newer than the newest
committed tag may be a save in progress and is never touched.

Tag names are ``step_########`` (zero-padded), so their order as strings is their step order.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable


def tags_to_keep(committed: list[str], keep: int, trusted: Collection[str] = (), damaged: Collection[str] = ()) -> set[str]:
    """The tags of ``committed`` (oldest first) that stay: see the module's rule. ``keep`` >= 1."""
    if keep < 1:
        raise ValueError(f"checkpoint.keep={keep}: expected at least 1 (the newest committed tag always stays)")
    healthy = [t for t in committed if t not in damaged]
    good = [t for t in healthy if t in trusted]
    return set(healthy[-keep:]) | set(good[-1:]) | {t for t in committed if t in damaged}


def expired(present: Iterable[str], committed: list[str], kept: Collection[str]) -> list[str]:
    """Of the tag names ``present`` (committed or not), the ones to delete, oldest first: older
    than the newest committed tag and not ``kept``. Nothing when nothing is committed."""
    if not committed:
        return []
    newest = committed[-1]
    return sorted(t for t in set(present) if t < newest and t not in kept)
