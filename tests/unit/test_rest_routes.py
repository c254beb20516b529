"""The REST routes resolve to their own command: a path id never swallows a literal segment of another
route (`PATCH /care-plans/enrolments` is not `careplan.update` of a plan called "enrolments")."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from aiohttp.web_urldispatcher import UrlMappingMatchInfo

from handlers.registry import standard_commands
from service.rest_api import aiohttp_path


async def _resolve(app: web.Application, method: str, path: str) -> UrlMappingMatchInfo:
    match = await app.router.resolve(make_mocked_request(method, path, app=app))
    assert isinstance(match, UrlMappingMatchInfo)
    return match


async def test_each_route_reaches_its_command_and_no_other() -> None:
    commands = standard_commands()
    paths = {spec.route.path for spec in commands.values()}
    app = web.Application()
    for name, spec in commands.items():

        async def handler(_: web.Request, name: str = name) -> web.Response:
            return web.Response(text=name)

        app.router.add_route(spec.route.method, aiohttp_path(spec.route.path, paths), handler)

    enrol = await _resolve(app, "POST", "/api/v1/care-plans/enrolments")
    assert enrol.http_exception is None
    assert await _command(enrol) == "careplan.enroll"
    refused = await _resolve(app, "PATCH", "/api/v1/care-plans/enrolments")
    assert isinstance(refused.http_exception, web.HTTPMethodNotAllowed)
    assert refused.http_exception.allowed_methods == {"POST"}
    update = await _resolve(app, "PATCH", "/api/v1/care-plans/plan-1")
    assert update.get("care_plan_id") == "plan-1"
    assert await _command(update) == "careplan.update"
    status = await _resolve(app, "POST", "/api/v1/care-plans/enrolments-2/status")
    assert status.get("care_plan_id") == "enrolments-2"  # only the literal itself is excluded


async def _command(match: UrlMappingMatchInfo) -> str | None:
    response = await match.handler(make_mocked_request("GET", "/"))
    return response.text if isinstance(response, web.Response) else None
