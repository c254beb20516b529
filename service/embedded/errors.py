"""The one error of the embedded servers, so callers catch a failed start the same way for both."""

from __future__ import annotations


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started or found; the message carries its log tail."""
