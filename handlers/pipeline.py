"""One command's way through the service, transport-free: decode → authenticate → authorize →
validate → execute once (command log) → outcome. The NATS subscriber and tests drive it the same way."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from domain.access import DEFAULT_ROLE_PERMISSIONS, Principal, authorize_write
from domain.errors import DomainError, Unavailable
from handlers.answers import error_reply
from handlers.code_validation import reject_invalid_codes
from handlers.context import CommandContext
from handlers.errors import ErrorCode, Rejection, rejection_for
from handlers.log_context import note
from handlers.ports import (
    AlreadyRecorded,
    AuthenticationFailed,
    Clock,
    CommandObservation,
    CommandObserver,
    IdFactory,
    NoObserver,
    StoredOutcome,
    TokenVerifier,
    Transaction,
    TransactionFactory,
    UpstreamServices,
)
from handlers.registry import Commands, CommandSpec
from handlers.tracing import TRACER
from handlers.unit_of_work import UnitOfWork
from handlers.upstream_checks import CheckedEncounter, check_references, references_of
from schemas.commands import MAX_BODY_BYTES, MAX_JSON_DEPTH, CommandEnvelope
from schemas.replies import Reply

M = TypeVar("M", bound=BaseModel)
# A reply must fit in one NATS message (1 MiB): a body with thousands of faults lists the first ones.
MAX_REPORTED_ERRORS = 100


@dataclass(frozen=True, slots=True)
class CommandRequest:
    """One command as its transport hands it over, read once. NATS builds it from subject, headers and
    body; REST from route, headers and parsed body, after admitting the caller (`principal`)."""

    command: str  # the registry name, e.g. `careplan.create`
    envelope: bytes | Mapping[str, Any]  # CONTRACT §2's envelope: JSON (NATS) or already parsed (REST)
    authorization: str | None  # the `Authorization: Bearer <JWT>` header
    message_id: str | None = None  # the transport's id for it (Nats-Msg-Id): the reply's until the body says
    correlation_id: str | None = None
    transport: str = "nats"
    principal: Principal | None = None  # authenticated and authorized already (REST's `admit`)


class CommandProcessor:
    """Turns a command request into its final reply. Raises `domain.errors.Unavailable` when a
    dependency is down (the caller retries); every other outcome is a Reply."""

    def __init__(
        self,
        *,
        commands: Commands,
        verifier: TokenVerifier,
        transactions: TransactionFactory,
        clock: Clock,
        new_id: IdFactory,
        role_permissions: Mapping[str, frozenset[str]] = DEFAULT_ROLE_PERMISSIONS,
        upstream: UpstreamServices | None = None,
        observer: CommandObserver | None = None,
    ) -> None:
        self.commands = commands
        self._observer = observer or NoObserver()
        self._upstream = upstream  # None: ids and codes are taken as given (CAREPLAN_UPSTREAM_MODE=off)
        self._verifier = verifier
        self._transactions = transactions
        self._clock = clock
        self._new_id = new_id
        self._role_permissions = role_permissions

    async def admit(self, command: str, authorization: str | None) -> tuple[CommandSpec, Principal]:
        """Authenticate and authorize before anything else is looked at: the REST edge asks this first, so
        a caller who may not write learns that before being told how to shape the request."""
        principal = await authenticate(self._verifier, bearer_token(authorization))
        spec = self._spec(command)
        self._authorize(principal, spec)
        return spec, principal

    async def process(self, request: CommandRequest) -> Reply:
        started = time.perf_counter()
        seen = _Seen(command_id=request.message_id)
        try:
            reply = await self._process(request, seen)
        except Exception as exc:
            # No outcome: the transport retries (NATS) or answers 503/500 (HTTP).
            outcome = "unavailable" if isinstance(exc, Unavailable) else "error"
            self._observe(
                request, seen, started, outcome=outcome, status=503 if outcome == "unavailable" else 500
            )
            raise
        outcome = "ok" if reply.error is None else reply.error.code
        self._observe(request, seen, started, outcome=outcome, status=reply.status)
        return reply

    def _observe(
        self, request: CommandRequest, seen: _Seen, started: float, *, outcome: str, status: int
    ) -> None:
        self._observer.command_processed(
            CommandObservation(
                transport=request.transport,
                command=request.command if request.command in self.commands else "unknown",
                command_id=seen.command_id,
                tenant_id=seen.tenant_id,
                correlation_id=request.correlation_id,
                outcome=outcome,
                status=status,
                duration_s=time.perf_counter() - started,
                replayed=seen.replayed,
            )
        )

    def _spec(self, command: str) -> CommandSpec:
        spec = self.commands.get(command)
        if spec is None:
            raise Rejection(ErrorCode.UNKNOWN_COMMAND, f"no command {command!r}")
        return spec

    def _authorize(self, principal: Principal, spec: CommandSpec) -> None:
        try:
            authorize_write(principal, spec.permission, self._role_permissions)
        except DomainError as exc:
            raise rejection_for(exc) from exc

    async def _process(self, request: CommandRequest, seen: _Seen) -> Reply:
        command_id: str | None = request.message_id
        try:
            if isinstance(request.envelope, bytes) and len(request.envelope) > MAX_BODY_BYTES:
                raise Rejection(
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    f"body is {len(request.envelope)} bytes; the limit is {MAX_BODY_BYTES}",
                    {"limit_bytes": MAX_BODY_BYTES},
                )
            if "\x00" in (request.correlation_id or ""):
                raise Rejection(
                    ErrorCode.VALIDATION_ERROR,
                    "the correlation_id header may not contain NUL",
                    {"errors": [{"path": "headers.correlation_id", "message": "contains NUL"}]},
                )
            token = bearer_token(request.authorization)
            with TRACER.start_as_current_span("authenticate"):
                principal = request.principal or await authenticate(self._verifier, token)
            seen.tenant_id = principal.tenant_id
            note(tenant_id=principal.tenant_id)
            spec = self._spec(request.command)
            # CONTRACT §12 names it; the permission check inside is a set lookup, kept before validation
            # so a caller without the permission learns nothing of what its data would have been told.
            with TRACER.start_as_current_span("decode"):
                envelope, canonical = _parse_envelope(request.envelope)
                command_id = seen.command_id = str(envelope.command_id)
                note(command_id=command_id)
                if request.principal is None:
                    self._authorize(principal, spec)
                data = _validate(spec.data_model, envelope.data, prefix=("data",))
                reject_invalid_codes(data)
            request_hash = hashlib.sha256(spec.name.encode() + b"\0" + canonical).hexdigest()
            return await self._execute_once(
                spec, principal, token, envelope, data, request_hash, request, seen
            )
        except Rejection as rejection:
            return error_reply(command_id, rejection)

    async def _execute_once(
        self,
        spec: CommandSpec,
        principal: Principal,
        token: str,
        envelope: CommandEnvelope,
        data: BaseModel,
        request_hash: str,
        request: CommandRequest,
        seen: _Seen,
    ) -> Reply:
        checked_encounter: CheckedEncounter | None = None
        refused: DomainError | None = None
        refs = references_of(data)
        if self._upstream is not None and refs:
            # Ask the command log first: a command already answered is answered again, whatever the
            # upstream services say (or fail to say) now.
            async with self._transactions(principal.tenant_id) as peek:
                stored = await peek.find_outcome(envelope.command_id)
                plan_patient = (
                    await peek.plan_patient(refs.plan_id) if refs.plan_id and refs.encounter else None
                )
            if stored is not None:
                seen.replayed = stored.request_hash == request_hash
                return _answer_again(stored, request_hash)
            try:
                with TRACER.start_as_current_span("upstream checks"):
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
            request_hash=request_hash,
            correlation_id=request.correlation_id,
            expected_version=envelope.expected_version,
            now=self._clock(),
            new_id=self._new_id,
            upstream_checked=self._upstream is not None,
            checked_encounter=checked_encounter,
        )
        try:
            # No lookup first: the command log's key refuses a second outcome for the id at commit, and a
            # redelivery (rare) is answered from the log then.
            with TRACER.start_as_current_span("transaction", attributes={"db.system.name": "postgresql"}):
                async with self._transactions(principal.tenant_id) as transaction:
                    return await self._run_use_case(spec, data, ctx, transaction, refused)
        except AlreadyRecorded:
            # A twin delivery committed first (or this one is a redelivery after its commit): its answer.
            async with self._transactions(principal.tenant_id) as again:
                stored = await again.find_outcome(envelope.command_id)
            if stored is None:
                raise RuntimeError(f"command {envelope.command_id} is recorded yet has no outcome") from None
        seen.replayed = stored.request_hash == request_hash
        return _answer_again(stored, request_hash)

    async def _run_use_case(
        self,
        spec: CommandSpec,
        data: BaseModel,
        ctx: CommandContext,
        transaction: Transaction,
        refused: DomainError | None,
    ) -> Reply:
        uow = UnitOfWork(transaction, ctx)
        try:
            if refused is not None:
                raise refused
            await spec.execute(data, ctx, uow)
        except DomainError as exc:
            # Business rejections are final: remember them, so a redelivery gets the same answer.
            # Nothing of the use case was written: the unit of work writes only at commit.
            await uow.reject(error_reply(str(ctx.command_id), rejection_for(exc)))
        if uow.answer is None:
            raise RuntimeError(f"{spec.name} ended without committing its unit of work")
        return uow.answer


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
    return await authenticate(verifier, bearer_token(authorization_header(headers)))


def authorization_header(headers: Mapping[str, str]) -> str | None:
    return headers.get("Authorization") or headers.get("authorization")


def bearer_token(authorization: str | None) -> str:
    """The JWT of an `Authorization: Bearer <JWT>` header, or UNAUTHENTICATED."""
    scheme, _, token = (authorization or "").partition(" ")
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


def _parse_envelope(body: bytes | Mapping[str, Any]) -> tuple[CommandEnvelope, bytes]:
    """The envelope and its canonical bytes (sorted keys), which the idempotency check compares."""
    raw = parse_json_object(body) if isinstance(body, bytes) else body
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
