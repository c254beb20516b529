"""A small command client for the tests: send, assert ok, and read back the resource over FHIR."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from nats.aio.client import Client as NatsClient

from service.client import envelope, send_command


class Caller:
    """One tenant's clinician sending commands and reading FHIR, as another service would."""

    def __init__(self, nc: NatsClient, http_url: str, token: str) -> None:
        self.nc = nc
        self.http_url = http_url
        self.token = token

    async def send(self, command: str, data: dict[str, Any], version: int | None = None) -> dict[str, Any]:
        return await send_command(
            self.nc, command, envelope(data, expected_version=version), token=self.token
        )

    async def ok(self, command: str, data: dict[str, Any], version: int | None = None) -> dict[str, Any]:
        reply = await self.send(command, data, version)
        assert reply["ok"] is True, reply
        result: dict[str, Any] = reply["result"]
        return result

    async def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{self.http_url}/fhir/{resource_type}/{resource_id}",
                headers={"Authorization": f"Bearer {self.token}"},
            ) as response,
        ):
            assert response.status == 200, await response.text()
            body: dict[str, Any] = orjson.loads(await response.read())
            return body
