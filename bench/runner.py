"""`python -m bench [--smoke]`: start stubs, each contender and wrk in turn, print table and targets."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import configs, growth, instructions
from bench.configs import Load
from bench.load import LoadResult, run_wrk
from bench.procs import (
    Processes,
    children,
    cpu_seconds,
    cpus,
    ensure_tools,
    free_port,
    peak_rss_mb,
    pinned,
    progress,
    raise_nofile,
)

ROOT = Path(__file__).resolve().parent.parent
CONTENDERS = (  # scenarios (a) and (b)
    "direct",
    "bare-aiohttp",
    "bare-http1",
    "bare-httptools",  # bare-http1 without aiohttp's server: an asyncio protocol on httptools (info)
    "nginx",
    "gateway",  # issue 15's policy: every check and guard on (configs.policy_yaml), memory storage
    "gateway-redis",  # the same, every counter and record on Redis
    "gateway-tracing-1",  # tracing on, every request sampled, spans exported to the bench's own collector
    "gateway-tracing-001",  # tracing on at sample_ratio 0.01
)
SAMPLE_RATIOS = {"gateway-tracing-1": 1.0, "gateway-tracing-001": 0.01}
# Scenario (e): the gateway with a guard left out (configs.GUARD_KEYS): each guard's price is a difference.
VARIANTS = {
    "": frozenset[str](),
    "-no-failed-codes": frozenset({"failed_codes"}),
    "-no-quota": frozenset({"upstream_quota"}),
    "-no-guards": frozenset(configs.GUARD_KEYS),  # info: the policy before the second release
}
PRICED = tuple(f"gateway{store}{variant}" for store in ("", "-redis") for variant in VARIANTS)
ALL = (*CONTENDERS, *(name for name in PRICED if name not in CONTENDERS))
DELAY_MS = 100
SCENARIOS = ("a", "b", "c", "d", "e", "g", "w")
GUARDED = ("gateway", "gateway-redis")  # (c): the contenders whose policy has idempotency
CACHED = ("gateway", "gateway-redis")  # (d): a cache hit; the other readers forward every request
# (d): the bare proxies' forwards, the cache hits, and the gateway's own forward (gateway-no-guards: no cache)
READERS = ("bare-aiohttp", "bare-http1", *CACHED, "gateway-no-guards")
LOAD_CPU, CONTENDER_CPU = 0, 1  # wrk, stubs and redis share CPU 0; the contender has CPU 1 to itself


@dataclass(frozen=True)
class Sizes:
    rounds: int  # scenario (a) is run this many times, contenders interleaved; medians are reported
    warmup_s: float
    sat_s: float
    sat_conns: int
    rate: float
    rate_conns: int
    rate_s: float
    slow_conns: int
    slow_s: float
    small: bool = False  # scenarios (g) and (w) at a reduced size (bench/growth.py)
    served: tuple[int, int] = (instructions.WARM, instructions.SERVED)  # (a) under callgrind: warm, counted


FULL = Sizes(
    rounds=3,
    warmup_s=2,
    sat_s=10,
    sat_conns=64,
    rate=500,
    rate_conns=16,
    rate_s=10,
    slow_conns=configs.SLOW_CONNECTIONS,
    slow_s=15,
)
SMOKE = Sizes(
    rounds=1,
    warmup_s=0,
    sat_s=1,
    sat_conns=32,
    rate=200,
    rate_conns=8,
    rate_s=1,
    slow_conns=200,
    slow_s=2,
    small=True,
    served=(3, 10),
)


@dataclass
class Row:
    contender: str
    sat: list[LoadResult] = field(default_factory=list)
    paced: list[LoadResult] = field(default_factory=list)
    slow: LoadResult | None = None
    slow_rss_mb: float | None = None
    cpu_us: list[float] = field(default_factory=list)  # contender CPU time per request at saturation
    fail_open: dict[str, int] = field(default_factory=dict)  # scenario -> "store unavailable" log lines

    def median(self, results: list[LoadResult], attr: str) -> float:
        values = [float(getattr(r, attr)) for r in results]
        return statistics.median(values) if values else 0.0


@dataclass
class Probe:
    """Scenarios (c), (d) and (e): one contender sending one kind of request (configs.Load), each round."""

    contender: str
    kind: str  # redeem-fresh, redeem-replay, tiers, validation
    runs: list[LoadResult] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # the contender's CPU per request
    redis_cpu_us: list[float] = field(default_factory=list)  # redis-server's CPU per request (-redis only)
    redis_bytes: list[float] = field(default_factory=list)  # growth of Redis `used_memory` per request
    redis_calls: list[float] = field(default_factory=list)  # calls the gateway made per request (scripts)
    redis_commands: list[float] = field(
        default_factory=list
    )  # commands Redis ran per request, in scripts too
    redis_keys: int | None = None  # DBSIZE after the last run
    rss_mb: float | None = None  # the contender's peak RSS after its last run

    def median(self, attr: str) -> float | None:
        """The median of a LoadResult attribute over the rounds; for `errors`, their sum."""
        if attr == "errors":
            return float(sum(r.errors for r in self.runs))
        return _median([float(getattr(r, attr)) for r in self.runs])


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass(frozen=True)
class Contender:
    port: int
    pids: Callable[[], list[int]]  # the processes doing the work (nginx: its worker), for CPU and RSS
    stop: Callable[[], None]
    log: Path | None = None  # its stdout and stderr

    def fail_open_lines(self) -> int:
        """The gateway's "rate-limit store unavailable" lines: requests passed unlimited after each."""
        if self.log is None or not self.log.exists():
            return 0
        return self.log.read_text(errors="replace").count("rate-limit store unavailable")

    def peak_rss_mb(self) -> float | None:
        peaks = [p for p in (peak_rss_mb(pid) for pid in self.pids()) if p is not None]
        return max(peaks) if peaks else None


