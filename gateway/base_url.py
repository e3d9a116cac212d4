"""A project's upstream base URL (its region's URL) split into what the upstream client connects to.

Sans-IO and shared: `policy` checks a region with it when the file is loaded, and `http1.Http1Client` with
each base URL it is asked to call, so `check` refuses exactly what the client would refuse at every call
(a policy that loads but 502s every request is no policy).
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import urlsplit

__all__ = ["NOT_PRINTABLE_ASCII", "BaseUrl", "BaseUrlError", "split_base_url"]

NOT_PRINTABLE_ASCII = re.compile(r"[^\x21-\x7e]")  # space, controls, DEL, anything non-ASCII


class BaseUrl(NamedTuple):
    scheme: str  # http or https
    host: str  # as urlsplit gives it: lower case, an IPv6 literal without its brackets
    port: int  # the scheme's default when the URL has none
    prefix: str  # the URL's path without its trailing slash ("" or "/...")


class BaseUrlError(ValueError):
    """What is wrong with a base URL; never the URL itself (its user info may hold a password)."""

    def __init__(self, problem: str, host: str = "") -> None:
        super().__init__(problem)
        self.host = host  # the URL's host, when it has one: the upstream client's error names it


def split_base_url(url: str) -> BaseUrl:
    """`url` split, or `BaseUrlError` saying what is wrong with it."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise BaseUrlError("an http(s) URL with a valid host and a port from 0 to 65535") from None
    prefix = parts.path.rstrip("/")
    problem = None
    if scheme not in ("http", "https"):
        problem = "must be an http(s) URL"
    elif parts.username is not None or parts.password is not None:
        problem = "must not hold user info (user:password@): the gateway never sends it"
    elif not host:
        problem = "an http(s) URL needs a host"
    elif NOT_PRINTABLE_ASCII.search(host) or NOT_PRINTABLE_ASCII.search(prefix):
        problem = "an http(s) URL must be printable ASCII (an internationalised host in punycode)"
    elif parts.query or parts.fragment or (prefix and prefix[0] != "/"):
        problem = "an http(s) URL with no query or fragment"
    if problem is not None:
        raise BaseUrlError(problem, host)
    return BaseUrl(scheme, host, port, prefix)
