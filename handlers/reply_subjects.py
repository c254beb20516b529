"""Where the service may publish a reply: a caller's inbox, and nothing else.

A reply carries caller-chosen text (the command id, the correlation id). Published wherever `reply_to`
points, it would land in another tenant's event stream, the audit stream, an upstream service's request
subject or the JetStream API. So replies go only to inbox prefixes (`_INBOX.` by default, the inboxes
nats-py and FastStream make; more by `CAREPLAN_REPLY_SUBJECT_PREFIXES`), never under a namespace the
platform owns, whatever is configured.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_REPLY_PREFIXES = ("_INBOX",)
MAX_REPLY_SUBJECT = 256
# Namespaces no reply may enter: our own subjects (commands, queries, events, audit, dead letters) and the
# server's ($JS, $SYS, $KV, $O, … all begin with `$`).
RESERVED_PREFIXES = ("careplan",)
_SUBJECT_TOKEN = re.compile(r"[!-~]+")  # printable ASCII, no whitespace


class UnsafeReplyPrefix(ValueError):
    """A configured reply prefix that would let replies into a namespace the platform owns."""


def is_subject(subject: str) -> bool:
    """A literal subject a message can be published to: short (a long one breaks nats-server's control
    line and costs us the connection), printable ASCII tokens, none empty, no wildcards."""
    if not subject or len(subject) > MAX_REPLY_SUBJECT:
        return False
    return all(_SUBJECT_TOKEN.fullmatch(t) and t not in ("*", ">") for t in subject.split("."))


@dataclass(frozen=True, slots=True)
class ReplySubjects:
    """The reply rule: `refusal(subject)` says why a reply may not go there, or None when it may."""

    prefixes: tuple[tuple[str, ...], ...]
    upstream: frozenset[str]

    @classmethod
    def allowing(
        cls, prefixes: Iterable[str] = DEFAULT_REPLY_PREFIXES, upstream: Iterable[str] = ()
    ) -> ReplySubjects:
        """Prefixes as `_INBOX`, `_INBOX.` or `_INBOX.>` alike; UnsafeReplyPrefix for one that reaches into
        a reserved namespace or an upstream subject."""
        upstream_set = frozenset(upstream)
        tokens: list[tuple[str, ...]] = []
        for raw in prefixes:
            prefix = raw.strip().removesuffix(">").removesuffix(".")
            if not prefix or not is_subject(prefix):
                raise UnsafeReplyPrefix(f"reply prefix {raw!r} is not a subject prefix")
            if _reserved(prefix) or any(s == prefix or s.startswith(prefix + ".") for s in upstream_set):
                raise UnsafeReplyPrefix(f"reply prefix {raw!r} reaches subjects the platform owns")
            tokens.append(tuple(prefix.split(".")))
        return cls(tuple(tokens), upstream_set)

    def refusal(self, subject: str) -> str | None:
        if not is_subject(subject):
            return "not a subject"
        if _reserved(subject) or subject in self.upstream:
            return "a platform subject"
        parts = tuple(subject.split("."))
        if not any(len(parts) > len(p) and parts[: len(p)] == p for p in self.prefixes):
            return "not an inbox"
        return None


def _reserved(subject: str) -> bool:
    first = subject.split(".", 1)[0]
    return first.startswith("$") or first in RESERVED_PREFIXES
