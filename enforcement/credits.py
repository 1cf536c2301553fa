"""Credits: the enforcement side of the ledger (enforcement/ledger/). TEMPORARY until it lands."""

from __future__ import annotations

from typing import Any

from byoc_platform.api_errors import ApiError
from byoc_platform.catalog import Change
from byoc_platform.settings import Settings
from enforcement.engine import WalletBalance
from enforcement.state import LocalState


class CreditService:
    def __init__(self, settings: Settings, state: LocalState) -> None:
        self.settings = settings
        self.state = state

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def balance(
        self, environment: str, customer_id: str, resource_id: str | None, currency_id: str
    ) -> WalletBalance | None:
        return None

    def apply_grant_change(self, environment: str, change: Change) -> None:
        pass

    def currencies_of(self, environment: str, customer_id: str) -> list[str]:
        return []

    async def check_and_reserve(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise ApiError(503, "credit ledger not available yet")
