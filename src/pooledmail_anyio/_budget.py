"""Shared budgets in Redis: the store I/O behind the pool machine's budget actions.

Imported only when a host of the pool names a `SharedBudget`, so a pool without one never imports
coredis. One coredis client per Redis URL is entered by the pool's runner task, around its
background task group, and left in that task; every store call runs as a background task of the
pool, bounded by the budget's `store_timeout`, and reports back to the pool machine:

    RequestLease   -> lease_granted / lease_refused / request_failed
    RequestTokens  -> tokens_granted / request_failed
    ReleaseLease   -> (nothing: a lease that cannot be given back expires within lease_ttl)
    ShareCooldown  -> (nothing: best effort)

and a renewal task per budget extends the leases this pool holds every `lease_ttl / 3`, counted
from the start of the renewal before (`store_timeout` after a failed one), reporting `lease_lost`
(the store had no room to take back a lease it had dropped) or `store_failed`.

Every change of the store is one atomic Lua script (the keys are in docs/guide/scaling.md):

* connections: a sorted set of leases scored by their expiry, on the store's own clock; an
  acquire first drops expired leases, so a process killed with -9 frees its leases within
  `lease_ttl`. The host's shared cooldown is checked in the same script. The set's own expiry
  is only ever lengthened, so that a pool with a shorter `lease_ttl` (a rolling deploy that
  changes it) never lets the set, and another pool's live leases with it, vanish.
* messages: GCRA on the store's clock (the same arithmetic as the core's `Gcra`): one call
  reserves up to `count` tokens at the rate's spacing, the first no further ahead than the
  action's `wait`, the others no further than its `horizon`; each comes back as an offset from
  the store's "now", which the driver adds to its own clock when the answer arrives (later than
  the store's, never earlier); a token's lifetime counts from there too, so a slow answer brings
  usable tokens (the price, a token used up to one answer's delay after its slot, is in
  docs/guide/scaling.md).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import anyio.abc
import coredis
from coredis.retry import NoRetryPolicy

import anyio
from pooledmail_core import (
    Action,
    ConfigError,
    PoolMachine,
    ReleaseLease,
    RequestLease,
    RequestTokens,
    ShareCooldown,
    SharedBudget,
)

__all__ = ["FleetLink"]

logger = logging.getLogger("pooledmail")

_ACQUIRE = """
local cooling = redis.call('PTTL', KEYS[2])
if cooling > 0 then return {-1, cooling} end
local cap = tonumber(ARGV[3])
if cap == 0 then return {1, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= cap then return {0, 0} end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl * 2 then redis.call('PEXPIRE', KEYS[1], ttl * 2) end
return {1, 0}
"""

_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local lost = {}
for i = 3, #ARGV do
  local lease = ARGV[i]
  if redis.call('ZSCORE', KEYS[1], lease) or redis.call('ZCARD', KEYS[1]) < cap then
    redis.call('ZADD', KEYS[1], now + ttl, lease)
  else
    table.insert(lost, lease)
  end
end
if redis.call('PTTL', KEYS[1]) < ttl * 2 then redis.call('PEXPIRE', KEYS[1], ttl * 2) end
return lost
"""

_TOKENS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local count = tonumber(ARGV[3])
local horizon = tonumber(ARGV[4])
local wait = tonumber(ARGV[5])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local offsets = {}
for j = 1, count do
  local at = tat - tolerance
  if at < now then at = now end
  if at - now > horizon and (j > 1 or at - now > wait) then break end
  table.insert(offsets, at - now)
  tat = tat + interval
end
if #offsets == 0 then
  return {-1, tat - tolerance - now}
end
redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return offsets
"""

_COOL = """
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then redis.call('SET', KEYS[1], '1', 'PX', ms) end
return 1
"""

# What a store call may fail with: coredis's own errors, the transport's, and our time bound.
_STORE_ERRORS: tuple[type[BaseException], ...] = (
    coredis.exceptions.RedisError,
    OSError,
    TimeoutError,
)


class _ClientFault(Exception):
    """The store client raised something none of _STORE_ERRORS names (a bug or a surprise in it).

    It is a store failure like any other, so that a broken client costs the budget its store,
    never the pool: raised from the background task, it would close the pool under every send.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__(type(error).__name__)
        self.error = error


# What a store call is met with: on_store_failure applies.
_STORE_FAILURES: tuple[type[BaseException], ...] = (*_STORE_ERRORS, _ClientFault)


async def _client_call(call: Callable[[], Awaitable[Any]]) -> Any:
    """Await one call of the store client; whatever it raises is a store failure."""
    try:
        return await call()
    except _STORE_ERRORS:
        raise
    except Exception as error:
        raise _ClientFault(error) from error


def keys(budget: SharedBudget) -> tuple[str, str]:
    """The budget's leases key and its message-rate key (a hash tag keeps them in one slot)."""
    base = f"{budget.key_prefix}:{{{budget.name}}}"
    return f"{base}:leases", f"{base}:tat"


def cooldown_key(budget: SharedBudget, host: str) -> str:
    return f"{budget.key_prefix}:{{{budget.name}}}:cool:{host}"


def tls_context(redis_url: str) -> ssl.SSLContext | None:
    """The TLS context for a rediss:// URL (None for any other), built from its options.

    Built by pooledmail, once, when the pool is built, and handed to the Redis client, which
    then reads none of the URL's ssl_* options itself: coredis 6 would check the certificate's
    chain but not that it names the server unless the URL said ?ssl_check_hostname=true, so a
    man in the middle with any certificate from a trusted CA would pass. Here the name is
    checked as on the SMTP side, unless the URL says ?ssl_check_hostname=false or turns
    verification off with ?ssl_cert_reqs=none (the core refused the two together with true).
    Whether the files exist and hold what they should is known only by reading them, so a
    wrong path fails here with a ConfigError naming redis_url, never as an OSError at start-up.
    """
    parts = urllib.parse.urlsplit(redis_url)
    if parts.scheme != "rediss":
        return None  # no TLS for any other scheme
    # SharedBudget refused a repeated or empty option: one value per name.
    given = dict(urllib.parse.parse_qsl(parts.query))
    context = ssl.create_default_context()  # CERT_REQUIRED, check_hostname, the system's CAs
    certfile, keyfile = given.get("ssl_certfile"), given.get("ssl_keyfile")
    ca_certs = given.get("ssl_ca_certs")
    option = "?ssl_certfile= or ?ssl_keyfile="
    try:
        if certfile and keyfile:
            context.load_cert_chain(certfile=certfile, keyfile=keyfile)
        option = "?ssl_ca_certs="
        if ca_certs:
            # A directory is taken as a CA path, as the client would take it.
            if os.path.isdir(ca_certs):
                context.load_verify_locations(capath=ca_certs)
            else:
                context.load_verify_locations(cafile=ca_certs)
    except OSError as error:  # ssl.SSLError is one too
        raise ConfigError("redis_url", f"{option} cannot be used: {_reason(error)}") from None
    cert_reqs = given.get("ssl_cert_reqs", "required")
    check_hostname = given.get("ssl_check_hostname")
    if cert_reqs == "none" or (check_hostname is not None and check_hostname.upper() in _FALSE):
        # check_hostname first: ssl refuses CERT_NONE while it is on.
        context.check_hostname = False
    context.verify_mode = _VERIFY_MODES[cert_reqs]
    return context


# The values SharedBudget let through for ?ssl_cert_reqs= and the spellings of false it takes
# for ?ssl_check_hostname= (upper-cased), as the Redis client reads them.
_VERIFY_MODES = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}
_FALSE = frozenset({"0", "F", "FALSE", "N", "NO"})


