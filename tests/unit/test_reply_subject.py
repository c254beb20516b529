"""Which `reply_to` values a reply may be published to: one that is not a subject must not cost the
service its NATS connection (a long one breaks the server's control line) or keep a command un-acked."""

from __future__ import annotations

import pytest

from handlers.nats_consumer import MAX_REPLY_SUBJECT, is_reply_subject


@pytest.mark.parametrize(
    "subject",
    ["_INBOX.abc123.1", "replies.svc-a.7f3e", "x", "a" * MAX_REPLY_SUBJECT, "$JS.ACK.s.c.1.2.3.4.5", "a!b~c"],
)
def test_ordinary_inboxes_are_reply_subjects(subject: str) -> None:
    assert is_reply_subject(subject)


@pytest.mark.parametrize(
    "subject",
    [
        "a" * (MAX_REPLY_SUBJECT + 1),
        "x" * 5000,
        "has space",
        "tab\there",
        "line\nbreak",
        "a..b",
        ".a",
        "a.",
        "a.*",
        "a.>",
        "réponse",
        "nul\x00",
    ],
)
def test_what_is_not_a_subject_gets_no_reply(subject: str) -> None:
    assert not is_reply_subject(subject)