class Bench:
    def __init__(
        self,
        sizes: Sizes,
        workdir: Path,
        procs: Processes,
        contenders: tuple[str, ...],
        only: str | None = None,
        *,
        named: bool = False,
    ) -> None:
        self.scenarios = SCENARIOS if only is None else (only,)
        self.gateway_src = ROOT
        self.sizes = sizes
        self.workdir = workdir
        self.procs = procs
        self.contenders = contenders
        self.named = named  # the contenders were named (--only): (a) and (b) run them all
        self.row: list[str] = []  # (g): only the rows whose name holds one of these (--row)
        self.stub_port = {0: 0, DELAY_MS: 0}
        self.redis_port = 0
        self.redis_pid = 0
        self.stub_pid = 0  # the zero-latency stub's nginx master (its worker is its child)
        self.collector_port = 0
        self.probes: dict[tuple[str, str], Probe] = {}
        self.growth: list[growth.Measured] = []
        self.scaling: list[growth.Scaled] = []
        self.served: dict[str, float] = {}  # (a): instructions per request, bare-http1 and gateway

    def start_shared(self) -> None:
        for delay in self.stub_port:
            port = self.stub_port[delay] = free_port()
            conf = self.workdir / f"stub-{delay}.conf"
            conf.write_text(configs.stub_conf(self.workdir, port, delay))
            stub = self.procs.start(f"stub-{delay}ms", pinned(self._nginx(conf), LOAD_CPU), port=port)
            if delay == 0:
                self.stub_pid = stub.pid
        if any("-redis" in name for name in self.contenders):
            self.redis_port = free_port()
            cmd = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port), "--save", "",
                   "--appendonly", "no", "--dir", str(self.workdir), "--maxclients", "10000"]  # fmt: skip
            self.redis_pid = self.procs.start("redis", pinned(cmd, LOAD_CPU), port=self.redis_port).pid
        if any(name in SAMPLE_RATIOS for name in self.contenders):
            self.collector_port = free_port()
            cmd = [sys.executable, "-m", "bench.otlp_sink", str(self.collector_port)]
            self.procs.start("otlp-sink", pinned(cmd, LOAD_CPU), port=self.collector_port, cwd=ROOT)

    def _nginx(self, conf: Path) -> list[str]:
        return [
            "nginx",
            "-e",
            str(self.workdir / "nginx-startup.log"),
            "-p",
            str(self.workdir),
            "-c",
            str(conf),
        ]

    def start_contender(self, name: str, upstream: int) -> Contender:
        if name == "direct":
            return Contender(upstream, lambda: [], lambda: None)
        port = free_port()
        if name in configs.BARE:
            module = configs.BARE[name]
            cmd = [sys.executable, "-m", module, str(port), f"http://127.0.0.1:{upstream}"]
        elif name == "nginx":
            conf = self.workdir / f"proxy-{port}.conf"
            conf.write_text(configs.nginx_proxy_conf(self.workdir, port, upstream))
            cmd = self._nginx(conf)
        else:
            return self.start_gateway(name, self.gateway_policy(name, port, upstream), port)
        proc = self.procs.start(f"{name}-{port}", pinned(cmd, CONTENDER_CPU), port=port, cwd=ROOT)

        def pids() -> list[int]:
            return children(proc.pid) if name == "nginx" else [proc.pid]  # nginx: its one worker

        return Contender(port, pids, lambda: self.procs.stop(proc), self.procs.logdir / f"{name}-{port}.log")

    def gateway_policy(self, name: str, port: int, upstream: int, **shape: object) -> str:
        """The policy of a gateway contender: `gateway[-redis][<variant>]` or `gateway-tracing-*`; `shape`:
        more of configs.policy_yaml's arguments (scenario g)."""
        rest = name.removeprefix("gateway")
        on_redis = rest.startswith("-redis")
        storage = f"redis://127.0.0.1:{self.redis_port}/0" if on_redis else "memory://"
        tracing = None
        if name in SAMPLE_RATIOS:
            tracing = (f"http://127.0.0.1:{self.collector_port}/v1/traces", SAMPLE_RATIOS[name])
        without = VARIANTS.get(rest.removeprefix("-redis"), frozenset())
        return configs.policy_yaml(port, upstream, storage, tracing, without=without, **shape)  # type: ignore[arg-type]

    def start_gateway(
        self, name: str, policy: str, port: int, *, workers: int = 1, cpu: int | None = CONTENDER_CPU
    ) -> Contender:
        """`python -m gateway serve` on `policy`; with `workers` > 1, its pids are the parent and workers."""
        conf = self.workdir / f"policy-{port}.yaml"
        conf.write_text(policy)
        cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(conf)]
        if workers > 1:
            cmd += ["--workers", str(workers)]
        proc = self.procs.start(f"{name}-{port}", pinned(cmd, cpu), port=port, cwd=self.gateway_src)

        def pids() -> list[int]:
            return [proc.pid, *children(proc.pid)] if workers > 1 else [proc.pid]

        return Contender(port, pids, lambda: self.procs.stop(proc), self.procs.logdir / f"{name}-{port}.log")

    def load(
        self,
        port: int,
        *,
        connections: int,
        seconds: float,
        rate: float = 0.0,
        timeout_s: int = 10,
        load: Load = configs.VALIDATION,
        cpu: int | None = LOAD_CPU,
    ) -> LoadResult:
        return run_wrk(
            self.workdir, port, connections=connections, seconds=seconds, rate=rate, cpu=cpu,
            timeout_s=timeout_s, load=load,
        )  # fmt: skip

    def run(self) -> dict[str, Row]:
        s = self.sizes
        # (a) and (b): the CONTENDERS, or every contender named with --only
        relays = self.contenders if self.named else tuple(n for n in self.contenders if n in CONTENDERS)
        rows = {name: Row(name) for name in relays}
        for round_no in range(s.rounds if "a" in self.scenarios else 0):
            for name in relays:
                progress(f"(a) round {round_no + 1}/{s.rounds}: {name}")
                c = self.start_contender(name, self.stub_port[0])
                try:
                    if s.warmup_s:
                        self.load(c.port, connections=s.sat_conns, seconds=s.warmup_s)
                    cpu_before = cpu_seconds(c.pids())
                    sat = self.load(c.port, connections=s.sat_conns, seconds=s.sat_s)
                    if name != "direct" and sat.requests:
                        rows[name].cpu_us.append((cpu_seconds(c.pids()) - cpu_before) / sat.requests * 1e6)
                    rows[name].sat.append(sat)
                    rows[name].paced.append(
                        self.load(c.port, connections=s.rate_conns, seconds=s.rate_s, rate=s.rate)
                    )
                finally:
                    c.stop()
                rows[name].fail_open["a"] = rows[name].fail_open.get("a", 0) + c.fail_open_lines()
        if "a" in self.scenarios and {"gateway", "bare-http1"} <= set(relays):
            progress("(a) instructions per request under callgrind: bare-http1, gateway")
            self.served = instructions.served(self, *s.served)
        for name in relays if "b" in self.scenarios else ():
            progress(f"(b) {s.slow_conns} connections, upstream {DELAY_MS} ms: {name}")
            c = self.start_contender(name, self.stub_port[DELAY_MS])
            try:
                self.load(c.port, connections=64, seconds=1)  # open the upstream pool first
                rows[name].slow = self.load(c.port, connections=s.slow_conns, seconds=s.slow_s, timeout_s=20)
                rows[name].slow_rss_mb = c.peak_rss_mb()
            finally:
                c.stop()
            rows[name].fail_open["b"] = c.fail_open_lines()
        for round_no in range(s.rounds if "c" in self.scenarios else 0):
            for name in (n for n in self.contenders if n in GUARDED):
                progress(f"(c) round {round_no + 1}/{s.rounds}: {name}, redemptions with Idempotency-Key")
                c = self.start_contender(name, self.stub_port[0])
                try:
                    key = f"bench-{round_no}-{time.time_ns()}"
                    if s.warmup_s:
                        self.load(c.port, connections=s.sat_conns, seconds=s.warmup_s,
                                  load=Load("redeem-fresh", f"{key}-warm"))  # fmt: skip
                    self.measure(name, c, Load("redeem-fresh", f"{key}-first"))
                    self.prime(c.port, "redeem-replay", f"{key}-replay")
                    if s.warmup_s:
                        self.load(c.port, connections=s.sat_conns, seconds=s.warmup_s,
                                  load=Load("redeem-replay", f"{key}-replay"))  # fmt: skip
                    self.measure(name, c, Load("redeem-replay", f"{key}-replay"))
                finally:
                    c.stop()
        for round_no in range(s.rounds if "d" in self.scenarios else 0):
            for name in (n for n in self.contenders if n in READERS):
                progress(f"(d) round {round_no + 1}/{s.rounds}: {name}, GET promotion tiers")
                c = self.start_contender(name, self.stub_port[0])
                try:
                    self.prime(c.port, "tiers", "", cached=name in CACHED)
                    if s.warmup_s:
                        self.load(c.port, connections=s.sat_conns, seconds=s.warmup_s, load=Load("tiers"))
                    self.measure(name, c, Load("tiers"))
                finally:
                    c.stop()
        for round_no in range(s.rounds if "e" in self.scenarios else 0):
            for name in (n for n in self.contenders if n in PRICED):
                progress(f"(e) round {round_no + 1}/{s.rounds}: {name}, validations")
                if name.startswith("gateway-redis"):
                    self.redis_cli("FLUSHALL")  # each variant's keys and memory on their own
                c = self.start_contender(name, self.stub_port[0])
                try:
                    if s.warmup_s:
                        self.load(c.port, connections=s.sat_conns, seconds=s.warmup_s)
                    self.measure(name, c, configs.VALIDATION)
                finally:
                    c.stop()
        if "g" in self.scenarios and "gateway" in self.contenders:
            chosen = [r for r in growth.rows(s.small) if not self.row or any(w in r.name for w in self.row)]
            self.growth = growth.run(self, tuple(chosen))
        if "w" in self.scenarios and "gateway" in self.contenders:
            self.scaling = growth.run_workers(self, s.small)
        return rows

    def measure(self, name: str, c: Contender, load: Load) -> None:
        """One saturation run of `load`: the contender's CPU, Redis's CPU, commands and memory growth, peak
        RSS."""
        probe = self.probes.setdefault((name, load.kind), Probe(name, load.kind))
        on_redis = name.startswith("gateway-redis") and self.redis_port
        redis_before = self.redis_stats() if on_redis else (0.0, 0, 0, 0)
        redis_cpu = cpu_seconds([self.redis_pid]) if on_redis else 0.0
        cpu_before = cpu_seconds(c.pids())
        run = self.load(c.port, connections=self.sizes.sat_conns, seconds=self.sizes.sat_s, load=load)
        if run.requests:
            probe.cpu_us.append((cpu_seconds(c.pids()) - cpu_before) / run.requests * 1e6)
            if on_redis:
                probe.redis_cpu_us.append((cpu_seconds([self.redis_pid]) - redis_cpu) / run.requests * 1e6)
                used, keys, calls, commands = self.redis_stats()
                probe.redis_bytes.append((used - redis_before[0]) / run.requests)
                probe.redis_calls.append((calls - redis_before[2]) / run.requests)
                probe.redis_commands.append((commands - redis_before[3]) / run.requests)
                probe.redis_keys = keys
        probe.runs.append(run)
        probe.rss_mb = c.peak_rss_mb()

    def redis_cli(self, *command: str) -> str:
        cli = ["redis-cli", "-h", "127.0.0.1", "-p", str(self.redis_port), *command]
        return subprocess.run(cli, capture_output=True, text=True, timeout=10, check=True).stdout

    def redis_stats(self) -> tuple[float, int, int, int]:
        """Redis's `used_memory` (bytes), DBSIZE, the calls clients made (INFO commandstats: the gateway's
        are EVALSHA, one Lua script each, plus a PING per readiness probe) and every command Redis ran
        (those scripts' own commands too), less the bench's own INFO, DBSIZE and FLUSHALL; via redis-cli."""
        info = self.redis_cli("INFO", "memory")
        used = next(int(x.split(":")[1]) for x in info.splitlines() if x.startswith("used_memory:"))
        size = int(self.redis_cli("DBSIZE").strip() or 0)
        calls = commands = 0
        for line in self.redis_cli("INFO", "commandstats").splitlines():
            name, _, stats = line.partition(":")
            command = name.removeprefix("cmdstat_")
            if name.startswith("cmdstat_") and command not in ("info", "dbsize", "flushall"):
                count = int(stats.split(",")[0].removeprefix("calls="))
                commands += count
                if command.startswith(("eval", "fcall", "ping")):  # what clients send; scripts never do
                    calls += count
        return float(used), size, calls, commands

    def prime(self, port: int, kind: str, key: str, *, cached: bool = False) -> None:
        """Send the request twice before the load: the first redeems (or fills the cache), the second must
        already be the replay (`Idempotent-Replayed: true`) or the hit (`Age`), or the scenario measures
        something else and the bench stops."""
        for attempt in range(2):
            if kind == "tiers":
                req = urllib.request.Request(f"http://127.0.0.1:{port}{configs.TIERS_PATH}", method="GET")
            else:
                url = f"http://127.0.0.1:{port}{configs.REDEEM_PATH}"
                req = urllib.request.Request(url, data=configs.REDEEM_BODY.encode(), method="POST")
                req.add_header("Content-Type", "application/json")
                req.add_header("Idempotency-Key", key)
            req.add_header("Origin", configs.ORIGIN)
            with urllib.request.urlopen(req, timeout=10) as answer:
                answer.read()
                headers = answer.headers
            if attempt == 1 and kind == "redeem-replay" and headers.get("Idempotent-Replayed") != "true":
                raise RuntimeError(f"the second keyed redemption on :{port} was not a replay")
            if attempt == 1 and cached and headers.get("Age") is None:
                raise RuntimeError(f"the second listing on :{port} was not a cache hit (no Age)")