def _reason(error: OSError) -> str:
    # The OS's or OpenSSL's words, without the file name (the caller knows it; the URL it
    # came from is never quoted).
    reason = getattr(error, "reason", None) or error.strerror
    return f"{type(error).__name__} ({reason})" if reason else type(error).__name__


class _Store:
    """One budget's view of its Redis: the client and its scripts."""

    def __init__(self, budget: SharedBudget, client: coredis.Redis[bytes]) -> None:
        self.budget = budget
        self.client = client
        self.leases_key, self.rate_key = keys(budget)
        self.acquire = client.register_script(_ACQUIRE)
        self.renew = client.register_script(_RENEW)
        self.tokens = client.register_script(_TOKENS)
        self.cool = client.register_script(_COOL)
        self.ttl_ms = max(1, math.ceil(budget.lease_ttl * 1000))
        self.held: set[str] = set()
        # Leases the store may hold that nobody will renew: asked for when a call failed or was
        # cancelled, or given back while the pool was closing. Dropped from the store on the next
        # renewal and when the pool closes; expired within lease_ttl in any case.
        self.stray: set[str] = set()
        # Leases asked for whose answer is not in yet: never swept by a release meanwhile (the
        # store may grant them after it), stray only if the call fails or is cancelled.
        self.pending: set[str] = set()
        self.calls = 0
        self.failures = 0


def _log_fault(store: _Store, what: str, fault: _ClientFault) -> None:
    # The type's name only: the exception's own words may quote the URL or the password.
    logger.error(
        "shared budget %r: the store client failed unexpectedly while it tried to %s (%s); "
        "taken as a store failure, on_store_failure=%r applies",
        store.budget.name,
        what,
        type(fault.error).__name__,
        store.budget.on_store_failure,
    )


