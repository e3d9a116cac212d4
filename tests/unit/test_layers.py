"""The decision core is sans-IO: importing it, compiling a policy and deciding a request load no client,
no HTTP parser and no server. A subprocess, so that what other tests imported does not count."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

IO_MODULES = ("redis", "httptools", "limits", "aiohttp")

PROGRAM = """
import sys
from multidict import CIMultiDict
import gateway.decide, gateway.compiled, gateway.policy, gateway.models
from gateway.compiled import compile_policy
from gateway.decide import Admit, decide
from gateway.policy import parse_policy

policy = compile_policy(parse_policy('''
projects:
  shop:
    region: http://127.0.0.1:9
    credentials: {client_application_id: a, client_secret_key: b}
    allowed_origins: [https://shop.example.com]
    rate_limit: {per_ip: 5 per 5 seconds;100/hour}
default_project: shop
''', env={}))
headers = CIMultiDict({"Origin": "https://shop.example.com"})
assert isinstance(decide(policy, "GET", "/client/v1/validate?code=A", headers), Admit)
loaded = sorted({name.split(".")[0] for name in sys.modules} & set(sys.argv[1:]))
print(",".join(loaded))
"""


def test_the_decision_core_imports_no_io() -> None:
    found = subprocess.run(
        [sys.executable, "-c", PROGRAM, *IO_MODULES], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "", f"the decision core loaded {found.stdout.strip()}"
