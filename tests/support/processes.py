"""Real processes for the tests: `python -m gateway serve` (and `check`, `schema`) and a throw-away `redis-server`.

`GatewayProcess` collects the subprocess's stdout (the one "listening on" line) and stderr (the logs) line
by line in reader threads; both lists are registered with the suite-wide credential scan (log_scan.py).
The `gateway_process` fixture starts them on free ports and kills them at teardown, whatever the test did;
so does the `redis` fixture of the tests that use a `RedisServer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import pytest
import yaml
from limits.aio.storage import Storage

from gateway.ratelimit import open_storage
from gateway.ratelimit.redis_store import close as close_storage
from tests.conftest import ROOT, free_port, in_ci
from tests.support.log_scan import register_lines, remember_credentials

WAIT = 30.0  # upper bound for things that normally take milliseconds; never a pass/fail timing

Pattern = str | re.Pattern[str]  # a str is looked for as it is written; a compiled pattern is searched


def write_policy(path: Path, tree: dict[str, Any]) -> Path:
    """Write atomically (a watcher never sees half a file)."""
    remember_credentials(tree)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    tmp.replace(path)
    return path


@contextlib.asynccontextmanager
async def running_demo(wait: float = 30) -> AsyncIterator[int]:
    """`voucherify-gateway demo --port 0` as a subprocess; yields its port once it says it listens."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "demo",
        "--port",
        "0",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), wait)).decode()
        assert "listening on http://127.0.0.1:" in line, line
        yield int(line.rsplit(":", 1)[1])
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), wait)


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m gateway ARGS` to its end; the environment is `base` (default: this one) updated by `env`."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        env={**(os.environ if base is None else base), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _matches(pattern: Pattern, line: str) -> bool:
    return pattern in line if isinstance(pattern, str) else pattern.search(line) is not None


class GatewayProcess:
    """`python -m gateway serve` in a subprocess, with its stdout and stderr lines collected as they come."""

    def __init__(
        self,
        tree: dict[str, Any],
        directory: Path,
        *,
        port: int | None = None,
        workers: int = 1,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = write_policy(directory / f"policy-{self.port}.yaml", tree)
        self.workers = workers
        # the supervisor logs "worker N listening" at info: not under a quieter level
        self.logs_workers = tree.get("logging", {}).get("level", "info") in ("debug", "info")
        self.env = env or {}
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        register_lines(self.stdout)
        register_lines(self.stderr)
        self.announced = ""  # the "listening on" line, once started
        self.proc: subprocess.Popen[str] | None = None
        self._readers: list[threading.Thread] = []
        self._lock = threading.Lock()

    async def start(self) -> GatewayProcess:
        """Until serve announces it listens; fails if it exits first (with what it printed)."""
        self._launch()
        # several workers on a busy machine take a while: a generous bound, never a timing
        self.announced = await self.wait_for(f"listening on {self.url}", stream="stdout", timeout=2 * WAIT)
        if self.workers > 1 and self.logs_workers:  # logged before the announcement, read by another
            # thread: that thread may not have them yet
            await self.wait_for(re.compile(r"worker \d+ listening"), count=self.workers)
        return self

    def _launch(self) -> None:
        args = [sys.executable, "-m", "gateway", "serve", "--config", str(self.config)]
        args += ["--port", str(self.port)]
        if self.workers > 1:
            args += ["--workers", str(self.workers)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for stream, into in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            reader = threading.Thread(target=self._read, args=(stream, into), daemon=True)
            reader.start()
            self._readers.append(reader)

    def _read(self, stream: IO[str], into: list[str]) -> None:
        for line in stream:
            with self._lock:
                into.append(line.rstrip("\n"))

    def lines(self, pattern: Pattern = "", stream: str = "stderr") -> list[str]:
        """The lines of `stream` ("stdout" or "stderr": the logs) that match `pattern` (all by default)."""
        with self._lock:
            return [line for line in getattr(self, stream) if _matches(pattern, line)]

    @property
    def output(self) -> str:
        """Both streams, for failure messages."""
        with self._lock:
            return "\n".join(["stdout:", *self.stdout, "stderr:", *self.stderr])

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines() if line.startswith("{")]

    def access_lines(self) -> list[dict[str, Any]]:
        return [line for line in self.json_lines() if line.get("logger") == "gateway.access"]

    async def wait_for(
        self, pattern: Pattern, count: int = 1, stream: str = "stderr", timeout: float = WAIT
    ) -> str:
        """The `count`-th line of `stream` matching `pattern`; fails if the process exits or time runs out."""
        assert self.proc is not None, "not started"
        deadline = time.monotonic() + timeout
        while True:
            found = self.lines(pattern, stream)
            if len(found) >= count:
                return found[count - 1]
            if self.proc.poll() is not None:
                for reader in self._readers:  # what the process printed before it exited
                    await asyncio.to_thread(reader.join, 5)
                found = self.lines(pattern, stream)
                if len(found) >= count:
                    return found[count - 1]
                raise AssertionError(
                    f"gateway exited ({self.proc.returncode}) before {count} line(s) with {pattern!r}:\n"
                    f"{self.output}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(found)} of {count} line(s) with {pattern!r} after {timeout}s:\n{self.output}"
                )
            await asyncio.sleep(0.02)

    def worker_pids(self) -> set[int]:
        return {
            int(m.group(1))
            for line in self.lines(re.compile(r"worker \d+ listening"))
            if (m := re.search(r"worker (\d+)", line))
        }

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def exit_code(self) -> int:
        assert self.proc is not None
        return await asyncio.to_thread(self.proc.wait, WAIT)

    def _children(self) -> set[int]:
        """The parent's live child processes (its workers), from /proc; the logged ones where that is missing."""
        assert self.proc is not None
        found = self.worker_pids()
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                found |= {int(pid) for pid in (task / "children").read_text().split()}
        return found

    def kill(self) -> None:
        """Teardown: SIGKILL the parent, then its workers (first the parent: it would replace them)."""
        if self.proc is None:
            return
        workers = self._children() if self.proc.poll() is None else self.worker_pids()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for reader in self._readers:  # the pipes close once the workers are gone too
            reader.join(5)


GatewayProcessFactory = Callable[..., Awaitable[GatewayProcess]]


@pytest.fixture
async def gateway_process(tmp_path: Path) -> AsyncIterator[GatewayProcessFactory]:
    """`await gateway_process(tree, port=None, workers=1, env=None)`: a started serve, killed at teardown."""
    started: list[GatewayProcess] = []

    async def start(
        tree: dict[str, Any],
        port: int | None = None,
        *,
        workers: int = 1,
        env: dict[str, str] | None = None,
    ) -> GatewayProcess:
        process = GatewayProcess(tree, tmp_path, port=port, workers=workers, env=env)
        started.append(process)
        return await process.start()

    try:
        yield start
    finally:
        with contextlib.ExitStack() as stack:  # every one killed, even if killing another one failed
            for process in started:
                stack.callback(process.kill)


# ------------------------------------------------------------------------------------------------ redis


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        if in_ci():
            pytest.fail("redis-server is missing (CI installs it: apt-get install redis-server)")
        pytest.skip("redis-server is not installed")
    return found


class RedisServer:
    """A throw-away redis-server without persistence; `kill`, `start` again on the same port, `freeze`."""

    def __init__(self, *options: str) -> None:
        self.binary = redis_binary()
        self.port = free_port()
        self.options = options  # more redis-server options, e.g. for a cluster node
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            *self.options,
        ]

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@contextlib.contextmanager
def running_redis(*options: str) -> Iterator[RedisServer]:
    """A real redis-server on a free port, killed afterwards (a test may kill, freeze or restart it)."""
    server = RedisServer(*options)
    try:
        server.start()
        yield server
    finally:
        server.kill()


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@contextlib.contextmanager
def running_cluster_node(directory: Path) -> Iterator[RedisServer]:
    """A one-node Redis Cluster that holds every slot (it still refuses CROSSSLOT commands and scripts)."""
    from redis import Redis as SyncRedis

    bus = str(free_port())  # by default the port + 10000, which may be taken or beyond 65535
    conf = str(directory / f"nodes-{bus}.conf")
    node = RedisServer("--cluster-enabled", "yes", "--cluster-port", bus, "--cluster-config-file", conf)
    try:
        node.start()
        admin = SyncRedis(port=node.port)
        admin.execute_command("CLUSTER ADDSLOTSRANGE", 0, 16383)  # type: ignore[no-untyped-call]
        deadline = time.monotonic() + WAIT  # the cluster takes a second or two to come up
        while admin.execute_command("CLUSTER INFO")["cluster_state"] != "ok":  # type: ignore[no-untyped-call]
            assert time.monotonic() < deadline, "the cluster did not come up"
            time.sleep(0.1)
        admin.close()
        yield node
    finally:
        node.kill()


@pytest.fixture
def cluster_node(tmp_path: Path) -> Iterator[RedisServer]:
    with running_cluster_node(tmp_path) as node:
        yield node


@pytest.fixture
async def redis_storage(redis: RedisServer) -> AsyncIterator[Storage]:
    """The gateway's limit storage on `redis`, emptied and closed afterwards."""
    store = open_storage(redis.url, 2.0)
    yield store
    with contextlib.suppress(Exception):  # the test may have killed Redis
        await store.reset()
    await close_storage(store)


# ------------------------------------------------------------------------------- redis cluster, sentinel


def redis_call(port: int, *command: str) -> Any:
    """One command to the redis-server (or sentinel) on `port`, synchronously, with redis-py."""
    import redis as redis_py

    client = redis_py.Redis(port=port, socket_timeout=5, decode_responses=True)
    try:
        return client.execute_command(*command)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
    finally:
        client.close()


def redis_info(port: int, section: str = "replication") -> dict[str, Any]:
    import redis as redis_py

    client = redis_py.Redis(port=port, socket_timeout=5, decode_responses=True)
    try:
        return dict(client.info(section))
    finally:
        client.close()


def _until(condition: Callable[[], bool], what: str, bound: float = WAIT) -> None:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # not up yet: refused, loading, not formed
            if condition():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not after {bound}s")


class RedisCluster:
    """A real Redis Cluster of `masters` masters (no replicas) on free ports, slots split evenly."""

    SLOTS = 16384

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.directory = directory
        self.nodes: list[RedisServer] = []
        self.buses: list[str] = []
        for _ in range(masters):
            # the bus port defaults to port + 10000, past 65535 for a free port above 55535: name one
            bus = str(free_port())
            node = RedisServer(
                "--cluster-enabled", "yes", "--cluster-node-timeout", "5000", "--dir", str(directory),
                "--cluster-port", bus,
            )  # fmt: skip
            config = directory / f"nodes-{node.port}.conf"  # the cluster's own state file, one per node
            node.options = (*node.options, "--cluster-config-file", str(config))
            self.nodes.append(node)
            self.buses.append(bus)

    @property
    def url(self) -> str:
        """The `redis+cluster://` URL naming every master, as a policy's `rate_limit.storage`."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        share = self.SLOTS // len(self.nodes)
        for i, node in enumerate(self.nodes):
            last = self.SLOTS - 1 if i == len(self.nodes) - 1 else (i + 1) * share - 1
            redis_call(node.port, "CLUSTER", "ADDSLOTSRANGE", str(i * share), str(last))
        for node in self.nodes[1:]:
            redis_call(node.port, "CLUSTER", "MEET", "127.0.0.1", str(self.nodes[0].port), self.buses[0])

        def formed() -> bool:
            return all(
                "cluster_state:ok" in redis_call(node.port, "CLUSTER", "INFO")
                and len(redis_call(node.port, "CLUSTER", "NODES").strip().splitlines()) == len(self.nodes)
                for node in self.nodes
            )

        _until(formed, "the cluster did not form")

    def flush(self) -> None:
        """Empty every master: a test sharing the cluster starts with no counts."""
        for node in self.nodes:
            redis_call(node.port, "FLUSHALL")

    def keys_per_node(self) -> list[int]:
        return [int(redis_call(node.port, "DBSIZE")) for node in self.nodes]

    def kill(self) -> None:
        with contextlib.ExitStack() as stack:
            for node in self.nodes:
                stack.callback(node.kill)


