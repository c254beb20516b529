"""`python -m service.api_documents`: writes the documents other teams build against, from the app itself:
`docs/asyncapi.json` (commands, replies, events) and `docs/openapi.json` (the REST write API, also served at
/api/v1/openapi.json). Unit tests fail when either is stale."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from handlers.registry import standard_commands
from service.asyncapi import DOCUMENT_PATH as ASYNCAPI_PATH
from service.asyncapi import REGENERATE_COMMAND, render_asyncapi, render_json
from service.openapi import openapi_document

DOCS = ASYNCAPI_PATH.parent
OPENAPI_PATH = DOCS / "openapi.json"
__all__ = ["OPENAPI_PATH", "REGENERATE_COMMAND", "main", "render_openapi"]


def render_openapi() -> str:
    return render_json(openapi_document(standard_commands()))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=REGENERATE_COMMAND, description=__doc__)
    parser.add_argument(
        "--docs", type=Path, default=DOCS, help="directory to write to (default: %(default)s)"
    )
    docs: Path = parser.parse_args(argv).docs
    docs.mkdir(parents=True, exist_ok=True)
    for name, text in (("asyncapi.json", render_asyncapi()), ("openapi.json", render_openapi())):
        (docs / name).write_text(text, encoding="utf-8")
        print(f"wrote {docs / name}")


if __name__ == "__main__":
    main()
