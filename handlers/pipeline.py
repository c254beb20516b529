"""One command's way through the service, transport-free: decode → authenticate → authorize →
validate → execute once (command log) → outcome. The NATS subscriber and tests drive it the same way."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from domain.access import DEFAULT_ROLE_PERMISSIONS, Principal, authorize_write
from domain.errors import DomainError, Unavailable
from handlers.code_validation import reject_invalid_codes
from handlers.context import CommandContext
from handlers.errors import ErrorCode, Rejection, rejection_for
from handlers.ports import (
    AuthenticationFailed,
    Clock,
    CommandObservation,
    CommandObserver,
    IdFactory,
    NoObserver,
    StoredOutcome,
    TokenVerifier,
    UnitOfWorkFactory,
    UpstreamServices,
)
from handlers.registry import COMMANDS, CommandSpec
from handlers.upstream_checks import CheckedEncounter, check_references, references_of
from schemas.commands import COMMAND_SUBJECT_PREFIX, MAX_BODY_BYTES, MAX_JSON_DEPTH, CommandEnvelope
from schemas.fhir_validation import InvalidFhirResource
from schemas.replies import ErrorBody, Reply, ResultBody

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
# A reply must fit in one NATS message (1 MiB): a body with thousands of faults lists the first ones.
MAX_REPORTED_ERRORS = 100


@dataclass(frozen=True, slots=True)
class IncomingCommand:
    subject: str
    body: bytes
    headers: Mapping[str, str]
    transport: str = "nats"

    @property
    def command_name(self) -> str:
        return self.subject.removeprefix(COMMAND_SUBJECT_PREFIX)

    @property
    def message_id(self) -> str | None:
        return self.headers.get("Nats-Msg-Id")

    @property
    def correlation_id(self) -> str | None:
        return self.headers.get("correlation_id")


class CommandProcessor:
    """Turns an incoming command into its final reply. Raises `domain.errors.Unavailable` when a
    dependency is down (the caller retries); every other outcome is a Reply."""

    def __init__(
        self,
        *,
        verifier: TokenVerifier,
        unit_of_work: UnitOfWorkFactory,
        clock: Clock,
        new_id: IdFactory,
        role_permissions: Mapping[str, frozenset[str]] = DEFAULT_ROLE_PERMISSIONS,
        upstream: UpstreamServices | None = None,
        observer: CommandObserver | None = None,
    ) -> None:
        self._observer = observer or NoObserver()
        self._upstream = upstream  # None: ids and codes are taken as given (CAREPLAN_UPSTREAM_MODE=off)
        self._verifier = verifier
        self._unit_of_work = unit_of_work
        self._clock = clock
        self._new_id = new_id
        self._role_permissions = role_permissions

    async def admit(self, command_name: str, headers: Mapping[str, str]) -> tuple[CommandSpec, Principal]:
        """Authenticate and authorize before anything else is looked at: the REST edge asks this first, so
        a caller who may not write learns that before being told how to shape the request."""
        principal = await authenticate(self._verifier, bearer_token(headers))
        spec = COMMANDS.get(command_name)
        if spec is None:
            raise Rejection(ErrorCode.UNKNOWN_COMMAND, f"no command {command_name!r}")
        try:
            authorize_write(principal, spec.permission, self._role_permissions)
        except DomainError as exc:
            raise rejection_for(exc) from exc
        return spec, principal

    async def process(self, incoming: IncomingCommand) -> Reply:
        started = time.perf_counter()
        seen = _Seen(command_id=incoming.message_id)
        try:
            reply = await self._process(incoming, seen)
        except Exception as exc:
            # No outcome: the transport retries (NATS) or answers 503/500 (HTTP).
            outcome = "unavailable" if isinstance(exc, Unavailable) else "error"
            self._observe(
                incoming, seen, started, outcome=outcome, status=503 if outcome == "unavailable" else 500
            )
            raise
        outcome = "ok" if reply.error is None else reply.error.code
        self._observe(incoming, seen, started, outcome=outcome, status=reply.status)
        return reply

    def _observe(
        self, incoming: IncomingCommand, seen: _Seen, started: float, *, outcome: str, status: int
    ) -> None:
        name = incoming.command_name
        self._observer.command_processed(
            CommandObservation(
                transport=incoming.transport,
                command=name if name in COMMANDS else "unknown",
                command_id=seen.command_id,
                tenant_id=seen.tenant_id,
                correlation_id=incoming.correlation_id,
                outcome=outcome,
                status=status,
                duration_s=time.perf_counter() - started,
                replayed=seen.replayed,
            )
        )

    async def _process(self, incoming: IncomingCommand, seen: _Seen) -> Reply:
        command_id: str | None = incoming.message_id
        try:
            if len(incoming.body) > MAX_BODY_BYTES:
                raise Rejection(
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    f"body is {len(incoming.body)} bytes; the limit is {MAX_BODY_BYTES}",
                    {"limit_bytes": MAX_BODY_BYTES},
                )
            if "\x00" in (incoming.correlation_id or ""):
                raise Rejection(
                    ErrorCode.VALIDATION_ERROR,
                    "the correlation_id header may not contain NUL",
                    {"errors": [{"path": "headers.correlation_id", "message": "contains NUL"}]},
                )
            token = bearer_token(incoming.headers)
            principal = await authenticate(self._verifier, token)
            seen.tenant_id = principal.tenant_id
            spec = COMMANDS.get(incoming.command_name)
            if spec is None:
                raise Rejection(ErrorCode.UNKNOWN_COMMAND, f"no command {incoming.command_name!r}")
            envelope, canonical = _parse_envelope(incoming.body)
            command_id = seen.command_id = str(envelope.command_id)
            try:
                authorize_write(principal, spec.permission, self._role_permissions)
            except DomainError as exc:
                raise rejection_for(exc) from exc
            data = _validate(spec.data_model, envelope.data, prefix=("data",))
            reject_invalid_codes(data)
            request_hash = hashlib.sha256(spec.name.encode() + b"\0" + canonical).hexdigest()
            return await self._execute_once(
                spec, principal, token, envelope, data, request_hash, incoming, seen
            )
        except Rejection as rejection:
            return error_reply(command_id, rejection)
        except InvalidFhirResource:
            log.exception("rendered FHIR failed validation", extra={"command_id": command_id})
            return error_reply(command_id, Rejection(ErrorCode.INTERNAL, "internal error"))

    async def _execute_once(
        self,
        spec: CommandSpec,
        principal: Principal,
        token: str,
        envelope: CommandEnvelope,
        data: BaseModel,
        request_hash: str,
        incoming: IncomingCommand,
        seen: _Seen,
    ) -> Reply:
        checked_encounter: CheckedEncounter | None = None
        refused: DomainError | None = None
        refs = references_of(data)
        if self._upstream is not None and refs:
            # Ask the command log first: a command already answered is answered again, whatever the
            # upstream services say (or fail to say) now.
            async with self._unit_of_work(principal.tenant_id) as uow:
                stored = await uow.find_outcome(envelope.command_id)
                plan_patient = (
                    await uow.plan_patient(refs.plan_id) if refs.plan_id and refs.encounter else None
                )
            if stored is not None:
                seen.replayed = stored.request_hash == request_hash
                return _answer_again(stored, request_hash)
            try:
                checked_encounter = await check_references(
                    refs,
                    tenant_id=principal.tenant_id,
                    token=token,
                    services=self._upstream,
                    plan_patient=plan_patient,
                )
            except DomainError as exc:
                refused = exc
        ctx = CommandContext(
            principal=principal,
            command_id=envelope.command_id,
            command_type=spec.name,
            correlation_id=incoming.correlation_id,
            expected_version=envelope.expected_version,
            now=self._clock(),
            new_id=self._new_id,
            upstream_checked=self._upstream is not None,
            checked_encounter=checked_encounter,
        )
        async with self._unit_of_work(principal.tenant_id) as uow:
            await uow.lock_command(envelope.command_id)
            stored = await uow.find_outcome(envelope.command_id)
            if stored is not None:
                seen.replayed = stored.request_hash == request_hash
                return _answer_again(stored, request_hash)
            try:
                if refused is not None:
                    raise refused
                result = await spec.execute(data, ctx, uow)
                reply = Reply(
                    command_id=str(envelope.command_id),
                    ok=True,
                    status=result.status,
                    result=ResultBody(
                        resource_type=result.resource_type, id=result.resource_id, version=result.version
                    ),
                )
            except DomainError as exc:
                # Business rejections are final: remember them, so a redelivery gets the same answer. Use
                # cases decide before they write; one that wrote first has its writes rolled back here.
                if uow.has_written:
                    await uow.restart()
                    await uow.lock_command(envelope.command_id)
                reply = error_reply(str(envelope.command_id), rejection_for(exc))
            await uow.record_outcome(
                envelope.command_id,
                command_type=spec.name,
                request_hash=request_hash,
                status=reply.status,
                outcome=reply.model_dump(mode="json", exclude_none=True),
                correlation_id=incoming.correlation_id,
            )
            await uow.commit()
            return reply.at_position(uow.commit_position)


@dataclass(slots=True)
class _Seen:
    """What processing learnt about a command along the way, for its observation."""

    command_id: str | None
    tenant_id: str | None = None
    replayed: bool = False


def _answer_again(stored: StoredOutcome, request_hash: str) -> Reply:
    """A command id seen before: its stored reply, if it is the same command with the same body. The
    outcome was stored before its commit's position existed; the position now is at or after it."""
    if stored.request_hash != request_hash:
        raise Rejection(
            ErrorCode.IDEMPOTENCY_KEY_REUSED,
            "this command_id was already used with another command or body",
            {"command_type": stored.command_type},
        )
    return answer_from_log(stored)


