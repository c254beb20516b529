"""The wire: pydantic models of command envelopes, command data, replies and events."""
