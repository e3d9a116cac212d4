"""Answers that give a credential away: the one check every mode's `response` passes Voucherify's answer
through, before anything of it becomes the browser's.

An upstream (or whatever answers at its URL: an echo service, a debugging proxy, a misrouted region) that
echoes request headers would hand the browser the project's secret key. An answer whose body or relayed
headers hold the value of the secret the gateway sends (`X-App-Token` in server mode, `X-Client-Token` in
client mode), as sent or JSON-escaped, is not relayed: 502 `upstream_unavailable`, and an operator log line
naming the project, the header and where it was found, never the value. A 502 rather than a redaction: an
answer that echoes credentials is not Voucherify's, and rewriting it would pass on the rest of what it says.
The application ids are not searched for: they are not secret alone, and Voucherify prints them in its own
objects. Pure apart from that log line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from functools import lru_cache

from gateway import errors
from gateway.errors import Refused
from gateway.models import Target, UpstreamResponse

log = logging.getLogger("gateway")

# The credential headers (`compiled._credential_headers`) whose values are secrets.
SECRET_HEADERS = frozenset({"x-app-token", "x-client-token"})


@lru_cache(maxsize=64)
def _secret_forms(value: str) -> tuple[bytes, ...]:
    """The byte strings that give `value` away in an answer: as it is, and JSON-escaped if that differs."""
    forms = [value.encode()]
    escaped = json.dumps(value)[1:-1].encode()
    if escaped != forms[0]:
        forms.append(escaped)
    return tuple(forms)


def echoed_secret(
    credentials: Iterable[tuple[str, str]], relayed: Sequence[tuple[str, str]], body: bytes
) -> tuple[str, str] | None:
    """(credential header, where) when an answer would hand the browser one of the secret `credentials`
    (name, value pairs as sent upstream); None otherwise."""
    for name, value in credentials:
        if not value or name.lower() not in SECRET_HEADERS:
            continue
        for form in _secret_forms(value):
            if form in body:
                return name, "body"
            text = form.decode()
            for header, header_value in relayed:
                if text in header_value:
                    return name, f"{header} header"
    return None


def refuse_echoed_secrets(target: Target, answer: UpstreamResponse) -> None:
    """Refused (502) when Voucherify's answer holds one of the project's secrets (module docstring)."""
    project = target.project
    echoed = echoed_secret(project.credential_headers, answer.headers, answer.body)
    if echoed is None:
        return
    log.error(
        "upstream %s (project %s) answered with the value of the gateway's %s in its %s: not passed on "
        "(502); check what answers at that URL",
        project.base_url,
        project.name,
        *echoed,
    )
    raise Refused(
        errors.upstream_unavailable(
            "Voucherify's answer could not be passed on. This is logged for the gateway operator.",
            sent=True,  # Voucherify answered: it may have acted on the request (an Idempotency-Key keeps it)
        )
    )
