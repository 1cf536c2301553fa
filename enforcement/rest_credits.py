"""Credit REST routes. TEMPORARY until the ledger lands."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from byoc_platform.api_errors import ApiError

if TYPE_CHECKING:
    from enforcement.component import EnforcementComponent


class CreditRoutes:
    def __init__(self, component: EnforcementComponent) -> None:
        self.c = component

    async def _todo(self, request: Request) -> Response:
        raise ApiError(503, "credit ledger not available yet")

    create_grant = list_grants = void_grant = consume = consume_async = release = ledger = _todo