class FleetLink:
    """The driver's side of every shared budget of one pool."""

    def __init__(
        self,
        budgets: Sequence[SharedBudget],
        *,
        machine: PoolMachine,
        perform: Callable[[Sequence[Action]], None],
        clock: Callable[[], float],
        spawn: Callable[..., bool],
    ) -> None:
        self._budgets = list(budgets)
        self._machine = machine
        self._perform = perform
        self._clock = clock
        self._spawn = spawn
        self._stores: dict[str, _Store] = {}
        # Read once, here: a TLS file that changes or goes later changes nothing.
        self._tls = {budget.redis_url: tls_context(budget.redis_url) for budget in self._budgets}

    def set_clock(self, clock: Callable[[], float]) -> None:
        self._clock = clock

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Connect the clients (lazily: a store that is down fails the first call, not this)."""
        async with contextlib.AsyncExitStack() as stack:
            clients: dict[str, coredis.Redis[bytes]] = {}
            for budget in self._budgets:
                client = clients.get(budget.redis_url)
                if client is None:
                    client = coredis.Redis.from_url(
                        budget.redis_url,
                        connect_timeout=budget.store_timeout,
                        stream_timeout=budget.store_timeout,
                        retry_policy=NoRetryPolicy(),
                        # The user part is percent-decoded, as in any URL (RFC 3986 §2.1): a
                        # password with '@', ':', '/' or '#' can only be written there encoded.
                        # (coredis decodes the query always, the user part only when asked;
                        # asked, it decodes the host and the path too: a unix:// socket path
                        # is written quoted, docs/guide/scaling.md.)
                        decode_components=True,
                        # Given ssl_context (even None), coredis reads no ssl_* option of the
                        # URL and no file (pool/_base.py, _parse_url), and wraps a connection
                        # in TLS exactly when the context is not None (connection/_tcp.py).
                        ssl_context=self._tls[budget.redis_url],
                    )
                    await stack.enter_async_context(client)
                    clients[budget.redis_url] = client
                self._stores[budget.name] = _Store(budget, client)
            try:
                yield
            finally:
                with anyio.CancelScope(shield=True):
                    await self._give_back_everything()

    def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Start renewing leases, in the pool's background task group."""
        for store in self._stores.values():
            if store.budget.max_connections is not None:
                task_group.start_soon(self._renew_loop, store)

    def statistics(self) -> dict[str, dict[str, int]]:
        return {
            name: {"store_calls": store.calls, "store_failures": store.failures}
            for name, store in self._stores.items()
        }

    # -- the machine's actions -------------------------------------------------------------

    def perform(self, action: Action) -> None:
        if type(action) is RequestTokens:
            if not self._spawn(self._request_tokens, action):
                pass  # the pool is closing: nobody waits for tokens any more
        elif type(action) is RequestLease:
            lease = secrets.token_hex(8)
            if not self._spawn(self._request_lease, action, lease):
                pass  # closing: the request is never sent
        elif type(action) is ReleaseLease:
            store = self._stores[action.budget.name]
            store.held.discard(action.lease)
            store.stray.add(action.lease)
            self._spawn(self._release, store)
        elif type(action) is ShareCooldown:
            self._spawn(self._share_cooldown, action)
        else:  # pragma: no cover - the machine returns only known actions
            raise AssertionError(f"unknown action {action!r}")

    async def _call(self, store: _Store, script: Any, keys: list[str], args: list[Any]) -> Any:
        store.calls += 1
        with anyio.fail_after(store.budget.store_timeout):
            return await _client_call(lambda: script(keys=keys, args=args, client=store.client))

    def _failed(self, store: _Store, what: str, error: BaseException) -> None:
        store.failures += 1
        if isinstance(error, _ClientFault):
            _log_fault(store, what, error)
            return
        logger.warning(
            "shared budget %r: the store could not %s (%s); on_store_failure=%r applies",
            store.budget.name,
            what,
            type(error).__name__,
            store.budget.on_store_failure,
        )

    async def _request_lease(self, action: RequestLease, lease: str) -> None:
        store = self._stores[action.budget.name]
        budget = store.budget
        capped = budget.max_connections is not None
        # Until the answer is in, the store may hold this lease: if the call fails or is
        # cancelled, it is given back later rather than left to expire.
        if capped:
            store.pending.add(lease)
        answered = False
        try:
            reply = await self._call(
                store,
                store.acquire,
                [store.leases_key, cooldown_key(budget, action.host.key)],
                [lease, store.ttl_ms, budget.max_connections or 0],
            )
            answered = True
        except _STORE_FAILURES as error:
            self._failed(store, "grant a connection lease", error)
            self._perform(self._machine.request_failed(action.request, self._clock()))
            return
        finally:
            if capped:
                store.pending.discard(lease)
                if not answered:
                    store.stray.add(lease)
        now = self._clock()
        status, value = int(reply[0]), int(reply[1])
        if status == 1:
            if capped:
                store.held.add(lease)
            granted = lease if capped else None
            self._perform(self._machine.lease_granted(action.request, now, granted))
        else:
            store.stray.discard(lease)
            if status == -1:
                self._perform(
                    self._machine.lease_refused(
                        action.request, now, retry_at=now, cooling_until=now + value / 1000
                    )
                )
            else:
                self._perform(self._machine.lease_refused(action.request, now))

    async def _request_tokens(self, action: RequestTokens) -> None:
        store = self._stores[action.budget.name]
        budget = store.budget
        rate = budget.max_messages_per_second
        assert rate is not None
        interval = 1_000_000 / rate
        try:
            reply = await self._call(
                store,
                store.tokens,
                [store.rate_key],
                [
                    math.ceil(interval),
                    math.floor(((budget.burst or 1) - 1) * interval),
                    action.count,
                    math.floor(action.horizon * 1_000_000),
                    math.floor(action.wait * 1_000_000),
                ],
            )
        except _STORE_FAILURES as error:
            self._failed(store, "grant message tokens", error)
            self._perform(self._machine.request_failed(action.request, self._clock()))
            return
        now = self._clock()
        offsets = [int(value) for value in reply]
        if offsets and offsets[0] < 0:
            retry_at = now + offsets[1] / 1_000_000
            self._perform(self._machine.tokens_granted(action.request, now, [], retry_at))
        else:
            times = [now + offset / 1_000_000 for offset in offsets]
            self._perform(self._machine.tokens_granted(action.request, now, times))

    async def _release(self, store: _Store) -> None:
        leases = sorted(store.stray)
        if not leases:
            return
        store.calls += 1
        try:
            with anyio.fail_after(store.budget.store_timeout):
                await _client_call(lambda: store.client.zrem(store.leases_key, leases))
        except _STORE_FAILURES as error:
            if isinstance(error, _ClientFault):
                _log_fault(store, "take back leases", error)
            return  # still stray: given back by the next renewal, or expired
        store.stray.difference_update(leases)

    async def _share_cooldown(self, action: ShareCooldown) -> None:
        store = self._stores[action.budget.name]
        milliseconds = max(1, math.ceil(action.seconds * 1000))
        try:
            await self._call(
                store, store.cool, [cooldown_key(store.budget, action.host.key)], [milliseconds]
            )
        except _STORE_FAILURES as error:
            self._failed(store, "share a cooldown", error)

    async def _renew_loop(self, store: _Store) -> None:
        budget = store.budget
        # Each renewal is due lease_ttl / 3 after the START of the one before: timed from its
        # end, a renewal that took almost store_timeout (up to lease_ttl / 3 by the config's
        # rule) could land, on the store, close to 2/3 lease_ttl after the one before, and a
        # slow give-back before it pushed it further, until two renewals were 4/3 lease_ttl
        # apart and the lease lapsed under a process that is alive.
        due = anyio.current_time() + budget.lease_ttl / 3
        while True:
            await anyio.sleep_until(due)
            started = anyio.current_time()
            due = started + budget.lease_ttl / 3
            held = sorted(store.held)
            if held:
                try:
                    lost = await self._call(
                        store,
                        store.renew,
                        [store.leases_key],
                        [store.ttl_ms, budget.max_connections or 0, *held],
                    )
                except _STORE_FAILURES as error:
                    self._failed(store, "renew this pool's leases", error)
                    self._perform(self._machine.store_failed(budget.name, self._clock()))
                    # Sooner after a failure: the leases are still counted until their
                    # expiry, and renewing them before it keeps the fleet's count true.
                    due = started + budget.store_timeout
                    lost = []
                for raw in lost:
                    lease = raw.decode() if isinstance(raw, bytes) else str(raw)
                    store.held.discard(lease)
                    self._perform(self._machine.lease_lost(budget.name, lease, self._clock()))
            # Leases nobody renews go back after the renewal, in a task of their own: a slow
            # store delays neither this renewal nor the next.
            if store.stray:
                self._spawn(self._release, store)

    async def _give_back_everything(self) -> None:
        """The pool is closed: every lease it may still hold goes back to the store."""
        for store in self._stores.values():
            store.stray.update(store.held)
            store.stray.update(store.pending)
            store.held.clear()
            with anyio.move_on_after(store.budget.store_timeout):
                await self._release(store)
