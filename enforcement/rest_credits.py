"""Credit REST routes (stigg-api.md section 2d) over the ledger, in the SDK's shapes.

- ``POST /api/v1/credits/grants``, ``GET /api/v1/credits/grants``,
  ``POST /api/v1/credits/grants/{id}/void``
- ``POST /api/v1/credits/consumption`` (sync) and ``/consumption/async`` (up to 1000; applied
  before the answer, refusals listed per item)
- ``POST /api/v1/credits/reservations/{id}/release``
- ``GET /api/v1/credits/ledger`` (cursor pages, newest first)
- the reserving credit check (``GET .../entitlements/check?currencyId&reserveAmount``) is
  decided here too: the ledger decides and holds atomically.

Every call is scoped to the caller key's environment. Ledger refusals keep the ledger's status
and code (InsufficientCredits 400, IdempotencyConflict 409, NotFound 404, ...), with
``x-should-retry: false`` so the SDK does not re-send what cannot succeed.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from byoc_platform.api_errors import ApiError
from enforcement import rest_params as p
from enforcement.engine import WalletBalance
from enforcement.ledger import InsufficientCredits, LedgerError
from enforcement.ledger.reads import EVENT_TYPES
from enforcement.periods import iso
from enforcement.rest_entitlements import credit_body, json
from enforcement.workers import LoopMailbox, Workers

if TYPE_CHECKING:
    from enforcement.component import EnforcementComponent

MAX_ASYNC = 1000
MAX_PAGE = 1000
GRANT_FIELDS = {
    "amount",
    "currencyId",
    "customerId",
    "displayName",
    "grantType",
    "priority",
    "effectiveAt",
    "expireAt",
    "cost",
    "paymentCollectionMethod",
    "awaitPaymentConfirmation",
    "resourceId",
    "metadata",
    "comment",
    "billingInformation",
}
CONSUMPTION_FIELDS = {
    "amount",
    "currencyId",
    "customerId",
    "idempotencyKey",
    "createdAt",
    "dimensions",
    "resourceId",
}
RELEASE_FIELDS = {"consumedAmount", "currencyId", "customerId", "resourceId"}
DEFAULT_COST = {"amount": 0, "currency": "usd"}
NON_RESERVING_REASONS = {
    "CustomerNotFound",
    "CustomerIsArchived",
    "CustomerResourceNotFound",
    "EntitlementNotFound",
    "Revoked",
    "BudgetExceeded",
}


def api_error(exc: LedgerError) -> ApiError:
    return ApiError(exc.http_status, str(exc), exc.code, retryable=exc.http_status >= 500)


def _fields(body: dict[str, Any], allowed: set[str], where: str = "") -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise p.bad(f"unknown field(s) {where}{', '.join(unknown)}")


def credit_summary(wallet: WalletBalance, currency_id: str) -> dict[str, Any]:
    return {
        "currencyId": currency_id,
        "currentUsage": wallet.current_usage,
        "usageLimit": wallet.usage_limit,
        "timestamp": iso(wallet.updated_at),
    }


def _consumption_args(item: object, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise p.bad(f"{where or 'body'} must be an object")
    _fields(item, CONSUMPTION_FIELDS, where)
    args: dict[str, Any] = {
        "amount": p.amount(item.get("amount"), f"{where}amount"),
        "currency_id": p.identifier(item.get("currencyId"), f"{where}currencyId"),
        "customer_id": p.identifier(item.get("customerId"), f"{where}customerId"),
        "idempotency_key": p.identifier(item.get("idempotencyKey"), f"{where}idempotencyKey"),
        "resource_id": p.identifier(item.get("resourceId"), f"{where}resourceId", required=False),
    }
    if item.get("createdAt") is not None:
        args["created_at"] = p.time_datetime(item["createdAt"], f"{where}createdAt")
    dims = item.get("dimensions")
    if dims is not None:
        if not isinstance(dims, dict):
            raise p.bad(f"{where}dimensions must be an object")
        for key, value in dims.items():
            if isinstance(value, bool | str):
                continue
            p.number(value, f"{where}dimensions.{key}", minimum=-p.MAX_NUMBER)
        args["dimensions"] = dims
    return args


class CreditRoutes:
    def __init__(self, component: EnforcementComponent) -> None:
        self.c = component
        # Blocking work off the loop (grants, releases, refreshes). Consumptions do not use
        # them: they are submitted to the ledger's committer and come back via the mailbox.
        self._workers = Workers(16, "credits")
        self._mailbox = LoopMailbox()

    @property
    def ledger(self) -> Any:
        return self.c.credits.ledger

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            if kwargs:
                return await self._workers.run(lambda: fn(*args, **kwargs))
            return await self._workers.run(fn, *args)
        except LedgerError as exc:
            raise api_error(exc) from None

    def _known_customer(self, env: str, customer_id: str, resource_id: str | None) -> None:
        state = self.c.state.env(env)
        if customer_id not in state.customers:
            raise ApiError(404, f"customer {customer_id!r} not found", retryable=False)
        if resource_id and resource_id not in state.customer_resources(customer_id):
            raise ApiError(
                404,
                f"resource {resource_id!r} of customer {customer_id!r} not found",
                retryable=False,
            )

    def _known_wallet(self, env: str, args: dict[str, Any]) -> None:
        """A consumption names a known customer, resource and currency (else a 404 naming it;
        an unknown currency used to read as an empty wallet: InsufficientCredits)."""
        self._known_customer(env, args["customer_id"], args["resource_id"])
        if args["currency_id"] not in self.c.state.env(env).currencies:
            raise ApiError(404, f"currency {args['currency_id']!r} not found", retryable=False)

    def _refresh(
        self, env: str, customer: str, currency: str, resource: str | None
    ) -> WalletBalance:
        return self.c.credits.refresh(env, customer, currency, resource)

    # --- grants ----------------------------------------------------------------------------

    def _grant_body(self, env: str, view: Any, extras: dict | None) -> dict[str, Any]:
        body = view.to_api()
        extras = extras or {}
        body["cost"] = extras.get("cost") or DEFAULT_COST
        body["metadata"] = extras.get("metadata") or {}
        if extras.get("comment") is not None:
            body["comment"] = extras["comment"]
        return {k: v for k, v in body.items() if v is not None or k == "expireAt"}

    async def grants(self, request: Request) -> Response:
        """``/api/v1/credits/grants``: GET lists, POST creates (one route: see routes())."""
        if request.method == "POST":
            return await self.create_grant(request)
        return await self.list_grants(request)

    async def create_grant(self, request: Request) -> Response:
        env = p.environment_of(request)
        body = await p.json_object(request)
        _fields(body, GRANT_FIELDS)
        customer_id = p.identifier(body.get("customerId"), "customerId")
        currency_id = p.identifier(body.get("currencyId"), "currencyId")
        resource_id = p.identifier(body.get("resourceId"), "resourceId", required=False)
        display_name = body.get("displayName")
        if not isinstance(display_name, str):
            raise p.bad("displayName is required (a string)")
        grant_type = body.get("grantType")
        if grant_type not in ("PAID", "PROMOTIONAL"):
            raise p.bad("grantType must be PAID or PROMOTIONAL")
        amount = p.amount(body.get("amount"), "amount")
        priority = body.get("priority")
        if priority is None:  # absent or null: the default
            priority = 50
        if isinstance(priority, float) and priority.is_integer():
            priority = int(priority)  # JSON 5.0 is the integer 5
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 100:
            raise p.bad("priority must be an integer from 0 to 100")
        method = body.get("paymentCollectionMethod") or "NONE"
        if method not in ("CHARGE", "INVOICE", "NONE"):
            raise p.bad("paymentCollectionMethod must be CHARGE, INVOICE or NONE")
        fields: dict[str, Any] = {
            "id": f"grant-{uuid.uuid4().hex[:20]}",
            "customer_id": customer_id,
            "currency_id": currency_id,
            "amount": amount,
            "resource_id": resource_id,
            "display_name": display_name,
            "grant_type": grant_type,
            "priority": priority,
            "status": "PAYMENT_PENDING" if method == "INVOICE" else "ACTIVE",
        }
        for name, key in (("effectiveAt", "effective_at"), ("expireAt", "expire_at")):
            if body.get(name) is not None:
                fields[key] = p.time_datetime(body[name], name)
        if body.get("awaitPaymentConfirmation") is not None and not isinstance(
            body["awaitPaymentConfirmation"], bool
        ):
            raise p.bad("awaitPaymentConfirmation must be a boolean")
        if body.get("billingInformation") is not None and not isinstance(
            body["billingInformation"], dict
        ):
            raise p.bad("billingInformation must be an object")
        extras: dict[str, Any] = {}
        cost = body.get("cost")
        if cost is not None:
            if not isinstance(cost, dict) or not isinstance(cost.get("currency"), str):
                raise p.bad("cost must be an object with amount and currency")
            extras["cost"] = {
                "amount": p.number(cost.get("amount"), "cost.amount", minimum=0),
                "currency": cost["currency"],
            }
        metadata = p.string_map(body.get("metadata"), "metadata")
        if metadata is not None:
            extras["metadata"] = metadata
        if body.get("comment") is not None:
            if not isinstance(body["comment"], str):
                raise p.bad("comment must be a string")
            extras["comment"] = body["comment"]
        assert customer_id is not None and currency_id is not None
        self._known_customer(env, customer_id, resource_id)
        if currency_id not in self.c.state.env(env).currencies:
            raise ApiError(404, f"currency {currency_id!r} not found", retryable=False)
        view = await self._run(self.ledger.grant, env, **fields)
        if extras:
            await self._run(self.c.store.put_grant_extras, env, view.id, extras)
        await self._run(self._refresh, env, customer_id, currency_id, resource_id)
        return json({"data": self._grant_body(env, view, extras)})

    async def list_grants(self, request: Request) -> Response:
        env = p.environment_of(request)
        q = request.query_params
        if any(k.startswith("createdAt") for k in q):
            raise p.bad("filtering grants by createdAt is not supported")
        customer_id = p.query_str(q, "customerId", required=True)
        page = await self._run(
            self.ledger.list_grants,
            env,
            customer_id,
            p.query_str(q, "currencyId"),
            p.query_str(q, "resourceId"),
            after=p.query_cursor(q, "after"),
            before=p.query_cursor(q, "before"),
            limit=p.query_int(q, "limit", 1, MAX_PAGE) or 20,
        )
        extras = await self._run(self.c.store.grant_extras, env, [g.id for g in page.data])
        return json(
            {
                "data": [self._grant_body(env, g, extras.get(g.id)) for g in page.data],
                "pagination": {"next": page.next, "prev": page.prev},
            }
        )

    async def void_grant(self, request: Request) -> Response:
        env = p.environment_of(request)
        grant_id = p.identifier(request.path_params["grant_id"], "id")
        view = await self._run(self.ledger.void_grant, env, grant_id)
        await self._run(self._refresh, env, view.customer_id, view.currency_id, view.resource_id)
        extras = await self._run(self.c.store.grant_extras, env, [view.id])
        return json({"data": self._grant_body(env, view, extras.get(view.id))})

    # --- consumption ---------------------------------------------------------------------

    async def _consumed(self, env: str, args: dict[str, Any]) -> tuple[Any, WalletBalance]:
        """Run one consumption through the ledger without a thread per request: the ledger's
        writer process runs it in its next batch (group commit) and the mailbox resolves the
        future (one loop wake-up per batch). Then budgets and the balance cache, as every
        spend does."""
        op = self.ledger.consume_op(env, **args)
        future, deliver = self._mailbox.future()
        self.c.credits.submit(op, deliver)
        consumption = await future
        customer, currency, resource = args["customer_id"], args["currency_id"], args["resource_id"]
        if not consumption.duplicate and self._budgets_apply(env, customer, currency):
            await self._workers.run(
                self.c.credits.count_spend,
                env,
                customer,
                resource,
                currency,
                float(consumption.amount),
            )
        wallet = self.c.credits.after_spend(
            env,
            customer,
            currency,
            resource,
            None if consumption.duplicate else consumption.available_after,
        )
        if wallet is None:  # a wallet the cache did not know yet
            wallet = await self._workers.run(self._refresh, env, customer, currency, resource)
        return consumption, wallet

    def _budgets_apply(self, env: str, customer_id: str, currency_id: str) -> bool:
        """Whether a consumption counts toward a budget (UsageCounters.spend writes then)."""
        budgets = self.c.state.env(env).budgets_by_customer.get(customer_id, ())
        return any(b.currencyId == currency_id for b in budgets)

    async def consume(self, request: Request) -> Response:
        env = p.environment_of(request)
        args = _consumption_args(await p.json_object(request), "")
        self._known_wallet(env, args)
        try:
            consumption, wallet = await self._consumed(env, args)
        except LedgerError as exc:
            raise api_error(exc) from None
        data = consumption.to_api()
        data["credit"] = credit_summary(wallet, args["currency_id"])
        return json({"data": {k: v for k, v in data.items() if v is not None}})

    async def consume_async(self, request: Request) -> Response:
        env = p.environment_of(request)
        body = await p.json_object(request)
        _fields(body, {"consumptions"})
        items = body.get("consumptions")
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_ASYNC:
            raise p.bad(f"consumptions must be a list of 1 to {MAX_ASYNC} consumptions")
        all_args = [_consumption_args(item, f"consumptions[{i}].") for i, item in enumerate(items)]
        for index, args in enumerate(all_args):
            try:
                self._known_wallet(env, args)
            except ApiError as exc:  # name the item: nothing of the batch is applied
                message = f"consumptions[{index}]: {exc.message}"
                raise ApiError(exc.status, message, exc.code, retryable=exc.retryable) from None

        async def one(args: dict[str, Any]) -> tuple[str, Any]:
            try:
                consumption, _ = await self._consumed(env, args)
                return ("duplicate" if consumption.duplicate else "consumed"), None
            except LedgerError as exc:
                return "refused", exc

        # All queued at once, so the ledger's committer shares transactions between them.
        outcomes = await asyncio.gather(*(one(args) for args in all_args))
        refused = [
            {
                "index": i,
                "idempotencyKey": all_args[i]["idempotency_key"],
                "code": exc.code,
                "message": str(exc),
            }
            for i, (kind, exc) in enumerate(outcomes)
            if kind == "refused"
        ]
        return json(
            {
                "data": {
                    "consumed": sum(1 for kind, _ in outcomes if kind == "consumed"),
                    "duplicates": sum(1 for kind, _ in outcomes if kind == "duplicate"),
                    "refused": refused,
                }
            }
        )

    # --- reservations --------------------------------------------------------------------

    def _release(
        self,
        env: str,
        reservation_id: str,
        consumed: float,
        customer_id: str,
        currency_id: str,
        resource_id: str | None,
    ) -> tuple[Any, WalletBalance]:
        release = self.ledger.release(
            env,
            reservation_id,
            consumed,
            customer_id=customer_id,
            currency_id=currency_id,
            resource_id=resource_id,
        )
        # The reservation's own wallet: without resourceId the ledger matches any resource,
        # and the spend and the balance answered must be those of the wallet it held.
        held = release.reservation
        self.c.credits.count_spend(
            env, customer_id, held.resource_id, currency_id, float(release.consumed_amount)
        )
        return release, self._refresh(env, customer_id, currency_id, held.resource_id)

    async def release(self, request: Request) -> Response:
        env = p.environment_of(request)
        reservation_id = p.identifier(request.path_params["reservation_id"], "reservationId")
        body = await p.json_object(request)
        _fields(body, RELEASE_FIELDS)
        consumed = p.number(
            body.get("consumedAmount"), "consumedAmount", minimum=0, maximum=p.MAX_AMOUNT
        )
        customer_id = p.identifier(body.get("customerId"), "customerId")
        currency_id = p.identifier(body.get("currencyId"), "currencyId")
        resource_id = p.identifier(body.get("resourceId"), "resourceId", required=False)
        release, wallet = await self._run(
            self._release, env, reservation_id, consumed, customer_id, currency_id, resource_id
        )
        assert currency_id is not None
        return json(
            {
                "data": {
                    "reservation": release.reservation.to_api(),
                    "credit": credit_summary(wallet, currency_id),
                }
            }
        )

    async def check_and_reserve(
        self,
        env: str,
        customer_id: str,
        currency_id: str,
        resource_id: str | None,
        amount: float,
        reservation_id: str,
        *,
        ttl_s: int | None,
        expires_at: float | None,
        metadata: dict[str, str] | None,
    ) -> dict[str, Any]:
        """The reserving credit check: decided and held atomically by the ledger."""
        decision = self.c.engine.check_credit(
            env, customer_id, currency_id, resource_id, requested=amount
        )
        if decision.reason in NON_RESERVING_REASONS:
            return credit_body(decision, currency_id)

        def reserve() -> tuple[Any, WalletBalance]:
            try:
                reservation = self.ledger.reserve(
                    env,
                    customer_id,
                    currency_id,
                    amount,
                    reservation_id,
                    ttl_s,
                    resource_id,
                    expires_at=None if expires_at is None else iso(expires_at),
                    metadata=metadata,
                )
            except InsufficientCredits:
                return None, self._refresh(env, customer_id, currency_id, resource_id)
            wallet = None
            if not reservation.duplicate:
                wallet = self.c.credits.after_spend(
                    env,
                    customer_id,
                    currency_id,
                    resource_id,
                    reservation.available_after,
                    held=float(reservation.amount),
                )
            if wallet is None:
                wallet = self._refresh(env, customer_id, currency_id, resource_id)
            return reservation, wallet

        reservation, wallet = await self._run(reserve)
        decision.balance = wallet
        if reservation is None:
            decision.has_access, decision.reason = False, "InsufficientCredits"
            return credit_body(decision, currency_id)
        decision.has_access, decision.reason = True, None
        return credit_body(decision, currency_id, reservation.to_api())

    # --- ledger listing ---------------------------------------------------------------------

    async def ledger_listing(self, request: Request) -> Response:
        env = p.environment_of(request)
        q = request.query_params
        customer_id = p.query_str(q, "customerId", required=True)
        types = p.query_choices(q, "eventType", EVENT_TYPES) or None
        page = await self._run(
            self.ledger.ledger_events,
            env,
            customer_id,
            p.query_str(q, "currencyId"),
            resource_id=p.query_str(q, "resourceId"),
            reservation_id=p.query_str(q, "reservationId"),
            event_types=types,
            after=p.query_cursor(q, "after"),
            before=p.query_cursor(q, "before"),
            limit=p.query_int(q, "limit", 1, MAX_PAGE) or 20,
        )
        return json(page.to_api())

    def close(self) -> None:
        self._workers.close()
