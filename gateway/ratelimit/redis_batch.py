"""Rate-limit script calls made in one turn of the event loop, sent to Redis as one pipeline.

At a checkout peak many requests reach their rate limit in the same turn of the loop. Sent one by one,
each EVALSHA pays redis-py's whole command path: a pool checkout (a lock under the blocking pool), packing,
a write, a read, a release; under saturation that was the largest cost of the gateway with Redis. Here the
calls of one turn are queued and sent together as a non-transactional pipeline: one checkout, one write,
one read of all the replies. Each script still runs atomically in Redis, in the order the requests asked;
each reply, or error, goes back to the request that asked.

The pipeline is written here, on redis-py's own connection, pool and reply parser (hiredis), not through
redis-py's `Pipeline`: packing its arguments one `Encoder.encode` and three joins at a time was a fifth of
the gateway-redis process's CPU at saturation (py-spy, bench/RESULTS.md), and `Pipeline.execute` adds its
own bookkeeping per batch. `pack` writes the bytes redis-py writes (tests/unit/test_redis_batch.py compares
them). As redis-py's client is configured (redis_store.py), a connection error is retried once on a fresh
connection; a connection that failed in any other way mid-batch is closed, never handed back out of step.

- NOSCRIPT (a restarted or flushed Redis): the refused calls' scripts are loaded and only those calls are
  sent again. Redis refused them before running anything, so nothing is counted twice. The calls it ran
  are answered first: a reload that fails fails only the refused ones.
- A failure of the whole pipeline (connection lost, timeout) fails every call of the batch; `RedisStore`
  turns that into `StoreUnavailable` for each request, and `on_storage_error` decides.
- A request that gave up waiting (its storage timeout) is not answered: its reply is dropped.
- A connection that served a batch in step is kept for the next one (up to `IDLE` of them), not handed back
  to the pool: a checkout and a release of redis-py's blocking pool, with their lock and observability
  events, cost more than the batch's own write and read. A kept connection that a restart left dead fails
  its write or read with a connection error, and the batch is retried once on a fresh connection from the
  pool, as any connection error is: the calls not answered yet (those answered ran, and are not sent
  again). `close` hands the kept ones back.

Redis Cluster clients are not batched (a pipeline there is split by slot anyway): `RedisStore` calls them
one by one.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript, Script
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

Call = tuple[AsyncScript | Script, list[str], list[Any], "asyncio.Future[Any]"]
IDLE = 4  # connections kept between batches: the batches in flight at once, at a checkout peak


class ScriptBatcher:
    """Queues `(script, keys, args)` calls on one client and sends each turn's queue as one pipeline."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self._queue: list[Call] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle: list[Any] = []  # connections in step, checked out of the pool, for the next batch
        self.pipelines = 0  # pipelines sent (tests read it)

    def call(self, script: AsyncScript | Script, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._queue:
            loop.call_soon(self._send)  # once the requests ready in this turn have queued their calls
        self._queue.append((script, keys, args, future))
        return future

    def _send(self) -> None:
        batch, self._queue = self._queue, []
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[Call]) -> None:
        try:
            replies = await self._execute(batch)
        except Exception as exc:  # the whole pipeline failed, so did every call in it
            _fail(batch, exc)
            return
        answered = list(zip(batch, replies, strict=True))
        refused = [call for call, reply in answered if isinstance(reply, NoScriptError)]
        # the calls Redis ran are answered now, whatever becomes of the refused ones (a hit counted, a claim
        # made: failing them would say the store was down when it had answered)
        _answer([(call, reply) for call, reply in answered if not isinstance(reply, NoScriptError)])
        if not refused:
            return
        try:
            for script in {id(call[0]): call[0] for call in refused}.values():
                await self.client.script_load(script.script)
            again = await self._execute(refused)
        except Exception as exc:
            _fail(refused, exc)
            return
        _answer(list(zip(refused, again, strict=True)))

    async def _execute(self, batch: list[Call]) -> list[Any]:
        """Each call's reply, or its own error (NOSCRIPT among them), in order."""
        if len(batch) > 1:
            self.pipelines += 1
        commands = [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args, _ in batch]
        packed = pack(commands)
        pool, idle = self.client.connection_pool, self._idle
        replies: list[Any] = []
        for attempt in range(2):
            if idle and not attempt:
                connection = idle.pop()
            else:
                connection = await pool.get_connection()  # type: ignore[no-untyped-call]
                if replies:  # the calls answered before the connection was lost ran: not again
                    packed = pack(commands[len(replies) :])
            try:
                await connection.send_packed_command(packed)
                while len(replies) < len(batch):
                    try:
                        replies.append(await connection.read_response())
                    except ResponseError as exc:  # read whole: the connection is still in step
                        replies.append(exc)
            except RedisConnectionError:
                await connection.disconnect()
                await pool.release(connection)
                if attempt:
                    raise
                continue
            except BaseException:  # a timeout, a cancellation: replies may still come on it
                await connection.disconnect()
                await pool.release(connection)
                raise
            if len(idle) < IDLE:
                idle.append(connection)
            else:
                await pool.release(connection)
            return replies
        raise AssertionError("unreachable")  # pragma: no cover - the second attempt returns or raises

    async def close(self) -> None:
        """Hand the kept connections back to the pool (before it closes)."""
        idle, self._idle = self._idle, []
        for connection in idle:
            await self.client.connection_pool.release(connection)


def _answer(answered: list[tuple[Call, Any]]) -> None:
    for (*_, future), reply in answered:
        if future.done():  # its request gave up waiting
            continue
        if isinstance(reply, Exception):
            future.set_exception(reply)
        else:
            future.set_result(reply)


def _fail(calls: list[Call], exc: Exception) -> None:
    for *_, future in calls:
        if not future.done():
            future.set_exception(exc)


def pack(commands: list[tuple[Any, ...]]) -> bytes:
    """`commands` in the Redis protocol, as redis-py's `Connection.pack_commands` and `Encoder` write them:
    bytes as they are, str in UTF-8, int and float as `repr` writes them."""
    out: list[bytes] = []
    append = out.append
    for command in commands:
        append(b"*%d\r\n" % len(command))
        for arg in command:
            kind = type(arg)  # the exact types first: a chain has about 30 arguments
            if kind is str:
                data = arg.encode()
            elif kind is int or kind is float:
                data = repr(arg).encode()
            elif kind is bytes:
                data = arg
            else:
                data = _encode(arg)
            append(b"$%d\r\n" % len(data))
            append(data)
            append(b"\r\n")
    return b"".join(out)


def _encode(arg: object) -> bytes:
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, int | float) and not isinstance(arg, bool):
        return repr(arg).encode()
    raise TypeError(f"a Redis argument cannot be a {type(arg).__name__}")


_BATCHERS: weakref.WeakKeyDictionary[Any, ScriptBatcher] = weakref.WeakKeyDictionary()


def batcher_for(client: Any) -> ScriptBatcher | None:
    """The client's one batcher (shared by every script on it), or None for a cluster client."""
    if not isinstance(client, Redis):
        return None
    batcher = _BATCHERS.get(client)
    if batcher is None:
        batcher = _BATCHERS[client] = ScriptBatcher(client)
    return batcher
