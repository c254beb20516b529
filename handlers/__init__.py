"""Use cases (one function per command) and the thin transport adapters that call them."""
