"""Real-browser tests: Debian's headless chromium, the widget and the official @voucherify/sdk from npm,
through the gateway to the offline sandbox. Pages are served from other origins than the gateway's."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html import escape as html_escape
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.listen import GatewayRunner
from gateway.sandbox import SANDBOX_RECORDS, RecordedRequest, SandboxCredentials, create_sandbox_app
from tests.conftest import in_ci, make_policy
from tests.support.processes import running_demo

HERE = Path(__file__).parent.parent / "browser"
NODE_MODULES = HERE / "node_modules"
OUTPUT = Path(__file__).parent.parent / "output"
LIBS = {
    "axios.min.js": NODE_MODULES / "axios/dist/axios.min.js",
    "qs.js": NODE_MODULES / "qs/dist/qs.js",
    "voucherify.js": NODE_MODULES / "@voucherify/sdk/dist/voucherifysdk.umd.production.min.js",
}


def _tools_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if shutil.which("chromium") is None:
        return "chromium is not installed (apt-get install chromium)"
    if not (NODE_MODULES / "playwright-core").exists() or not all(path.exists() for path in LIBS.values()):
        return "npm packages missing (cd tests/browser && npm ci)"
    return None


missing = _tools_missing()
if missing and in_ci():
    raise RuntimeError(f"browser tests cannot run in CI: {missing}")
pytestmark = pytest.mark.skipif(missing is not None, reason=missing or "")


async def _start(app: web.Application | web.AppRunner) -> tuple[web.AppRunner, str]:
    runner = app if isinstance(app, web.AppRunner) else web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def page_server(gateway_url: str) -> web.Application:
    """A checkout on its own origin: the widget page, and a page loading the SDK's UMD build."""
    widget_page = f"""<!doctype html><meta charset=utf-8><title>shop</title>
<script src="{gateway_url}/widget.js"></script>
<voucherify-promo gateway="{{gateway}}" amount="12000" currency="EUR"
  placeholder="Code&quot;&gt;&lt;img src=x&gt;"></voucherify-promo>
<p>Total: <span id="total">120.00</span></p>
<script>document.addEventListener("voucherify:validated", (e) => {{
  document.getElementById("total").textContent = ((12000 - (e.detail.valid ? e.detail.discount : 0)) / 100).toFixed(2);
}});</script>"""
    sdk_page = f"""<!doctype html><meta charset=utf-8><title>sdk</title>
<script>window.GATEWAY = "{gateway_url}";</script>
<script src="/lib/axios.min.js"></script><script src="/lib/qs.js"></script><script src="/lib/voucherify.js"></script>"""

    async def html(request: web.Request) -> web.Response:
        gateway = html_escape(request.query.get("gateway", gateway_url))  # ?gateway= another base URL
        body = sdk_page if request.path == "/sdk.html" else widget_page.replace("{gateway}", gateway)
        response = web.Response(text=body, content_type="text/html")
        if request.path == "/strict.html":  # a strict checkout: no inline script or style, Trusted Types
            response.headers["Content-Security-Policy"] = (
                f"default-src 'none'; script-src {gateway_url}; connect-src {gateway_url}; "
                "style-src 'self'; require-trusted-types-for 'script'"
            )
        if request.path == "/isolated.html":  # cross-origin isolated: no-cors resources need CORP
            response.headers["Cross-Origin-Embedder-Policy"] = "require-corp"
            response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        return response

    async def not_an_answer(request: web.Request) -> web.Response:
        """What a misrouted gateway URL may answer: a shop's HTML fallback with 200, or a JSON null."""
        if request.match_info["kind"] == "html":
            return web.Response(text="<!doctype html><title>shop</title>", content_type="text/html")
        return web.Response(status=503, text="null", content_type="application/json")

    async def lib(request: web.Request) -> web.FileResponse:
        return web.FileResponse(LIBS[request.match_info["name"]])

    app = web.Application()
    app.router.add_get("/widget.html", html)
    app.router.add_get("/sdk.html", html)
    app.router.add_get("/isolated.html", html)
    app.router.add_get("/strict.html", html)
    app.router.add_get("/lib/{name}", lib)
    app.router.add_post("/not-an-answer/{kind}/client/v1/validations", not_an_answer)
    return app


