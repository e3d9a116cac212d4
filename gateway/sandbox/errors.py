"""Voucherify-shaped errors raised by the sandbox store and rendered by the app."""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]


class SandboxError(Exception):
    """An API error in Voucherify's shape: ``{"code", "key", "message", "details", "request_id"}``, then
    ``resource_id`` / ``resource_type`` when set, then ``extra`` (a refused stackable redemption's
    ``redeemables``)."""

    def __init__(
        self,
        status: int,
        key: str,
        message: str,
        details: str = "",
        *,
        resource_id: str | None = None,
        resource_type: str | None = None,
        extra: Json | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.key = key
        self.message = message
        self.details = details
        self.resource_id = resource_id
        self.resource_type = resource_type
        self.extra = extra or {}

    def body(self, request_id: str = "") -> Json:
        body: Json = {
            "code": self.status,
            "key": self.key,
            "message": self.message,
            "details": self.details,
            "request_id": request_id,
        }
        if self.resource_id is not None:
            body["resource_id"] = self.resource_id
        if self.resource_type is not None:
            body["resource_type"] = self.resource_type
        return {**body, **self.extra}


def invalid_payload(details: str) -> SandboxError:
    return SandboxError(400, "invalid_payload", "Invalid payload", details)
