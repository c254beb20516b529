"""`careplan`: migrate, serve, scheduler, dev, token, send. Each setting is also a flag (`--help`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from domain.access import PATIENT_ROLE
from service.build_info import build_info
from service.logs import configure_logging
from service.settings import Settings


class _Version(argparse.Action):
    """`--version`, read when asked: the build's commit may cost a `git` call, which no other command
    should pay for."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(build_info().line)
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    # Setting flags are accepted before or after the command (`careplan --http-port 8081 dev` or
    # `careplan dev --http-port 8081`); SUPPRESS keeps an absent flag from overwriting a given one.
    settings_flags = argparse.ArgumentParser(add_help=False)
    settings_group = settings_flags.add_argument_group(
        "settings (each also CAREPLAN_<NAME> in the environment)"
    )
    for name, field in Settings.model_fields.items():
        settings_group.add_argument(
            "--" + name.replace("_", "-"),
            dest=f"setting_{name}",
            default=argparse.SUPPRESS,
            metavar=name.upper(),
            help=f"{field.description or ''} [CAREPLAN_{name.upper()}]",
        )
    parser = argparse.ArgumentParser(
        prog="careplan",
        description="care-plan-service: care-plan commands over NATS JetStream, FHIR R4 reads over HTTP.",
        epilog="Settings come from flags, then CAREPLAN_* environment variables, then defaults.",
        parents=[settings_flags],
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print the build and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, description=help_text, parents=[settings_flags])

    command("migrate", "create or upgrade the schema, roles and grants (idempotent)")
    command("serve", "run the worker, outbox relay and HTTP app with configured URLs")
    command("scheduler", "run only the scheduler's sweeps (overdue goals, reviews due, summaries)")
    command("dev", "run everything on embedded NATS and Postgres kept in ./.careplan-dev")

    token = command("token", "mint a development JWT signed by the `careplan dev` key")
    token.add_argument("--tenant", required=True)
    token.add_argument("--role", action="append", default=[], help="repeatable; e.g. clinician")
    token.add_argument("--subject", default="dev-user")
    token.add_argument("--patient-id", default=None, help="make a SMART patient token for this patient")
    token.add_argument("--no-entitlement", action="store_true", help="omit the module entitlement")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until expiry")

    send = command("send", "send a command and print its reply")
    send.add_argument("name", help="command name, e.g. careplan.create")
    send.add_argument("body", help="the command's data as JSON, or a whole envelope {command_id, data, …}")
    send.add_argument("--token", default=None, help="JWT; default: a dev clinician token for --tenant")
    send.add_argument("--tenant", default="t1")
    send.add_argument("--expected-version", type=int, default=None)
    send.add_argument("--timeout", type=float, default=10.0)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        key.removeprefix("setting_"): value
        for key, value in vars(args).items()
        if key.startswith("setting_") and value is not None
    }
    return Settings(**overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except ValidationError as exc:
        # One line per bad setting, named as the operator wrote it, instead of a traceback.
        for error in exc.errors(include_url=False, include_input=False):
            field = str(error["loc"][0]) if error["loc"] else "settings"
            flag = "--" + field.replace("_", "-")
            print(
                f"careplan: invalid configuration: CAREPLAN_{field.upper()} ({flag}): {error['msg']}",
                file=sys.stderr,
            )
        return 2
    # `careplan dev` is for a person at a terminal: plain text unless asked otherwise; the rest log JSON.
    people = args.command in ("dev", "token", "send") and "log_format" not in settings.model_fields_set
    configure_logging(settings.log_level, "text" if people else settings.log_format)
    try:
        match args.command:
            case "migrate":
                return asyncio.run(_migrate(settings))
            case "serve":
                return asyncio.run(_serve(settings))
            case "scheduler":
                return asyncio.run(_scheduler(settings))
            case "dev":
                try:
                    from service.dev import run_dev
                except ImportError as exc:
                    print(
                        f"careplan dev needs the embedded servers: pip install '.[dev]' ({exc})",
                        file=sys.stderr,
                    )
                    return 2
                return run_dev(settings)
            case "token":
                return _token(settings, args)
            case "send":
                return asyncio.run(_send(settings, args))
    except KeyboardInterrupt:
        return 130
    return 2


async def _migrate(settings: Settings) -> int:
    from storage.migrate import migrate

    missing = [
        name
        for name, value in (
            ("CAREPLAN_ADMIN_DATABASE_URL", settings.admin_database_url),
            ("CAREPLAN_DATABASE_URL", settings.database_url),
            ("CAREPLAN_SYSTEM_DATABASE_URL", settings.system_database_url),
        )
        if not value
    ]
    if missing:
        print(f"careplan migrate: missing configuration: {', '.join(missing)}", file=sys.stderr)
        return 2
    assert settings.admin_database_url and settings.database_url and settings.system_database_url
    await migrate(settings.admin_database_url, settings.database_url, settings.system_database_url)
    print("careplan migrate: schema is up to date")
    return 0


async def _serve(settings: Settings) -> int:
    from service.runner import StartupRefused, serve_until_signalled

    try:
        return await serve_until_signalled(
            settings.model_copy(update={"upstream_mode": settings.upstream_mode or "nats"})
        )
    except StartupRefused as exc:
        print(f"careplan serve: {exc}", file=sys.stderr)
        return 2


async def _scheduler(settings: Settings) -> int:
    from service.runner import StartupRefused, schedule_until_signalled

    try:
        await schedule_until_signalled(settings)
    except StartupRefused as exc:
        print(f"careplan scheduler: {exc}", file=sys.stderr)
        return 2
    return 0


def _dev_state(settings: Settings) -> dict[str, Any]:
    path = Path(settings.dev_dir) / "dev.json"
    if not path.exists():
        raise SystemExit(f"no {path}: start `careplan dev` first (or pass --token and --nats-url)")
    state: dict[str, Any] = json.loads(path.read_text())
    return state


def _token(settings: Settings, args: argparse.Namespace) -> int:
    from service.dev_identity import ensure_dev_keys

    if PATIENT_ROLE in args.role and not args.patient_id:
        print(
            "careplan token: a patient token needs --patient-id (the service refuses one without)",
            file=sys.stderr,
        )
        return 2
    keys = ensure_dev_keys(Path(settings.dev_dir) / "keys")
    print(
        keys.mint(
            tenant_id=args.tenant,
            roles=args.role,
            entitlements=[] if args.no_entitlement else None,
            subject=args.subject,
            patient_id=args.patient_id,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            ttl_s=args.ttl,
        )
    )
    return 0


async def _send(settings: Settings, args: argparse.Namespace) -> int:
    import nats

    from service.client import envelope, send_command

    try:
        parsed = orjson.loads(args.body)
    except orjson.JSONDecodeError as exc:
        print(f"careplan send: body is not JSON: {exc}", file=sys.stderr)
        return 2
    if isinstance(parsed, dict) and "data" in parsed:
        body = {"command_id": None, **parsed}
        body["command_id"] = body["command_id"] or envelope({})["command_id"]
        if args.expected_version is not None:
            body["expected_version"] = args.expected_version
    else:
        body = envelope(parsed, expected_version=args.expected_version)
    nats_url = settings.nats_url or _dev_state(settings)["nats_url"]
    token = args.token
    if token is None:
        from service.dev_identity import ensure_dev_keys

        token = ensure_dev_keys(Path(settings.dev_dir) / "keys").mint(
            tenant_id=args.tenant,
            roles=["clinician"],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )
    nc = await nats.connect(nats_url)
    try:
        reply = await send_command(nc, args.name, body, token=token, timeout=args.timeout)
    except TimeoutError:
        print("careplan send: no reply in time (is the service running?)", file=sys.stderr)
        return 1
    finally:
        await nc.close()
    print(orjson.dumps(reply, option=orjson.OPT_INDENT_2).decode())
    return 0 if reply.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