@contextlib.contextmanager
def running_redis_cluster(directory: Path, masters: int = 3) -> Iterator[RedisCluster]:
    cluster = RedisCluster(directory, masters)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.kill()


@pytest.fixture(scope="session")
def redis_cluster_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One 3-master cluster for the whole run (forming one takes a second or two); use `redis_cluster`."""
    with running_redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture
def redis_cluster(redis_cluster_session: RedisCluster) -> RedisCluster:
    """The shared cluster, emptied for this test; `redis_cluster.url` is its `redis+cluster://` URL."""
    redis_cluster_session.flush()
    return redis_cluster_session


class SentinelServer(RedisServer):
    """`redis-server CONF --sentinel` watching `master_port` as `service`, with quick failure detection."""

    def __init__(self, directory: Path, service: str, master_port: int, quorum: int) -> None:
        super().__init__()
        self.config = directory / f"sentinel-{self.port}.conf"  # sentinel rewrites it: one per sentinel
        self.config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"sentinel monitor {service} 127.0.0.1 {master_port} {quorum}\n"
            f"sentinel down-after-milliseconds {service} 1000\n"
            f"sentinel failover-timeout {service} 10000\n"
            f"sentinel parallel-syncs {service} 1\n",
            encoding="utf-8",
        )

    def command(self) -> list[str]:
        return [self.binary, str(self.config), "--sentinel"]


class SentinelGroup:
    """A master, one replica of it and three sentinels, all real, on free ports."""

    SERVICE = "mymaster"

    def __init__(self, directory: Path) -> None:
        where = ("--dir", str(directory))  # a replica keeps the RDB it synced from: not in the checkout
        self.master = RedisServer(*where)
        self.replica = RedisServer(*where, "--replicaof", "127.0.0.1", str(self.master.port))
        self.sentinels = [SentinelServer(directory, self.SERVICE, self.master.port, 2) for _ in range(3)]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.SERVICE}"

    def master_port(self, sentinel: int = 0) -> int:
        """The master's port as one sentinel sees it now."""
        _, port = redis_call(
            self.sentinels[sentinel].port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE
        )
        return int(port)

    def start(self) -> None:
        self.master.start()
        self.replica.start()

        def synced() -> bool:
            return bool(redis_info(self.replica.port)["master_link_status"] == "up")

        _until(synced, "the replica did not sync")
        for sentinel in self.sentinels:
            sentinel.start()

        def watching() -> bool:  # every sentinel knows the replica and the other two sentinels
            for sentinel in self.sentinels:
                master = redis_call(sentinel.port, "SENTINEL", "MASTER", self.SERVICE)
                if int(master["num-slaves"]) < 1 or int(master["num-other-sentinels"]) < 2:
                    return False
            return True

        _until(watching, "the sentinels did not find each other")

    def kill_master(self) -> int:
        """SIGKILL the master; the port it had."""
        port = self.master.port
        self.master.kill()
        return port

    def wait_failover(self) -> None:
        """Until every sentinel names the replica as the master, and it accepts writes."""

        def promoted() -> bool:
            sentinels = range(len(self.sentinels))
            moved = all(self.master_port(i) == self.replica.port for i in sentinels)
            return moved and redis_info(self.replica.port)["role"] == "master"

        _until(promoted, "no failover")

    def kill(self) -> None:
        with contextlib.ExitStack() as stack:
            for server in (*self.sentinels, self.replica, self.master):
                stack.callback(server.kill)


@pytest.fixture
def redis_sentinel(tmp_path: Path) -> Iterator[SentinelGroup]:
    """A fresh sentinel group per test (tests kill its master); `redis_sentinel.url` for the policy."""
    group = SentinelGroup(tmp_path)
    try:
        group.start()
        yield group
    finally:
        group.kill()
