"""Fuzzing the request path: the request line, headers and body, in process and through a real gateway.

    python -m bench.fuzz --minutes 60           # the long run (not in CI)
    python -m bench.fuzz --seconds 5            # a smoke run (tests/e2e/test_fuzz.py)
    python -m bench.fuzz --replay tests/regressions   # every kept case again; exit 1 if one still crashes

Inputs are mutations of a seed corpus (one valid request per operation, client and server mode): the
method, the request target (percent-escapes, dot segments, encoded slashes, repeated slashes, the absolute
form, brackets, controls, long segments), the headers (Origin, Content-Length, Transfer-Encoding,
Content-Type and its charset, X-Forwarded-For, secrets, Idempotency-Key, duplicates) and the body (JSON
cut short, bytes flipped, deep nesting, huge numbers, duplicate keys, invalid UTF-8, a BOM).

Two targets, alternating:
- `inprocess`: the gateway's sans-IO path, `decide` -> `check_body` -> the mode's `request` (which reads
  `qs` in server mode) -> the mode's `response` on a mutated upstream answer. The gateway's own refusals
  (`Refused`) are answers; any other exception is a crash.
- `gateway`: the same request as raw bytes (sometimes mutated further: bare LF, obs-fold, CR/LF inside a
  value) on a fresh socket to a real `python -m gateway serve` in front of a stand-in upstream. A 500, or
  an error line in the gateway's log, is a crash.

Each crash is kept as a JSON case file under `--out` (default tests/regressions/), named by a hash of its
input so a crash found twice is one file; `tests/e2e/test_regressions.py` replays every file.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import random
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import http_exceptions
from multidict import CIMultiDict

ROOT = Path(__file__).resolve().parent.parent
BATCH = 20  # gateway cases sent at once, each on its own connection
REGRESSIONS = ROOT / "tests" / "regressions"
ORIGIN = "https://shop.example.com"

# ------------------------------------------------------------------------------------------ inputs


@dataclass
class Case:
    method: str
    target: str  # the raw request target
    headers: list[tuple[str, str]]
    body: bytes
    answer: bytes = b'{"valid": true}'  # the upstream's answer body (in-process target)
    raw: bytes | None = None  # the bytes on the wire, when mutated past what the fields can say

    def wire(self) -> bytes:
        if self.raw is not None:
            return self.raw
        lines = [f"{self.method} {self.target} HTTP/1.1", "Host: gateway.test"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + self.body

    def to_json(self, target: str, error: str) -> dict[str, Any]:
        return {
            "target": target,
            "error": error,
            "method": self.method,
            "request_target": self.target,
            "headers": [list(h) for h in self.headers],
            "body_b64": base64.b64encode(self.body).decode(),
            "answer_b64": base64.b64encode(self.answer).decode(),
            "raw_b64": None if self.raw is None else base64.b64encode(self.raw).decode(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Case:
        raw = data.get("raw_b64")
        return cls(
            data["method"],
            data["request_target"],
            [(str(n), str(v)) for n, v in data["headers"]],
            base64.b64decode(data["body_b64"]),
            base64.b64decode(data.get("answer_b64") or b""),
            None if raw is None else base64.b64decode(raw),
        )


def _body(document: Any) -> bytes:
    return json.dumps(document).encode()


ORDER = {"order": {"amount": 12000, "items": [{"product_id": "p1", "quantity": 1, "price": 12000}]}}
STACK = {**ORDER, "redeemables": [{"object": "voucher", "id": "SAVE10"}]}
SEEDS: list[tuple[str, str, bytes]] = [
    ("GET", "/client/v1/validate?code=SAVE10&amount=100&item[0][quantity]=2&metadata[a][0]=x", b""),
    ("GET", "/client/v1/promotions/validation?amount=100", b""),
    ("POST", "/client/v1/validations", _body(STACK)),
    ("POST", "/client/v1/redeem?code=SAVE10", _body(ORDER)),
    ("POST", "/client/v1/redemptions", _body(STACK)),
    ("POST", "/client/v1/promotions/tiers/promo_1/redemption", _body(ORDER)),
    ("POST", "/client/v1/publish?campaign=Spring", _body({"customer": {"source_id": "c1"}})),
    ("POST", "/client/v1/qualifications", _body({"customer": {"source_id": "c1"}})),
    ("GET", "/client/v1/promotions/tiers?is_available=true", b""),
    ("POST", "/client/v1/events", _body({"event": "e", "customer": {"source_id": "c1"}, "referral": None})),
    ("GET", "/client/v1/vouchers?customer=c1", b""),
    ("POST", "/client/v1/customers", _body({"source_id": "c1", "email": "a@b.c"})),
    ("GET", "/client/v1/consents", b""),
    ("PUT", "/client/v1/customers/c%201%2Fx/consents", _body({"unsubscribed": True})),
    ("OPTIONS", "/client/v1/validations", b""),
]
PREFIXES = ["", "/server", "//", "/shop", "/nope", "http://evil.example", "HTTP://a"]
PATH_BITS = [
    "%2f",
    "%2F",
    "%2e",
    "%2E%2e",
    "..",
    ".",
    "/",
    "//",
    "\\",
    "%5c",
    "%00",
    "%",
    "%zz",
    "%c3%28",
    "[",
    "]",
    "?",
    "#",
    "&",
    "=",
    "+",
    "%20",
    " ",
    "\t",
    "\x00",
    "\x7f",
    "ü",
    "~",
    ";",
    "@",
    ":",
]
QUERY_BITS = [
    "code=",
    "code=%2F",
    "code=..",
    "code=.",
    "code=a&code=b",
    "amount=1e400",
    "amount=-0",
    "item[99999999][price]=1",
    "item[0][quantity]=9999999999999999999",
    "metadata[__proto__]=1",
    "metadata[a][b][c][d][e][f][g]=1",
    "session_ttl=0x10",
    "%ff=%fe",
    "a[=1",
    "a]=1",
    "a[[b]]=1",
    "campaign=",
    "campaign=%00",
    "customer[metadata][0]=x",
    "order[metadata][]=y",
]
METHODS = ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "TRACE", "get", "X" * 40, "CONNECT"]
HEADER_VALUES: dict[str, list[str]] = {
    "Origin": [
        ORIGIN,
        "null",
        "https://evil.example",
        "https://shop.example.com.evil.com",
        "HTTPS://SHOP.EXAMPLE.COM:443",
        "https://a.example.org",
        "https://shop.example.com/",
        "",
        "https://user@shop.example.com",
        "*",
    ],
    "Content-Length": ["0", "-1", "1", "99999999999999999999", "12 ", "+5", "0x10", "²", "262145", "10, 10"],
    "Transfer-Encoding": ["chunked", "gzip", "chunked, identity", "identity"],
    "Content-Type": [
        "application/json",
        "application/json; charset=utf-7",
        "APPLICATION/JSON;charset=UTF-8",
        "text/plain",
        "application/json;;",
        "application/jsonx",
        "multipart/form-data; boundary=x",
    ],
    "X-Forwarded-For": [
        "1.2.3.4",
        "1.2.3.4, 10.0.0.1",
        "unknown",
        "::ffff:1.2.3.4",
        "[::1]:80",
        ",,,",
        "1" * 300,
    ],
    "X-App-Token": ["secret"],
    "Idempotency-Key": ['"k-1"', "k-1", "", '"', "x" * 300, "\\"],
    "Traceparent": ["00-" + "a" * 32 + "-" + "b" * 16 + "-01", "garbage"],
    "Accept": ["application/json", "*/*"],
    "X-Voucherify-Channel": ["web"],
}


class Mutator:
    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd

    def case(self) -> Case:
        r = self.rnd
        method, target, body = r.choice(SEEDS)
        headers = [("Origin", ORIGIN)]
        if body:
            headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        case = Case(method, target, headers, body, r.choice(ANSWERS))
        for _ in range(r.randint(1, 4)):
            r.choice((self.method, self.target, self.target, self.headers, self.headers, self.body))(case)
        if not any(n.lower() == "content-length" for n, _ in case.headers) and case.body:
            if r.random() < 0.8:
                case.headers.append(("Content-Length", str(len(case.body))))
        return case

    def method(self, case: Case) -> None:
        case.method = self.rnd.choice(METHODS)

    def target(self, case: Case) -> None:
        r = self.rnd
        path, _, query = case.target.partition("?")
        choice = r.randrange(6)
        if choice == 0:
            at = r.randrange(len(path) + 1)
            path = path[:at] + r.choice(PATH_BITS) + path[at:]
        elif choice == 1:
            path = r.choice(PREFIXES) + path
        elif choice == 2:
            query = "&".join(filter(None, [query, r.choice(QUERY_BITS)]))
        elif choice == 3:
            segments = path.split("/")
            segments[r.randrange(len(segments))] = r.choice(PATH_BITS) * r.randint(1, 3)
            path = "/".join(segments)
        elif choice == 4:
            path += "/" + "a" * r.choice([1, 300, 5000])
        else:
            path = path.replace("/", r.choice(["//", "/./", "/%2F", "/../"]), 1)
        case.target = path + ("?" + query if query else "")

    def headers(self, case: Case) -> None:
        r = self.rnd
        name = r.choice(list(HEADER_VALUES))
        choice = r.randrange(4)
        if choice == 0:  # replace
            case.headers = [(n, v) for n, v in case.headers if n.lower() != name.lower()]
            case.headers.append((name, r.choice(HEADER_VALUES[name])))
        elif choice == 1:  # duplicate
            case.headers.append((name, r.choice(HEADER_VALUES[name])))
        elif choice == 2 and case.headers:  # drop one
            case.headers.pop(r.randrange(len(case.headers)))
        else:  # case and spacing
            case.headers.append(
                (name.upper() if r.random() < 0.5 else name.lower(), r.choice(HEADER_VALUES[name]))
            )

    def body(self, case: Case) -> None:
        r = self.rnd
        body = bytearray(case.body or b"{}")
        choice = r.randrange(9)
        if choice == 0:
            body = body[: r.randrange(len(body) + 1)]
        elif choice == 1:
            for _ in range(r.randint(1, 4)):
                body[r.randrange(len(body))] = r.randrange(256)
        elif choice == 2:
            depth = r.choice([10, 100, 1000, 100_000])
            body = bytearray(b'{"a":' + b"[" * depth + b"]" * depth + b"}")
        elif choice == 3:
            body = bytearray(b'{"order":{"amount":1' + b"0" * r.choice([20, 400, 5000]) + b"}}")
        elif choice == 4:
            body = bytearray(b'{"loyalty":1,"loyalty":null,"a":NaN,"b":1e999}')
        elif choice == 5:
            body = bytearray(b"\xef\xbb\xbf" + bytes(body))
        elif choice == 6:
            body = bytearray(b'{"a":"\xff\xfe\xed"}')
        elif choice == 7:
            body = bytearray(json.dumps(["not", "an", "object"]).encode())
        else:
            body = bytearray(
                b'{"referral":{"code":"x"},"redeemables":' + b'[{"id":"a"}' + b',{"id":"b"}' * 50 + b"]}"
            )
        case.body = bytes(body)
        case.headers = [(n, v) for n, v in case.headers if n.lower() != "content-length"]

    def wire(self, case: Case) -> None:
        """Mutations only raw bytes can carry."""
        r = self.rnd
        raw = case.wire()
        choice = r.randrange(5)
        if choice == 0:
            raw = raw.replace(b"\r\n", b"\n")
        elif choice == 1:
            raw = raw.replace(b"\r\nOrigin:", b"\r\n Origin:", 1)  # obs-fold
        elif choice == 2:
            raw = raw.replace(b"Host: gateway.test", b"Host: gateway.test\r\nX-A: a\rb", 1)
        elif choice == 3:
            raw = raw.replace(b" HTTP/1.1", r.choice([b" HTTP/1.0", b" HTTP/2.0", b" HTTP/1.1 x", b""]), 1)
        else:
            raw = raw.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n", 1) + b"0\r\n\r\n"
        case.raw = raw


ANSWERS = [
    b'{"valid": true}',
    b'{"redeemables": [{"status": "APPLICABLE", "result": {"error": {"code": 404}}}]}',
    b'{"vouchers": [{"code": "A", "campaign": "c", "metadata": {"secret": 1}}], "total": 1}',
    b'{"vouchers": "not a list"}',
    b'{"vouchers": [1, null, "x"]}',
    b"[]",
    b"not json",
    b"",
    b'{"error": {"code": "404"}}',
    b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}",
]

# ------------------------------------------------------------------------------------------ targets

PARSE_ERRORS = {  # aiohttp's parser errors by name, as the gateway's log lines name an exception
    name for name, value in vars(http_exceptions).items()
    if isinstance(value, type) and issubclass(value, http_exceptions.HttpProcessingError)
}  # fmt: skip

POLICY = """\
listen: {max_body_bytes: 262144}
client_ip: {trusted_proxies: [127.0.0.1/32]}
rate_limit: {per_ip: 1000000 per second}
default_project: shop
projects:
  shop:
    region: UPSTREAM
    credentials: {client_application_id: fuzz-app, client_secret_key: fuzz-client-secret}
    allowed_origins: [https://shop.example.com, "https://*.example.org", "null"]
    danger_zone: {redeem: true, publish: true, list_vouchers: true, create_customers: true,
                  create_loyalty_referral_events: false}
  server:
    region: UPSTREAM
    upstream_auth: server
    credentials: {application_id: fuzz-server-app, secret_key: fuzz-server-secret}
    allowed_origins: [https://shop.example.com]
    danger_zone: {redeem: true, publish: true, list_vouchers: true, create_customers: true,
                  create_loyalty_referral_events: true}
"""


def policy_text(upstream: str) -> str:
    return POLICY.replace("UPSTREAM", upstream)


class InProcess:
    """decide -> check_body -> mode.request -> mode.response, without sockets."""

    def __init__(self) -> None:
        from gateway.compiled import compile_policy
        from gateway.policy import parse_policy

        self.policy = compile_policy(parse_policy(policy_text("http://127.0.0.1:9"), env={}))

    def run(self, case: Case) -> str | None:
        """None, or the crash's traceback."""
        from gateway.decide import Admit, check_body, decide
        from gateway.errors import Refused
        from gateway.models import UpstreamResponse

        try:
            decision = decide(self.policy, case.method, case.target, CIMultiDict(case.headers))
            if not isinstance(decision, Admit):
                return None
            target = decision.target
            mode = target.project.mode
            try:
                document = check_body(decision, case.body)
                mode.request(target, case.body, document)
                answer = UpstreamResponse(200, [("Content-Type", "application/json")], case.answer, 0.01)
                mode.response(target, answer)
            except Refused:
                return None
        except Exception:
            return traceback.format_exc()
        return None


class ThroughGateway:
    """A real gateway process in front of a stand-in upstream; each case on a fresh socket."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc: Any = None
        self.port = 0
        self.log = workdir / "gateway.log"
        self._offset = 0
        self._runner: Any = None
        self.parse_error_lines = 0  # aiohttp's error lines for requests it answered 400 itself

    async def start(self) -> None:
        import subprocess

        from aiohttp import web

        from bench.procs import free_port, wait_port

        async def answer(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(body=b'{"valid": true, "vouchers": []}', content_type="application/json")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        upstream_port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", upstream_port).start()
        config = self.workdir / "policy.yaml"
        config.write_text(policy_text(f"http://127.0.0.1:{upstream_port}"), encoding="utf-8")
        self.port = free_port()
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - once, at start-up
                [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(self.port)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        await asyncio.to_thread(wait_port, self.port, self.proc)

    async def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 15)
            except Exception:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait, 15)
        if self._runner is not None:
            await self._runner.cleanup()

    def _new_errors(self) -> list[str]:
        """The gateway's error lines since the last call, but aiohttp's own line for a request it could
        not parse (it answers those 400 itself, and logs each at error level: noted, not a crash)."""
        with self.log.open("rb") as log:
            log.seek(self._offset)
            data = log.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        found = []
        for line in complete.decode("utf-8", "replace").splitlines():
            if '"level": "error"' not in line and '"level": "critical"' not in line:
                continue
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("logger") == "aiohttp.server" and record.get("error") in PARSE_ERRORS:
                    self.parse_error_lines += 1
                    continue
            found.append(line)
        return found

    async def send(self, case: Case) -> int | None:
        """The answer's status; None when the connection closed without one."""
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return None
        try:
            writer.write(case.wire())
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 15)
            return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            return None  # the gateway may close on a request it cannot read: that is an answer
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def run_batch(self, cases: list[Case]) -> list[str | None]:
        """Each case's crash (a 500, an error line, the process gone) or None. The batch goes at once;
        when the log shows an error, each case is sent again alone to find which one it was."""
        if self.proc.poll() is not None:
            return [f"the gateway exited with {self.proc.returncode}"] * len(cases)
        statuses = await asyncio.gather(*(self.send(case) for case in cases))
        await asyncio.sleep(0.3)  # the gateway's log lines (batched every 0.2 s)
        errors = self._new_errors()
        if errors and len(cases) > 1:
            return [(await self.run_batch([case]))[0] for case in cases]
        if self.proc.poll() is not None:
            return [f"the gateway exited with {self.proc.returncode}"] * len(cases)
        return [
            f"status {status}; " + " | ".join(errors)[:4000] if status == 500 or errors else None
            for status in statuses
        ]

    async def run(self, case: Case) -> str | None:
        return (await self.run_batch([case]))[0]


# ------------------------------------------------------------------------------------------ the run


def keep(out: Path, case: Case, target: str, error: str) -> Path:
    data = case.to_json(target, error.strip().splitlines()[-1][:500] if error.strip() else error)
    key = json.dumps({k: v for k, v in data.items() if k != "error"}, sort_keys=True).encode()
    path = out / f"{target}-{hashlib.sha256(key).hexdigest()[:12]}.json"
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path


async def fuzz(seconds: float, seed: int, out: Path, plant: bool = False) -> int:
    rnd = random.Random(seed)
    mutator = Mutator(rnd)
    inprocess = InProcess()
    if plant:  # the smoke test's way to check that crashes are kept: one input that raises
        _plant(inprocess)
    runs = {"inprocess": 0, "gateway": 0}
    crashes: dict[str, int] = {"inprocess": 0, "gateway": 0}
    kept: set[Path] = set()
    with tempfile.TemporaryDirectory(prefix="gateway-fuzz-") as tmp:
        gateway = ThroughGateway(Path(tmp))
        await gateway.start()
        try:
            started = time.monotonic()
            next_report = started + 60
            while time.monotonic() - started < seconds:
                for _ in range(200):  # the in-process target is ~1000x faster: most inputs go there
                    case = mutator.case()
                    error = inprocess.run(case)
                    runs["inprocess"] += 1
                    if error is not None:
                        crashes["inprocess"] += 1
                        kept.add(keep(out, case, "inprocess", error))
                batch = [mutator.case() for _ in range(BATCH)]
                for case in batch:
                    if rnd.random() < 0.3:
                        mutator.wire(case)
                for case, error in zip(batch, await gateway.run_batch(batch), strict=True):
                    runs["gateway"] += 1
                    if error is not None:
                        crashes["gateway"] += 1
                        kept.add(keep(out, case, "gateway", error))
                if time.monotonic() >= next_report:
                    next_report += 60
                    print(f"{time.monotonic() - started:.0f}s: runs {runs}, crashes {crashes}", flush=True)
        finally:
            await gateway.close()
    print(f"fuzz: seed {seed}, {seconds:g}s, runs {runs}, crashes {crashes}, kept {len(kept)} case file(s)")
    print(
        f"noted: {gateway.parse_error_lines} error line(s) aiohttp wrote for requests it answered 400 itself"
    )
    for path in sorted(kept):
        print(f"  kept {path}")
    return 1 if kept else 0


def _plant(inprocess: InProcess) -> None:
    original = inprocess.run

    def run(case: Case) -> str | None:
        if case.method == "PUT":
            try:
                raise RuntimeError("planted crash")
            except RuntimeError:
                return traceback.format_exc()
        return original(case)

    inprocess.run = run  # type: ignore[method-assign]


async def replay(directory: Path) -> list[tuple[Path, str]]:
    """Every case file in `directory` through its target again: the ones that still crash."""
    failing: list[tuple[Path, str]] = []
    files = sorted(await asyncio.to_thread(lambda: list(directory.glob("*.json"))))
    inprocess = InProcess()
    gateway: ThroughGateway | None = None
    with tempfile.TemporaryDirectory(prefix="gateway-replay-") as tmp:
        try:
            for path in files:
                data = json.loads(path.read_text(encoding="utf-8"))
                case = Case.from_json(data)
                if data["target"] == "inprocess":
                    error = inprocess.run(case)
                else:
                    if gateway is None:
                        gateway = ThroughGateway(Path(tmp))
                        await gateway.start()
                    error = await gateway.run(case)
                if error is not None:
                    failing.append((path, error))
        finally:
            if gateway is not None:
                await gateway.close()
    return failing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", type=Path, default=REGRESSIONS, help="where crash cases are kept")
    parser.add_argument("--replay", type=Path, metavar="DIR", help="replay every case file in DIR")
    parser.add_argument("--plant", action="store_true", help=argparse.SUPPRESS)  # smoke test only
    args = parser.parse_args(argv)
    if args.replay is not None:
        failing = asyncio.run(replay(args.replay))
        for path, error in failing:
            print(f"still crashes: {path}: {error.strip().splitlines()[-1] if error.strip() else error}")
        print(f"replayed {len(list(args.replay.glob('*.json')))} case(s), {len(failing)} still crash")
        return 1 if failing else 0
    seconds = args.seconds if args.seconds is not None else (args.minutes or 60.0) * 60
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    return asyncio.run(fuzz(seconds, seed, args.out, args.plant))


if __name__ == "__main__":
    sys.exit(main())
