"""Which `reply_to` values a reply may be published to: a caller's inbox only. A subject that is not one
must not cost the service its NATS connection (a long one breaks the server's control line), and no reply
may land on a subject the platform owns (another tenant's events, the audit stream, an upstream service's
requests, the JetStream API)."""

from __future__ import annotations

import pytest

from handlers.reply_subjects import MAX_REPLY_SUBJECT, ReplySubjects, UnsafeReplyPrefix

UPSTREAM = ("registration.patient.get", "scheduling.encounter.get")
DEFAULT = ReplySubjects.allowing(upstream=UPSTREAM)


@pytest.mark.parametrize(
    "subject",
    ["_INBOX.abc123.1", "_INBOX.x", "_INBOX." + "a" * (MAX_REPLY_SUBJECT - 7), "_INBOX.a!b~c"],
)
def test_inboxes_take_replies(subject: str) -> None:
    assert DEFAULT.refusal(subject) is None


@pytest.mark.parametrize(
    ("subject", "reason"),
    [
        ("careplan.audit.t2", "a platform subject"),
        ("careplan.evt.t2.careplan.created", "a platform subject"),
        ("careplan.cmd.careplan.create", "a platform subject"),
        ("careplan.dlq.goal.add", "a platform subject"),
        ("careplan.query.command", "a platform subject"),
        ("$JS.API.STREAM.PURGE.CAREPLAN_EVENTS", "a platform subject"),
        ("$JS.ACK.s.c.1.2.3.4.5", "a platform subject"),
        ("$SYS.REQ.SERVER.PING", "a platform subject"),
        ("$KV.bucket.key", "a platform subject"),
        ("registration.patient.get", "a platform subject"),
        ("replies.svc-a.7f3e", "not an inbox"),
        ("_INBOX", "not an inbox"),  # the prefix itself is no inbox
        ("_INBOXES.x", "not an inbox"),  # prefixes match whole tokens
        ("x", "not an inbox"),
        ("_INBOX." + "a" * MAX_REPLY_SUBJECT, "not a subject"),
        ("has space", "not a subject"),
        ("tab\there", "not a subject"),
        ("_INBOX.line\nbreak", "not a subject"),
        ("_INBOX..b", "not a subject"),
        ("_INBOX.a.", "not a subject"),
        ("_INBOX.*", "not a subject"),
        ("_INBOX.>", "not a subject"),
        ("_INBOX.réponse", "not a subject"),
        ("_INBOX.nul\x00", "not a subject"),
        ("", "not a subject"),
    ],
)
def test_everything_else_is_refused_with_its_reason(subject: str, reason: str) -> None:
    assert DEFAULT.refusal(subject) == reason


def test_more_inbox_prefixes_by_setting() -> None:
    rule = ReplySubjects.allowing(["_INBOX", "replies.svc-a.>", "_INBOX_gateway."], UPSTREAM)
    assert rule.refusal("replies.svc-a.7f3e") is None
    assert rule.refusal("_INBOX_gateway.1") is None
    assert rule.refusal("replies.svc-b.7f3e") == "not an inbox"


@pytest.mark.parametrize(
    "prefix",
    ["careplan", "careplan.evt", "$JS", "$JS.API.>", "registration", "registration.patient.get", ">", ""],
)
def test_a_prefix_into_platform_subjects_is_refused_at_start(prefix: str) -> None:
    with pytest.raises(UnsafeReplyPrefix):
        ReplySubjects.allowing([prefix], UPSTREAM)