def answer_from_log(stored: StoredOutcome) -> Reply:
    """A stored outcome as a reply again, carrying the position it was read at (CONTRACT §11)."""
    return Reply.model_validate(stored.outcome).at_position(stored.position)


async def authenticate_headers(verifier: TokenVerifier, headers: Mapping[str, str]) -> Principal:
    """The principal of a NATS message's `Authorization: Bearer <JWT>` header, or UNAUTHENTICATED."""
    return await authenticate(verifier, bearer_token(headers))


def bearer_token(headers: Mapping[str, str]) -> str:
    """The JWT of an `Authorization: Bearer <JWT>` header, or UNAUTHENTICATED."""
    authorization = headers.get("Authorization") or headers.get("authorization") or ""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Rejection(ErrorCode.UNAUTHENTICATED, "an `Authorization: Bearer <JWT>` header is required")
    return token.strip()


async def authenticate(verifier: TokenVerifier, token: str) -> Principal:
    try:
        return await verifier.verify(token)
    except AuthenticationFailed as exc:
        raise Rejection(ErrorCode.UNAUTHENTICATED, str(exc)) from exc


def parse_json_object(body: bytes) -> dict[str, Any]:
    """A body that must be one JSON object (a command envelope, a REST request), or VALIDATION_ERROR."""
    try:
        raw: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Rejection(
            ErrorCode.VALIDATION_ERROR,
            "body is not valid JSON",
            {"errors": [{"path": "", "message": str(exc)}]},
        ) from exc
    if not isinstance(raw, dict):
        raise Rejection(
            ErrorCode.VALIDATION_ERROR,
            "body must be a JSON object",
            {"errors": [{"path": "", "message": "expected an object"}]},
        )
    return raw