def _version(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    out = (done.stdout + done.stderr).strip().splitlines()
    return out[0] if out else "?"


def machine() -> dict[str, str]:
    import aiohttp
    import limits

    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cpus": str(cpus()),
        "cpu": model,
        "load": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "uvloop": importlib.metadata.version("uvloop"),
        "limits": limits.__version__,
        "nginx": _version(["nginx", "-v"]),
        "wrk": _version(["wrk", "-v"]).split(" [")[0],
        "redis": _version(["redis-server", "--version"]).split(" sha=")[0],
    }


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: dict[str, Row], s: Sizes) -> str:
    lines = [
        f"(a) upstream answers at once; saturation: wrk -c{s.sat_conns}, {s.sat_s:g}s x {s.rounds} rounds "
        f"(medians); fixed rate: {s.rate:g} req/s over {s.rate_conns} connections, Lua-paced",
        "",
        "| contender | req/s | p50 ms | p99 ms | errors | CPU µs/req | fixed-rate req/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows.values():
        m = row.median
        lines.append(
            f"| {row.contender} | {m(row.sat, 'rps'):.0f} | {_f(m(row.sat, 'p50_ms'))}"
            f" | {_f(m(row.sat, 'p99_ms'))} | {sum(r.errors for r in row.sat)}"
            f" | {_f(statistics.median(row.cpu_us), 0) if row.cpu_us else '-'} | {m(row.paced, 'rps'):.0f}"
            f" | {_f(m(row.paced, 'p50_ms'), 3)} | {_f(m(row.paced, 'p99_ms'), 3)} |"
        )
    if not any(row.slow for row in rows.values()):
        return "\n".join(lines)
    lines += [
        "",
        f"(b) upstream answers after {DELAY_MS} ms; wrk -c{s.slow_conns}, {s.slow_s:g}s",
        "",
        "| contender | req/s | p50 ms | p99 ms | errors | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows.values():
        slow = row.slow
        if slow is None:
            continue
        lines.append(
            f"| {row.contender} | {slow.rps:.0f} | {_f(slow.p50_ms, 1)} | {_f(slow.p99_ms, 1)}"
            f" | {slow.errors} | {_f(row.slow_rss_mb, 1)} |"
        )
    return "\n".join(lines)


def guard_tables(probes: dict[tuple[str, str], Probe], s: Sizes) -> str:
    """Scenarios (c), (d) and (e), each with its ratios (informational; the targets are in `targets`)."""
    size = f"wrk -c{s.sat_conns}, {s.sat_s:g}s x {s.rounds} rounds (medians)"
    lines: list[str] = []
    keyed = [p for p in probes.values() if p.kind.startswith("redeem")]
    if keyed:
        lines += [
            f"(c) POST {configs.REDEEM_PATH} with Idempotency-Key; {size}; first use: a fresh "
            "key per request (redeemed, answer kept), replay: one key (kept answer sent again)",
            "",
            f"| contender | key | req/s | p50 ms | p99 ms | errors | {REDIS_COLUMNS} | peak RSS MB |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for p in keyed:
            lines.append(
                f"| {p.contender} | {'first use' if p.kind == 'redeem-fresh' else 'replay'}"
                f" | {_f(p.median('rps'), 0)} | {_f(p.median('p50_ms'))} | {_f(p.median('p99_ms'))}"
                f" | {_f(p.median('errors'), 0)} | {_redis_cells(p)} | {_f(p.rss_mb, 1)} |"
            )
        for name in GUARDED:
            first, replay = probes.get((name, "redeem-fresh")), probes.get((name, "redeem-replay"))
            a, b = (_median(first.cpu_us) if first else None), (_median(replay.cpu_us) if replay else None)
            if a and b:
                lines.append(f"  info  {name}: a replay costs {b / a:.2f} x a first use in CPU per request")
        lines.append("")
    reads = [p for p in probes.values() if p.kind == "tiers"]
    if reads:
        lines += [
            f"(d) GET {configs.TIERS_PATH}; {size}; gateway and gateway-redis: `cache.ttl: 30`, a hit after "
            "the first request; the others forward every request (gateway-no-guards: no cache)",
            "",
            "| contender | read | req/s | p50 ms | p99 ms | errors | CPU µs/req |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for p in reads:
            lines.append(
                f"| {p.contender} | {'cache hit' if p.contender in CACHED else 'forwarded'}"
                f" | {_f(p.median('rps'), 0)} | {_f(p.median('p50_ms'))} | {_f(p.median('p99_ms'))}"
                f" | {_f(p.median('errors'), 0)} | {_f(_median(p.cpu_us), 0)} |"
            )
        lines.append("")
    priced = [p for p in probes.values() if p.kind == "validation"]
    if priced:
        lines += [
            f"(e) the guards' price: POST {configs.PATH} (a code that exists), each guard left out in turn; "
            f"{size}",
            "",
            f"| contender | guards left out | req/s | p50 ms | p99 ms | errors | {REDIS_COLUMNS}"
            " | peak RSS MB |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for p in priced:
            left_out = VARIANTS[p.contender.removeprefix("gateway").removeprefix("-redis")]
            lines.append(
                f"| {p.contender} | {', '.join(sorted(left_out)) or 'none'} | {_f(p.median('rps'), 0)}"
                f" | {_f(p.median('p50_ms'))} | {_f(p.median('p99_ms'))} | {_f(p.median('errors'), 0)}"
                f" | {_redis_cells(p)} | {_f(p.rss_mb, 1)} |"
            )
    return "\n".join(lines).rstrip()


REDIS_COLUMNS = (
    "CPU µs/req | Redis CPU µs/req | Redis calls/req | Redis commands/req | Redis bytes/req | Redis keys"
)


def _redis_cells(p: Probe) -> str:
    """The REDIS_COLUMNS: calls are the gateway's (EVALSHA: one Lua script, one round trip at most, fewer
    when a loop turn's calls share a pipeline); commands count those scripts' own commands too."""
    return (
        f"{_f(_median(p.cpu_us), 0)} | {_f(_median(p.redis_cpu_us), 0)} | {_f(_median(p.redis_calls))}"
        f" | {_f(_median(p.redis_commands), 1)} | {_f(_median(p.redis_bytes), 0)}"
        f" | {p.redis_keys if p.redis_keys is not None else '-'}"
    )


def guard_targets(probes: dict[tuple[str, str], Probe]) -> list[str]:
    """Issue 14: a cache hit against the bare proxy's forward (and issue 15: bare-http1's); issues 12 and
    14: each guard's own price."""
    out: list[str] = []
    cpu = {p.contender: _median(p.cpu_us) for p in probes.values() if p.kind == "tiers"}
    hit = cpu.get("gateway")
    for bare_name in ("bare-aiohttp", "bare-http1"):
        bare = cpu.get(bare_name)
        if hit and bare:
            verdict = "PASS" if hit < bare else "MISS"
            out.append(
                f"  {verdict}  (d) gateway cache hit cheaper than {bare_name}'s forward: {hit:.0f} against"
                f" {bare:.0f} µs per request ({hit / bare:.2f}x, {hit - bare:+.0f} µs)"
            )
    forward = cpu.get("gateway-no-guards")
    if hit and forward:
        out.append(
            f"  info  (d) gateway cache hit = {hit / forward:.2f} x the gateway's own forward (no cache)"
        )

    def of(name: str, attr: str) -> float | None:
        probe = probes.get((name, "validation"))
        return _median(getattr(probe, attr)) if probe is not None else None

    for guard, variant in (("failed_codes", "-no-failed-codes"), ("upstream_quota", "-no-quota")):
        for store in ("", "-redis"):
            full, without = f"gateway{store}", f"gateway{store}{variant}"
            a, b = of(full, "cpu_us"), of(without, "cpu_us")
            if a is None or b is None:
                continue
            text = (
                f"{guard} on {'Redis' if store else 'memory'}: {a - b:+.0f} µs of gateway CPU per validation"
            )
            text += f" ({a:.0f} with, {b:.0f} without)"
            if store:
                ra, rb = of(full, "redis_cpu_us"), of(without, "redis_cpu_us")
                ca, cb = of(full, "redis_calls"), of(without, "redis_calls")
                ba, bb = of(full, "redis_bytes"), of(without, "redis_bytes")
                if ra is not None and rb is not None:
                    text += f", {ra - rb:+.0f} µs of Redis CPU"
                if ca is not None and cb is not None:
                    text += f", {ca - cb:+.2f} Redis calls per request ({ca:.2f} with, {cb:.2f} without)"
                if ba is not None and bb is not None:
                    text += f", {ba - bb:+.0f} Redis bytes per request"
            rss_a, rss_b = probes[(full, "validation")].rss_mb, probes[(without, "validation")].rss_mb
            if rss_a is not None and rss_b is not None:
                text += f"; peak RSS {rss_a - rss_b:+.1f} MB"
            out.append(f"  info  (e) {text}")
    return out


def targets(rows: dict[str, Row]) -> list[str]:
    """Each target as a ratio measured in this run, PASS or MISS (informational: the command exits 0)."""
    out: list[str] = []

    def rps(name: str) -> float | None:
        return rows[name].median(rows[name].sat, "rps") if name in rows and rows[name].sat else None

    def check(label: str, value: float | None, ok: Callable[[float], bool], fmt: str) -> None:
        if value is None:
            out.append(f"  ----  {label}: not measured")
        else:
            out.append(f"  {'PASS' if ok(value) else 'MISS'}  {label}: {fmt.format(value)}")

    if not any(row.sat or row.slow for row in rows.values()):
        return out
    cpu = {n: statistics.median(r.cpu_us) for n, r in rows.items() if r.cpu_us}
    bare, lean, gw, gwr, ngx = (
        rps(n) for n in ("bare-aiohttp", "bare-http1", "gateway", "gateway-redis", "nginx")
    )
    if rows.get("gateway") and rows["gateway"].sat:
        check(
            "gateway ≥ 0.7 x bare-http1 req/s",
            gw / lean if gw and lean else None,
            lambda v: v >= 0.7,
            "{:.2f}x",
        )
        lean_cpu, gw_cpu = cpu.get("bare-http1"), cpu.get("gateway")
        check(
            "gateway ≥ 0.7 x bare-http1 in CPU per request (bare-http1's µs/req over the gateway's)",
            lean_cpu / gw_cpu if lean_cpu and gw_cpu else None,
            lambda v: v >= 0.7,
            "{:.2f}x" + (f" ({lean_cpu:.0f} / {gw_cpu:.0f} µs)" if lean_cpu and gw_cpu else ""),
        )
        check(
            "gateway-redis ≥ 0.85 x gateway req/s",
            gwr / gw if gw and gwr else None,
            lambda v: v >= 0.85,
            "{:.2f}x",
        )
        check(
            "gateway ≥ 0.9 x bare aiohttp req/s",
            gw / bare if gw and bare else None,
            lambda v: v >= 0.9,
            "{:.2f}x",
        )
    if "gateway" in rows and "bare-aiohttp" in rows and rows["gateway"].paced and rows["bare-aiohttp"].paced:
        added = rows["gateway"].median(rows["gateway"].paced, "p50_ms") - rows["bare-aiohttp"].median(
            rows["bare-aiohttp"].paced, "p50_ms"
        )
        check("gateway p50 over bare aiohttp at fixed rate ≤ 0.5 ms", added, lambda v: v <= 0.5, "{:+.3f} ms")
    for name in ("gateway", "gateway-redis", *SAMPLE_RATIOS):
        row = rows.get(name)
        if row is None or row.slow is None:
            continue
        kinds = f" ({row.slow.error_kinds})" if row.slow.errors else ""
        check(f"{name} (b): no errors", float(row.slow.errors), lambda v: v == 0, "{:.0f} errors" + kinds)
        check(f"{name} (b): peak RSS < 200 MB", row.slow_rss_mb, lambda v: v < 200, "{:.1f} MB")
    for name, ratio in SAMPLE_RATIOS.items():
        if name not in rows or not rows[name].sat:
            continue
        share = cpu[name] / cpu["gateway"] if name in cpu and "gateway" in cpu else None
        if ratio == 1.0:
            label = "gateway-tracing-1 CPU per request ≤ 1.15 x gateway (tracing off)"
            check(label, share, lambda v: v <= 1.15, "{:.2f}x")
        elif share is not None:
            out.append(f"  info  {name} CPU per request = {share:.2f} x gateway (tracing off)")
    info = []
    if gw and ngx:
        info.append(f"gateway = {gw / ngx:.2f} x nginx")
    if gwr and ngx:
        info.append(f"gateway-redis = {gwr / ngx:.2f} x nginx")
    if bare and ngx:
        info.append(f"bare aiohttp = {bare / ngx:.2f} x nginx")
    if gwr and lean:
        info.append(f"gateway-redis = {gwr / lean:.2f} x bare-http1")
    if info:
        out.append("  info  " + "; ".join(info) + " (req/s at saturation)")
    if "bare-http1" in cpu and "bare-httptools" in cpu:
        server = cpu["bare-http1"] - cpu["bare-httptools"]
        out.append(
            f"  info  aiohttp's server layer (bare-http1 - bare-httptools): {server:.0f} µs of bare-http1's "
            f"{cpu['bare-http1']:.0f} µs per request"
        )
    if "bare-http1" in cpu:
        shares = [f"{n} {cpu[n] / cpu['bare-http1']:.2f}" for n in cpu if n != "bare-http1"]
        out.append(
            "  info  CPU per request relative to bare-http1 (less sensitive to a busy machine): "
            + ", ".join(shares)
        )
    for scenario, lines in sorted(rows["gateway-redis"].fail_open.items() if "gateway-redis" in rows else ()):
        check(  # a Redis that is up, called down by a saturated gateway: requests passed unlimited
            f"gateway-redis ({scenario}): the limit store never counted down (no fail-open)",
            lines,
            lambda v: v == 0,
            "{:.0f} 'store unavailable' line(s) in its log",
        )
    return out


def _stop_on_signal(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through `finally`: every process is stopped


def main(argv: list[str] | None = None) -> int:
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):  # SIGINT too: `cmd &` starts with it ignored
        signal.signal(sig, _stop_on_signal)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--smoke", action="store_true", help="a few seconds per contender, no targets asserted"
    )
    parser.add_argument(
        "--only", nargs="+", choices=ALL, help="run only these contenders ((g) and (w) need gateway)"
    )
    parser.add_argument("--rounds", type=int, help="rounds of scenario (a)")
    parser.add_argument("--seconds", type=float, help="length of each measured run of scenario (a)")
    parser.add_argument(
        "--scenario",
        choices=SCENARIOS,
        help="run only this scenario: a validations, b slow upstream, c keyed redemptions, d cached reads, "
        "e each guard's price, g how the cost grows, w --workers 1 and 2",
    )
    parser.add_argument(
        "--row", nargs="+", default=[], help="(g): only the rows whose name holds one of these words"
    )
    parser.add_argument("--gateway-src", type=Path, help="run the gateway package found in this checkout")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    if args.rounds:
        sizes = Sizes(**{**asdict(sizes), "rounds": args.rounds})
    if args.seconds:
        sizes = Sizes(**{**asdict(sizes), "sat_s": args.seconds, "rate_s": args.seconds})
    contenders = tuple(args.only) if args.only else ALL

    ensure_tools()
    nofile = raise_nofile()
    info = machine()
    pin = (
        f"wrk, stubs and redis on CPU {LOAD_CPU}, the contender on CPU {CONTENDER_CPU} (taskset)"
        if cpus() >= 2 and shutil.which("taskset")
        else "no CPU pinning (fewer than 2 CPUs or no taskset)"
    )
    print(f"bench{' --smoke' if args.smoke else ''}: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    print(f"pinning: {pin}; open files {nofile}; nginx, gateway and proxies run one process/worker each")
    print(f"stubs: nginx `return 200` (zero latency) and nginx echo_sleep {DELAY_MS / 1000:g} (scenario b)")
    sys.stdout.flush()

    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    started = time.monotonic()
    try:
        with Processes(workdir) as procs:
            bench = Bench(sizes, workdir, procs, contenders, args.scenario, named=bool(args.only))
            bench.row = args.row
            if args.gateway_src:
                bench.gateway_src = args.gateway_src.resolve()
            bench.start_shared()
            rows = bench.run()
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if {"a", "b"} & set(bench.scenarios):
        print()
        print(table(rows, sizes))
    if bench.probes:
        print()
        print(guard_tables(bench.probes, sizes))
    if bench.growth:
        print()
        print(growth.table(bench.growth, sizes.rounds, sizes.sat_s))
    if bench.scaling:
        print()
        print(growth.workers_table(bench.scaling, cpus(), sizes.rounds, sizes.sat_s))
    print()
    print("targets" + (" (smoke run: sizes too small to mean anything)" if args.smoke else "") + ":")
    served = [instructions.served_line(bench.served)] if bench.served else []
    print("\n".join([*targets(rows), *served, *guard_targets(bench.probes), *growth.targets(bench.growth)]))
    print(f"\ndone in {time.monotonic() - started:.0f}s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "machine": info,
            "sizes": asdict(sizes),
            "rows": {k: asdict(v) for k, v in rows.items()},
            "guards": [asdict(p) for p in bench.probes.values()],
            "growth": [asdict(m) for m in bench.growth],
            "workers": [asdict(w) for w in bench.scaling],
            "instructions": bench.served,
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0
