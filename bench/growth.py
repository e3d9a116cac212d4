"""Scenarios (g) and (w): how the gateway's cost grows with its work, and what `--workers N` gives.

(g) Each row is one kind of work at a small and a large size (the body row: four sizes). Every case of a row
is its own gateway process, all started together on the contender's CPU and loaded in turn (one at a time),
round after round, so each ratio is between runs minutes apart at most on one machine state. A case's figure
is its CPU time per request at saturation (median of the rounds); a row passes when its largest case costs
at most 1.1x its smallest. The body row is reported per KB instead: it grows with the bytes by design.

Clients: the window must hold every client, so both cases count per IP per hour (the bench's usual minute
cannot hold a million clients sent by one core), and before the measured rounds each gateway is sent one
request per client (the fill: 1,000,000 distinct X-Forwarded-For values for the large case); the measured
runs go on naming clients from where the fill stopped, so they revisit clients the window holds.

(w) `--workers 1` and `--workers 2` unpinned (the contender, wrk and the stub share the machine's CPUs),
rounds interleaved: req/s, and the CPU each took (the gateway's processes, wrk's own, the stub's), so a
figure per gateway core can be read off.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from bench import configs
from bench.configs import Load
from bench.procs import children, cpu_seconds, free_port, progress

if TYPE_CHECKING:
    from bench.runner import Bench, Contender

FLAT = 1.1  # issue 15: each row's largest case within 1.1x its smallest in CPU per request


@dataclass(frozen=True)
class Case:
    label: str
    size: float  # the work in its row's unit (entries, projects, clients, bytes)
    shape: dict[str, object]  # configs.policy_yaml's arguments besides the usual ones
    load: Load
    fill: int = 0  # requests sent (one per client) before the measured rounds


@dataclass(frozen=True)
class Row:
    name: str
    unit: str
    cases: tuple[Case, ...]
    flat: bool = True  # False: reported per KB, no PASS/MISS (the body row)


@dataclass
class Measured:
    row: Row
    cpu_us: dict[str, list[float]] = field(default_factory=dict)  # case label -> CPU µs/req per round
    rps: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    rss_mb: dict[str, float | None] = field(default_factory=dict)  # VmRSS after the last round
    evictions: dict[str, int] = field(default_factory=dict)  # "store full" lines in the gateway's log

    def cpu(self, label: str) -> float | None:
        values = self.cpu_us.get(label)
        return statistics.median(values) if values else None


def rows(small: bool) -> tuple[Row, ...]:
    """The growth rows at full size, or (`small`) tiny ones that only prove the machinery (smoke)."""
    origins = 20 if small else 2000
    projects = 5 if small else 200
    clients = (100, 1000) if small else (10_000, 1_000_000)
    bodies = (200, 2_000, 20_000) if small else (200, 2_000, 20_000, 200_000)
    sent = configs.sent_origins(origins, 64)  # both lists allow every one of them
    hour: dict[str, object] = {"per_ip": "1000 per hour"}
    return (
        Row(
            "allowed origins, 64 origins in turn",
            "entries",
            tuple(
                Case(f"{n}", n, {"origins": configs.origin_entries(n)}, Load(origins=sent))
                for n in (2, origins)
            ),
        ),
        Row(
            "allowed origins, a new origin per request",
            "entries",
            tuple(
                Case(f"{n}", n, {"origins": configs.origin_entries(n)}, Load(fresh_origins=origins // 2))
                for n in (2, origins)
            ),
        ),
        Row(
            "projects, requests spread over all",
            "projects",
            tuple(Case(f"{n}", n, {"projects": n}, Load(projects=n)) for n in (1, projects)),
        ),
        Row(
            "distinct clients in the limit window",
            "clients",
            tuple(Case(f"{n:,}", n, hour, Load(clients=n), fill=n) for n in clients),
        ),
        Row(
            "request body",
            "",
            tuple(Case(f"{n / 1000:g} KB", n, {}, Load(body=configs.validation_body(n))) for n in bodies),
            flat=False,
        ),
    )


def run(bench: Bench, growth_rows: tuple[Row, ...]) -> list[Measured]:
    s = bench.sizes
    out = []
    for row in growth_rows:
        measured = Measured(row)
        gateways: list[tuple[Case, Contender]] = []
        try:
            for case in row.cases:
                port = free_port()
                policy = bench.gateway_policy("gateway", port, bench.stub_port[0], **case.shape)
                gateways.append((case, bench.start_gateway(f"growth-{case.label}", policy, port)))
            sent = {case.label: fill(bench, c, case) for case, c in gateways}
            for round_no in range(max(s.rounds, 1)):
                for case, c in gateways:
                    progress(f"(g) round {round_no + 1}/{s.rounds}: {row.name}, {case.label}")
                    load = replace(case.load, start=sent[case.label])
                    before = cpu_seconds(c.pids())
                    result = bench.load(c.port, connections=s.sat_conns, seconds=s.sat_s, load=load)
                    sent[case.label] += result.requests
                    if result.requests:
                        cpu = (cpu_seconds(c.pids()) - before) / result.requests * 1e6
                        measured.cpu_us.setdefault(case.label, []).append(cpu)
                        measured.rps.setdefault(case.label, []).append(result.rps)
                    measured.errors[case.label] = measured.errors.get(case.label, 0) + result.errors
            for case, c in gateways:
                measured.rss_mb[case.label] = rss_mb(c.pids())
                measured.evictions[case.label] = _store_full_lines(c.log)
        finally:
            for _, c in gateways:
                c.stop()
        out.append(measured)
    return out


def fill(bench: Bench, c: Contender, case: Case) -> int:
    """Send `case.fill` requests (one per client, new clients each run), then a warm-up; the requests sent."""
    s, sent, rate = bench.sizes, 0, 2000.0
    while sent < case.fill:
        seconds = min(max((case.fill - sent) / rate, 1.0), 30.0)
        progress(f"(g) fill {case.label}: {sent:,} of {case.fill:,} clients")
        load = replace(case.load, start=sent)
        result = bench.load(c.port, connections=s.sat_conns, seconds=seconds, load=load)
        sent += result.requests
        rate = max(result.rps, 100.0)
    if s.warmup_s:
        load = replace(case.load, start=sent)
        sent += bench.load(c.port, connections=s.sat_conns, seconds=s.warmup_s, load=load).requests
    return sent


def rss_mb(pids: list[int]) -> float | None:
    """VmRSS (what the process holds now) of `pids` together, in MB."""
    total, found = 0, False
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("VmRSS:"):
                total, found = total + int(line.split()[1]), True
    return total / 1024 if found else None


def _store_full_lines(log: Path | None) -> int:
    if log is None or not log.exists():
        return 0
    return log.read_text(errors="replace").count("store full")


def _f(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(measured: list[Measured], rounds: int, seconds: float) -> str:
    lines = [
        f"(g) how the cost grows: validations, every case its own gateway, cases interleaved; wrk, "
        f"{seconds:g}s x {rounds} rounds (medians); ratio: CPU per request over the row's smallest case",
        "",
        "| row | case | req/s | CPU µs/req | ratio | errors | RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for m in measured:
        base = m.cpu(m.row.cases[0].label)
        for case in m.row.cases:
            cpu = m.cpu(case.label)
            rps = statistics.median(m.rps[case.label]) if m.rps.get(case.label) else None
            ratio = cpu / base if cpu and base else None
            lines.append(
                f"| {m.row.name} | {case.label} {m.row.unit}".rstrip()
                + f" | {_f(rps)} | {_f(cpu)} | {_f(ratio, 2)}"
                f" | {m.errors.get(case.label, 0)} | {_f(m.rss_mb.get(case.label), 1)} |"
            )
    return "\n".join(lines)


def targets(measured: list[Measured]) -> list[str]:
    out = []
    for m in measured:
        first, last = m.row.cases[0], m.row.cases[-1]
        base, top = m.cpu(first.label), m.cpu(last.label)
        if base is None or top is None:
            out.append(f"  ----  (g) {m.row.name}: not measured")
            continue
        if m.row.flat:
            verdict = "PASS" if top / base <= FLAT else "MISS"
            out.append(
                f"  {verdict}  (g) {m.row.name} {first.label} -> {last.label}: CPU per request"
                f" ≤ {FLAT} x: {top / base:.2f}x ({base:.0f} -> {top:.0f} µs)"
            )
            rounds = zip(m.cpu_us[first.label], m.cpu_us[last.label], strict=False)  # interleaved pairs
            out.append(
                f"  info  (g) {m.row.name}: the ratio round by round (how far one run's verdict can move): "
                + ", ".join(f"{large / small:.2f}" for small, large in rounds)
            )
        else:
            steps = []
            for case in m.row.cases[1:]:
                cpu = m.cpu(case.label)
                if cpu is not None:
                    per_kb = (cpu - base) / ((case.size - first.size) / 1000)
                    steps.append(f"{case.label} {per_kb:.1f}")
            out.append(
                f"  info  (g) {m.row.name}: µs of CPU per KB above {first.label} ({base:.0f} µs/req): "
                + ", ".join(steps)
            )
        if "clients" in m.row.unit:
            rss = [m.rss_mb.get(c.label) for c in (first, last)]
            if rss[0] is not None and rss[1] is not None:
                per = (rss[1] - rss[0]) * 1024 * 1024 / (last.size - first.size)
                out.append(
                    f"  info  (g) {m.row.name}: RSS {rss[0]:.0f} MB at {first.label}, {rss[1]:.0f} MB at "
                    f"{last.label} (about {per:.0f} bytes per client held)"
                )
        for label, lines in m.evictions.items():
            if lines:
                out.append(f"  note  (g) {m.row.name} {label}: the memory store logged 'store full' {lines}x")
    return out


@dataclass
class Scaled:
    workers: int
    rps: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    errors: int = 0
    gateway_cores: list[float] = field(default_factory=list)  # CPU seconds per second of the run
    load_cores: list[float] = field(default_factory=list)  # wrk's
    stub_cores: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # the gateway's CPU per request

    def median(self, values: list[float]) -> float | None:
        return statistics.median(values) if values else None


def run_workers(bench: Bench, small: bool) -> list[Scaled]:
    """(w): `--workers 1` and `2`, nothing pinned, rounds interleaved."""
    s = bench.sizes
    counts = (1, 2)
    scaled = {n: Scaled(n) for n in counts}
    stub = [bench.stub_pid, *children(bench.stub_pid)]
    for round_no in range(max(s.rounds, 1)):
        for n in counts:
            progress(f"(w) round {round_no + 1}/{s.rounds}: gateway --workers {n}")
            port = free_port()
            policy = bench.gateway_policy("gateway", port, bench.stub_port[0])
            c = bench.start_gateway(f"workers-{n}", policy, port, workers=n, cpu=None)
            try:
                if s.warmup_s:
                    bench.load(c.port, connections=s.sat_conns, seconds=s.warmup_s, cpu=None)
                before, stub_before = cpu_seconds(c.pids()), cpu_seconds(stub)
                result = bench.load(c.port, connections=s.sat_conns, seconds=s.sat_s, cpu=None)
                used, stub_used = cpu_seconds(c.pids()) - before, cpu_seconds(stub) - stub_before
            finally:
                c.stop()
            row = scaled[n]
            row.errors += result.errors
            if result.requests and result.seconds:
                row.rps.append(result.rps)
                row.p50_ms.append(result.p50_ms)
                row.p99_ms.append(result.p99_ms)
                row.gateway_cores.append(used / result.seconds)
                row.load_cores.append(result.load_cpu_s / result.seconds)
                row.stub_cores.append(stub_used / result.seconds)
                row.cpu_us.append(used / result.requests * 1e6)
    return list(scaled.values())


def workers_table(scaled: list[Scaled], cpus: int, rounds: int, seconds: float) -> str:
    lines = [
        f"(w) gateway --workers N on {cpus} CPUs, nothing pinned (wrk -t1, the stub and the workers share "
        f"them); wrk -c64, {seconds:g}s x {rounds} rounds (medians); cores: CPU seconds per second",
        "",
        "| workers | req/s | p50 ms | p99 ms | errors | gateway cores | wrk cores | stub cores"
        " | CPU µs/req | req/s per gateway core |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in scaled:
        rps, cores = row.median(row.rps), row.median(row.gateway_cores)
        per_core = rps / cores if rps and cores else None
        lines.append(
            f"| {row.workers} | {_f(rps)} | {_f(row.median(row.p50_ms), 2)} | {_f(row.median(row.p99_ms), 2)}"
            f" | {row.errors} | {_f(cores, 2)} | {_f(row.median(row.load_cores), 2)}"
            f" | {_f(row.median(row.stub_cores), 2)} | {_f(row.median(row.cpu_us))} | {_f(per_core)} |"
        )
    one, two = (row.median(row.rps) for row in scaled[:2])
    if one and two:
        lines.append(f"  info  --workers 2 = {two / one:.2f} x --workers 1 in req/s")
    return "\n".join(lines)