@dataclass
class Stack:
    gateway: str
    allowed_page: str
    other_page: str
    sandbox: web.Application

    @property
    def records(self) -> list[RecordedRequest]:
        return self.sandbox[SANDBOX_RECORDS]


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    credentials = SandboxCredentials()
    sandbox = create_sandbox_app(credentials)
    runners: list[web.AppRunner] = []
    try:
        runner, sandbox_url = await _start(sandbox)
        runners.append(runner)
        # Reserve the page servers first: the gateway's policy names the allowed one's origin.
        allowed_app, other_app = web.Application(), web.Application()
        allowed_runner, allowed_url = await _start(allowed_app)
        other_runner, other_url = await _start(other_app)
        runners += [allowed_runner, other_runner]
        tree = {
            "default_project": "shop",
            "rate_limit": {"per_ip": "100 per minute", "failed_codes": "2 per hour"},
            "projects": {
                "shop": {
                    "region": sandbox_url,
                    "credentials": {
                        "client_application_id": credentials.client_application_id,
                        "client_secret_key": credentials.client_secret_key,
                    },
                    "allowed_origins": [allowed_url],
                    "danger_zone": {"redeem": True, "publish": True},
                }
            },
        }
        policy = make_policy(tree)  # the gateway on the public port's own runner, as serve runs it
        gateway_runner, gateway_url = await _start(GatewayRunner(create_app(policy), policy.listen))
        runners.append(gateway_runner)
        # The page servers' routes can only be added before they start: restart both with content.
        await allowed_runner.cleanup()
        await other_runner.cleanup()
        runners.remove(allowed_runner)
        runners.remove(other_runner)
        for url in (allowed_url, other_url):
            runner = web.AppRunner(page_server(gateway_url), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", int(url.rsplit(":", 1)[1])).start()
            runners.append(runner)
        yield Stack(gateway_url, allowed_url, other_url, sandbox)
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


async def drive(
    scenario: str, url: str, screenshot: Path | None = None, codes: tuple[str, ...] = ()
) -> dict[str, Any]:
    """`codes`: what the widget scenario types, one after the other (default: SAVE10, EXPIRED, NOPE)."""
    args = ["node", str(HERE / "drive.mjs"), scenario, url] + ([str(screenshot)] if screenshot else [])
    env = {**os.environ, "CODES": ",".join(codes)} if codes else None
    process = await asyncio.create_subprocess_exec(
        *args, cwd=HERE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 90)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    assert "error" not in result, result
    return result


async def test_widget_validates_through_the_gateway(stack: Stack) -> None:
    result = await drive("widget", f"{stack.allowed_page}/widget.html")
    save10, expired, unknown = result["attempts"]
    assert save10["event"]["type"] == "voucherify:validated"
    assert save10["event"]["detail"]["valid"] is True
    assert save10["event"]["detail"]["discount"] == 1000
    assert "10.00" in save10["output"] and "off" in save10["output"]
    assert expired["event"]["detail"]["valid"] is False
    assert "expired" in expired["output"].lower()
    assert unknown["event"]["detail"]["valid"] is False
    assert result["total"] == "120.00"  # the last code tried was invalid: no discount left applied
    assert result["shadow"] == {"placeholder": 'Code"><img src=x>', "images": 0}  # text, never markup
    validations = [r for r in stack.records if r.path == "/client/v1/validations"]
    assert len(validations) == 3
    for record in validations:
        assert record.headers["origin"] == stack.allowed_page
        assert record.headers["x-client-application-id"] == SandboxCredentials().client_application_id
    # The browser never saw a key: the widget sent none, the gateway injected them.
    assert json.loads(validations[0].body)["redeemables"] == [{"object": "voucher", "id": "SAVE10"}]


async def test_widget_says_when_the_failed_code_budget_is_spent(stack: Stack) -> None:
    """Unknown codes show Voucherify's reason; once the budget (2 per hour) is spent, the widget says why
    and when to try again (from Retry-After), and the sandbox is not asked."""
    result = await drive(
        "widget", f"{stack.allowed_page}/widget.html", codes=("NOPE1", "NOPE2", "NOPE3", "SAVE10")
    )
    first, second, refused, known = result["attempts"]
    for attempt in (first, second):
        assert attempt["event"]["type"] == "voucherify:validated"
        assert attempt["event"]["detail"]["valid"] is False
        code = attempt["code"]
        assert attempt["output"] == f"{code}: Cannot find voucher with id {code}"  # the sandbox's reason
    for attempt in (refused, known):  # a known code too: the budget covers no code at all now
        assert attempt["event"]["type"] == "voucherify:error"
        detail = attempt["event"]["detail"]
        assert (detail["status"], detail["key"]) == (429, "too_many_failed_codes")
        wait = detail["retryAfter"]  # Retry-After, which the page could read (it is exposed)
        assert 90 * 60 > wait > 60
        assert attempt["output"] == (
            "Too many codes that do not exist were tried from this connection. "
            f"Try again in {math.ceil(wait / 60)} minutes."
        )
    validations = [r for r in stack.records if r.path == "/client/v1/validations"]
    assert [json.loads(r.body)["redeemables"][0]["id"] for r in validations] == ["NOPE1", "NOPE2"]


async def test_widget_takes_only_a_json_object_with_valid_as_a_validation(stack: Stack) -> None:
    """A gateway URL that answers a shop's HTML page with 200 (an SPA fallback) is an error, not "Code not
    valid" for a code never checked; a JSON null is an error with the answer's status, not "unreachable"."""
    for kind, status in (("html", 200), ("null", 503)):
        page = f"{stack.allowed_page}/widget.html?gateway=/not-an-answer/{kind}"
        [attempt] = (await drive("widget", page, codes=("SAVE10",)))["attempts"]
        assert attempt["event"]["type"] == "voucherify:error", (kind, attempt)
        assert attempt["event"]["detail"] == {
            "status": status,
            "key": None,
            "message": "Could not check the code.",
            "retryAfter": None,
        }
        assert attempt["output"] == "Could not check the code."
    assert stack.records == []


async def test_widget_works_under_a_strict_content_security_policy(stack: Stack) -> None:
    """The README's tag on a checkout whose CSP allows the gateway's script and requires Trusted Types:
    a shadow root filled by innerHTML threw there, and the element stayed an empty box for good. Its
    style is a constructed style sheet, which style-src governs not; a <style> element was refused."""
    page = f"{stack.allowed_page}/strict.html"
    loaded = await drive("loaded", page)
    assert (loaded["defined"], loaded["inputs"]) == (True, 1), loaded["console"]
    result = await drive("widget", page, codes=("SAVE10",))
    [attempt] = result["attempts"]
    assert attempt["event"]["detail"]["valid"] is True
    assert attempt["output"] == "SAVE10: €10.00 off"
    assert result["shadow"] == {"placeholder": 'Code"><img src=x>', "images": 0}
    assert result["button"] == "rgb(27, 92, 255)"  # its style too: style-src 'self' allows no <style>
    refused = [line for line in result["console"] if "TrustedHTML" in line or "style" in line]
    assert not refused, result["console"]


async def test_widget_loads_on_a_cross_origin_isolated_page(stack: Stack) -> None:
    """A checkout with COEP require-corp takes the README's plain script tag (no crossorigin attribute) only
    with Cross-Origin-Resource-Policy: cross-origin on /widget.js; without it the script is blocked."""
    page = f"{stack.allowed_page}/isolated.html"
    loaded = await drive("loaded", page)
    assert loaded["isolated"] is True  # the page's COEP is in force
    assert loaded["defined"] is True, loaded["console"]
    [attempt] = (await drive("widget", page, codes=("SAVE10",)))["attempts"]
    assert attempt["event"]["detail"]["valid"] is True


async def test_widget_sends_the_same_validation_once_while_its_answer_is_shown(stack: Stack) -> None:
    """The second click of a double click often comes after the answer (a local gateway answers in a few
    ms) and the button is enabled again: the same code for the same order is answered from the answer on
    display, not sent again to spend the shopper's rate limit and failed-code budget (2 per hour here)."""
    codes = ("NOPE1", "NOPE1", "NOPE2", "SAVE10")
    first, again, other, known = (await drive("widget", f"{stack.allowed_page}/widget.html", codes=codes))[
        "attempts"
    ]
    assert again == first and first["event"]["detail"]["valid"] is False
    assert other["output"] == "NOPE2: Cannot find voucher with id NOPE2"  # the budget had room for it
    assert known["event"]["type"] == "voucherify:error"  # now it is spent: two unknown codes were sent
    validations = [r for r in stack.records if r.path == "/client/v1/validations"]
    assert [json.loads(r.body)["redeemables"][0]["id"] for r in validations] == ["NOPE1", "NOPE2"]


async def test_widget_from_a_disallowed_origin_gets_nothing(stack: Stack) -> None:
    args = ["node", str(HERE / "drive.mjs"), "widget", f"{stack.other_page}/widget.html"]
    process = await asyncio.create_subprocess_exec(*args, cwd=HERE, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(process.communicate(), 90)
    result = json.loads(out.decode().strip().splitlines()[-1])
    [first, *_] = result["attempts"]
    assert first["event"]["type"] == "voucherify:error"
    assert first["event"]["detail"]["status"] == 0  # CORS refused: the page cannot even read the 403
    assert first["event"]["detail"]["retryAfter"] is None  # every voucherify:error detail has it
    assert first["output"] == "The promotion service is unreachable."
    assert stack.records == []


async def test_official_sdk_through_the_gateway(stack: Stack) -> None:
    result = await drive("sdk", f"{stack.allowed_page}/sdk.html")
    calls = result["calls"]
    assert calls["validate"]["ok"], calls["validate"]
    assert calls["validate"]["value"]["valid"] is True
    assert calls["validate"]["value"]["discount"]["amount_off"] == 1000
    assert calls["validateStackable"]["ok"] and calls["validateStackable"]["value"]["valid"] is True
    assert calls["redeemStackable"]["ok"], calls["redeemStackable"]
    assert calls["redeemStackable"]["value"]["redemptions"][0]["result"] == "SUCCESS"
    assert calls["qualifications"]["ok"], calls["qualifications"]
    assert calls["publish"]["ok"], calls["publish"]
    assert calls["publish"]["value"]["voucher"]["code"].startswith("WELCOME-")
    # list_vouchers is a danger-zone option left off: refused by the gateway, in a shape the SDK surfaces.
    assert calls["listVouchers"] == {
        "ok": False,
        "error": {
            "code": 403,
            "key": "danger_zone_disabled",
            "message": "Operation disabled for client-side use",
        },
    }
    paths = [(r.method, r.path) for r in stack.records]
    assert ("GET", "/client/v1/validate") in paths
    assert ("POST", "/client/v1/redemptions") in paths
    assert ("POST", "/client/v1/publish") in paths
    assert ("POST", "/client/v1/qualifications") in paths
    assert all(path != "/client/v1/vouchers" for _, path in paths)
    for record in stack.records:
        assert record.headers["x-client-token"] == SandboxCredentials().client_secret_key
        assert "placeholder" not in json.dumps(record.headers)


async def test_official_sdk_from_a_disallowed_origin_gets_nothing(stack: Stack) -> None:
    result = await drive("sdk", f"{stack.other_page}/sdk.html")
    assert all(not call["ok"] for call in result["calls"].values()), result["calls"]
    assert stack.records == []


async def test_a_keyed_redemption_sent_twice_is_replayed_not_spent_twice(stack: Stack) -> None:
    """fetch with Idempotency-Key from an allowed origin: the preflight allows the header, the second
    answer is the first again and says so in a header the page can read; ONEUSE is spent once."""
    result = await drive("idempotency", f"{stack.allowed_page}/sdk.html")
    first, again, new_key = result["calls"]["fetch"]
    assert first["status"] == 200 and first["replayed"] is None, first
    assert first["body"]["result"] == "SUCCESS"
    assert again == {**first, "replayed": "true"}
    assert new_key["status"] == 400 and new_key["replayed"] is None, new_key  # its one use is gone
    one, two = result["calls"]["sdk"]
    assert one["ok"] and two == one, result["calls"]["sdk"]  # customHeaders: the SDK's retry is a replay
    redemptions = [(r.path, r.query_string) for r in stack.records if r.path == "/client/v1/redeem"]
    assert redemptions == [("/client/v1/redeem", "code=ONEUSE")] * 2 + [("/client/v1/redeem", "code=SAVE10")]


async def test_demo_page_screenshot(tmp_path: Path) -> None:
    """The demo command's page in a real browser; the screenshot is kept under tests/output/ for CI."""
    async with running_demo() as port:
        OUTPUT.mkdir(exist_ok=True)
        shot = OUTPUT / "demo-checkout.png"
        result = await drive("screenshot", f"http://localhost:{port}/", shot)
        [attempt] = result["attempts"]
        assert attempt["event"]["detail"]["valid"] is True
        assert result["total"] == "€ 110.00"
        assert shot.stat().st_size > 10_000
