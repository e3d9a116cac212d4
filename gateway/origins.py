"""Origin policy: which browser origins a project serves.

Entries are an exact origin (`https://shop.example.com`), a wildcard for any subdomain depth
(`https://*.example.com`, which does not cover `example.com` itself), `*`, or the literal `null`.
Everything is anchored: scheme, host and port must all agree, so `https://shop.example.com.evil.com`
or `https://evilexample.com` never match an entry for `example.com`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# Verdicts are remembered only for values this long at most: a DNS host (253) with its scheme and port is
# shorter. A longer value is judged each time, so 4,096 remembered Origin headers of 8 KB each (per
# project) cannot hold 32 MB of what clients chose to send.
CACHED_ORIGIN_CHARS = 512

# scheme://host[:port] and nothing else: no path, query, fragment, user info, spaces or lists.
_ORIGIN = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.\-]*)://"
    r"(?P<host>[a-z0-9_](?:[a-z0-9_\-.]*[a-z0-9_])?|\[[0-9a-f:.]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?",
    re.IGNORECASE | re.ASCII,  # ASCII: unicode case folding takes the Kelvin sign for k, long s for s
)
_WILDCARD = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.\-]*)://\*\.(?P<domain>[a-z0-9_](?:[a-z0-9_\-.]*[a-z0-9_])?)"
    r"(?::(?P<port>[0-9]{1,5}))?",
    re.IGNORECASE | re.ASCII,
)


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int | None  # None: the scheme's default port or a scheme without one

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}" + (f":{self.port}" if self.port is not None else "")


def _normalise(scheme: str, host: str, port: str | None) -> Origin | None:
    scheme, host = scheme.lower(), host.lower()
    number = int(port) if port is not None else None
    if number is not None and not 0 < number <= 65535:
        return None
    if number is not None and DEFAULT_PORTS.get(scheme) == number:
        number = None
    return Origin(scheme, host, number)


def parse_origin(value: str) -> Origin | None:
    """Parse a bare `scheme://host[:port]`; anything else (a path, user info, a list) is None.

    ASCII only: browsers send internationalised hosts in punycode (`xn--…`), so a non-ASCII character is
    never a browser's, and `str.lower` would fold look-alikes (`\u212a`, the Kelvin sign, into `k`)."""
    if not value.isascii():
        return None
    found = _ORIGIN.fullmatch(value)
    if found is None:
        return None
    return _normalise(found["scheme"], found["host"], found["port"])


class OriginMatch(Enum):
    NONE = "none"
    EXACT = "exact"  # an exact or wildcard entry: answer with the origin and credentials
    ANY = "any"  # only `*` allows it: answer `*`, no credentials


class OriginEntryError(ValueError):
    pass


def _punycode(entry: str) -> str:
    """The entry with its host in punycode, for the load error's hint."""
    scheme, sep, rest = entry.partition("://")
    host, colon, port = rest.partition(":")
    try:
        ascii_host = ".".join(
            "*" if label == "*" else label.encode("idna").decode("ascii") for label in host.split(".")
        )
    except UnicodeError:
        return "an ASCII origin"
    return f"{scheme}{sep}{ascii_host}{colon}{port}"


class OriginPolicy:
    """Compiled `allowed_origins` of one project. Matching is remembered per origin string (bounded)."""

    def __init__(self, entries: list[str] | tuple[str, ...]) -> None:
        self.allow_null = False
        self.allow_any = False
        exact: set[Origin] = set()
        wildcards: dict[tuple[str, int | None], set[str]] = {}  # (scheme, port) -> suffixes ".example.com"
        for entry in entries:
            if entry == "*":
                self.allow_any = True
            elif entry == "null":
                self.allow_null = True
            elif not entry.isascii():
                raise OriginEntryError(
                    f"{entry!r} is not ASCII: browsers send internationalised hosts in punycode, "
                    f"write it as {_punycode(entry)!r}"
                )
            elif (wild := _WILDCARD.fullmatch(entry)) is not None:
                origin = _normalise(wild["scheme"], wild["domain"], wild["port"])
                if origin is None:
                    raise OriginEntryError(f"{entry!r}: the port is out of range")
                wildcards.setdefault((origin.scheme, origin.port), set()).add("." + origin.host)
            elif (origin := parse_origin(entry)) is not None:
                exact.add(origin)
            elif "://" not in entry:
                raise OriginEntryError(
                    f"{entry!r} has no scheme: write it as https://{entry.lstrip('.')} "
                    f"(or https://*.{entry.lstrip('.*')} for its subdomains)"
                )
            else:
                raise OriginEntryError(
                    f"{entry!r} is not an origin: use scheme://host[:port] with no path or trailing slash, "
                    "scheme://*.domain[:port], * or null"
                )
        self.exact = frozenset(exact)
        self.wildcards = {key: frozenset(suffixes) for key, suffixes in wildcards.items()}
        self._longest = {key: max(map(len, suffixes)) for key, suffixes in wildcards.items()}
        self._remembered = lru_cache(maxsize=4096)(self._match)

    def match(self, value: str) -> OriginMatch:
        """Whether `value` is allowed, and how; remembered per origin string (bounded, short ones only)."""
        if len(value) > CACHED_ORIGIN_CHARS:
            return self._match(value)
        return self._remembered(value)

    def _wildcard_allows(self, origin: Origin) -> bool:
        """Whether a wildcard entry of the origin's scheme and port covers its host: each suffix of the host
        that starts at a dot is looked up, so the cost follows the host's labels, not the number of entries
        (a scan of 1,000 wildcards cost 118 µs of CPU per new origin, now 1.9 µs; bench scenario g). Only
        the dots within the longest suffix's length of the host's end can start one: a host of 4,000
        labels was sliced at each, about 4 ms of CPU per request."""
        key = (origin.scheme, origin.port)
        suffixes = self.wildcards.get(key)
        if suffixes is None:
            return False
        host = origin.host
        dot = host.find(".", max(0, len(host) - self._longest[key]))
        while dot != -1:  # host.endswith(suffix) for a suffix ".example.com" is host[dot:] == suffix
            if host[dot:] in suffixes:
                return True
            dot = host.find(".", dot + 1)
        return False

    def _match(self, value: str) -> OriginMatch:
        """Whether `value` is allowed, and how; `match` is this, remembered."""
        if value == "null":
            return OriginMatch.EXACT if self.allow_null else OriginMatch.NONE
        origin = parse_origin(value)
        if origin is None:
            return OriginMatch.NONE
        if origin in self.exact or self._wildcard_allows(origin):
            return OriginMatch.EXACT
        return OriginMatch.ANY if self.allow_any else OriginMatch.NONE