def _parse_envelope(body: bytes) -> tuple[CommandEnvelope, bytes]:
    """The envelope and its canonical bytes (sorted keys), which the idempotency check compares."""
    raw = parse_json_object(body)
    reject_unstorable(raw)
    envelope = _validate(CommandEnvelope, raw, prefix=())
    return envelope, orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)


def _validate(model: type[M], value: Any, *, prefix: tuple[str, ...]) -> M:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        errors = [
            {
                "path": ".".join(str(p) for p in (*prefix, *err["loc"])),
                "message": err["msg"],
                "type": err["type"],
            }
            for err in exc.errors(include_url=False, include_input=False)
        ]
        details: dict[str, Any] = {"errors": errors[:MAX_REPORTED_ERRORS]}
        if len(errors) > MAX_REPORTED_ERRORS:
            details["error_count"] = len(errors)
        raise Rejection(ErrorCode.VALIDATION_ERROR, f"{len(errors)} validation error(s)", details) from exc


def reject_unstorable(body: Any) -> None:
    """What no command may hold, whatever its schema: NUL characters (Postgres text and jsonb refuse
    them) and nesting deeper than MAX_JSON_DEPTH (the canonical re-encoding refuses past 255). Left to
    the database or the encoder, either one fails late and is retried as if transient; here the first
    one found is a VALIDATION_ERROR."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), body)]
    while stack:
        path, value = stack.pop()
        problem = None
        if len(path) > MAX_JSON_DEPTH:
            problem = f"nested deeper than {MAX_JSON_DEPTH} levels"
        elif isinstance(value, str) and "\x00" in value:
            problem = "contains NUL"
        elif isinstance(value, dict):
            stack.extend(((*path, key), child) for key, child in value.items())
            problem = next(("a field name contains NUL" for key in value if "\x00" in key), None)
        elif isinstance(value, list):
            stack.extend(((*path, index), child) for index, child in enumerate(value))
        if problem is not None:
            raise Rejection(
                ErrorCode.VALIDATION_ERROR,
                problem,
                {"errors": [{"path": ".".join(str(p) for p in path), "message": problem}]},
            )


def error_reply(command_id: str | None, rejection: Rejection) -> Reply:
    return Reply(
        command_id=command_id,
        ok=False,
        status=rejection.status,
        error=ErrorBody(code=rejection.code.value, message=rejection.message, details=rejection.details),
    )
