"""A small command client for the tests: send, assert ok, and read back the resource over FHIR."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict
from nats.aio.client import Client as NatsClient

from handlers.registry import standard_commands
from service.client import envelope, send_command


class Caller:
    """One tenant's clinician sending commands and reading FHIR, as another service would."""

    transport = "nats"

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


class RestCaller(Caller):
    """The same caller over the REST write API (CONTRACT §9): the route of each command, its path
    parameters out of the data, `If-Match` for the version; the answer turned back into a reply's shape,
    so one test can assert the same rules over both transports."""

    transport = "http"

    async def send(
        self,
        command: str,
        data: dict[str, Any],
        version: int | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        status, headers, body = await self.request(command, data, version, idempotency_key=idempotency_key)
        return reply_of(status, headers, body)

    async def request(
        self,
        command: str,
        data: dict[str, Any],
        version: int | None = None,
        *,
        idempotency_key: str | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> tuple[int, Mapping[str, str], dict[str, Any]]:
        route = standard_commands()[command].route
        rest = dict(data)
        path = route.path.format(**{field: rest.pop(field) for field in route.path_fields})
        body = rest.get(route.body_field, {}) if route.body_field else rest
        headers = {"Authorization": f"Bearer {self.token}"} | (extra_headers or {})
        if version is not None:
            headers["If-Match"] = f'W/"{version}"'
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        async with (
            aiohttp.ClientSession() as http,
            http.request(
                route.method,
                self.http_url + path,
                headers=headers,
                data=orjson.dumps(body) if route.has_body else None,
            ) as response,
        ):
            return response.status, CIMultiDict(response.headers), orjson.loads(await response.read())


def reply_of(status: int, headers: Mapping[str, str], body: dict[str, Any]) -> dict[str, Any]:
    """An HTTP answer in CONTRACT §3's reply shape."""
    if status < 300:
        return {"command_id": headers.get("Idempotency-Key"), "ok": True, "status": status, "result": body}
    error = {"code": body["code"], "message": body.get("detail", "")}
    if "details" in body:
        error["details"] = body["details"]
    return {"command_id": body["command_id"], "ok": False, "status": status, "error": error}
