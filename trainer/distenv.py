"""The distributed environment contract: who am I (rank), how many are we, and where is rank 0.

Resolution order (docs/trainer.md has the full contract):
1. torchrun: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, when RANK is set;
2. Kubernetes Indexed Job: RANK = JOB_COMPLETION_INDEX, WORLD_SIZE and MASTER_PORT from the Job, MASTER_ADDR
   from the Job (rank 0's stable DNS name) or, with `distributed.discovery: kubernetes-api`, rank 0's pod IP;
   non-zero ranks resolve the address and wait for rank 0's port, with retry and backoff;
3. otherwise a single process.

Parsing (`parse_env`) is pure and raises `ConfigError` (exit 2: retrying cannot fix a broken Job spec); waiting
for rank 0 (`find_rank0`) raises `RendezvousError` (retriable) stating how long it waited.
"""

from __future__ import annotations

import dataclasses
import functools
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, NoReturn

from tenacity import RetryCallState, Retrying, retry_if_exception_type, retry_if_result, wait_exponential

from trainer.config import ConfigError, DistributedConfig

Source = Literal["torchrun", "indexed-job", "single"]


class RendezvousError(RuntimeError):
    """Rank 0 could not be found or reached in time; a retry (a new pod) may succeed."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    """Global rank, 0 .. world_size - 1."""
    world_size: int
    """Number of ranks in the job."""
    local_rank: int
    """Rank on this node (selects the GPU); 0 in an Indexed Job (one rank per pod)."""
    local_world_size: int
    """Ranks on this node; used to share the CPUs between them."""
    master_addr: str
    """Host of rank 0's rendezvous store; empty for a single process or until discovered."""
    master_port: int
    """Port of rank 0's rendezvous store; 0 for a single process."""
    source: Source
    """Which part of the contract produced this environment."""

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _int_var(environ: Mapping[str, str], name: str, minimum: int, context: str) -> int:
    text = environ.get(name)
    if text is None or not text.strip():
        raise ConfigError(f"{name} is not set; {context} requires it")
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r}: must be an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={value}: must be >= {minimum}")
    return value


def _port_var(environ: Mapping[str, str], context: str) -> int:
    port = _int_var(environ, "MASTER_PORT", 1, context)
    if port > 65535:
        raise ConfigError(f"MASTER_PORT={port}: must be a TCP port in 1..65535")
    return port


def _rank0_location(
    environ: Mapping[str, str], config: DistributedConfig, pods: int, context: str
) -> tuple[str, int]:
    """MASTER_ADDR (may be empty: kubernetes-api discovery) and MASTER_PORT of a Job with `pods` pods."""
    addr = environ.get("MASTER_ADDR", "").strip()
    if pods == 1:
        return addr, 0
    port = _port_var(environ, context)
    if not addr and config.discovery == "dns":
        raise ConfigError(
            "MASTER_ADDR is not set and distributed.discovery='dns' needs it (rank 0's DNS name "
            "<job>-0.<headless-service>); set it or use distributed.discovery=kubernetes-api"
        )
    if not addr and not environ.get("TRAINER_JOB_NAME", "").strip():
        raise ConfigError(
            "TRAINER_JOB_NAME is not set; distributed.discovery='kubernetes-api' needs the Job name "
            "to find rank 0's pod"
        )
    return addr, port


def parse_env(environ: Mapping[str, str], config: DistributedConfig) -> DistEnv:
    """Apply the contract to `environ` without touching the network; raises ConfigError on a broken spec."""
    if "RANK" in environ:
        context = "torchrun (RANK is set)"
        rank = _int_var(environ, "RANK", 0, context)
        world_size = _int_var(environ, "WORLD_SIZE", 1, context)
        if rank >= world_size:
            raise ConfigError(f"RANK={rank} is not below WORLD_SIZE={world_size}")
        local_rank = _int_var(environ, "LOCAL_RANK", 0, context) if "LOCAL_RANK" in environ else 0
        local_world = (
            _int_var(environ, "LOCAL_WORLD_SIZE", 1, context) if "LOCAL_WORLD_SIZE" in environ else 1
        )
        addr = environ.get("MASTER_ADDR", "").strip()
        if world_size > 1 and not addr:
            raise ConfigError("MASTER_ADDR is not set; torchrun (RANK is set) requires it")
        port = _port_var(environ, context) if world_size > 1 else 0
        return DistEnv(
            rank=rank, world_size=world_size, local_rank=local_rank, local_world_size=local_world,
            master_addr=addr, master_port=port, source="torchrun",
        )
    if "JOB_COMPLETION_INDEX" in environ:
        context = "an Indexed Job (JOB_COMPLETION_INDEX is set)"
        index = _int_var(environ, "JOB_COMPLETION_INDEX", 0, context)
        world_size = _int_var(environ, "WORLD_SIZE", 1, context)
        if index >= world_size:
            raise ConfigError(
                f"JOB_COMPLETION_INDEX={index} is not below WORLD_SIZE={world_size}: the Job's completions "
                "and parallelism must equal WORLD_SIZE"
            )
        addr, port = _rank0_location(environ, config, world_size, context)
        # One rank per pod, unless something (the local launcher) runs several on one machine and says so.
        local_world = (
            _int_var(environ, "LOCAL_WORLD_SIZE", 1, context) if "LOCAL_WORLD_SIZE" in environ else 1
        )
        return DistEnv(
            rank=index, world_size=world_size, local_rank=0, local_world_size=local_world,
            master_addr=addr, master_port=port, source="indexed-job",
        )
    return DistEnv(
        rank=0, world_size=1, local_rank=0, local_world_size=1, master_addr="", master_port=0, source="single"
    )


def node_env(
    node_rank: int, nnodes: int, nproc: int, environ: Mapping[str, str], config: DistributedConfig
) -> DistEnv:
    """The Indexed Job contract for a pod that runs `nproc` ranks itself (`launch --nnodes`): the pod is
    `node_rank` of `nnodes`, and rank 0's pod is found as in path 2 (MASTER_ADDR or the Kubernetes API, with
    MASTER_PORT). `connect` on the result gives the address this pod's ranks use. Raises ConfigError."""
    addr, port = _rank0_location(environ, config, nnodes, f"launch --nnodes {nnodes}")
    return DistEnv(
        rank=node_rank, world_size=nnodes, local_rank=0, local_world_size=nproc, master_addr=addr,
        master_port=port, source="indexed-job",
    )


RETRY_WAIT = wait_exponential(multiplier=0.1, exp_base=1.5, max=1.0)
"""0.1, 0.15, 0.225, ... s between attempts, at most 1 s: quick while rank 0 starts, gentle on DNS and the API."""


def retry_until(
    attempt: Callable[[], str | None],
    *,
    deadline: float,
    what: str,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    started: float | None = None,
) -> str:
    """Call `attempt` until it returns a value; it returns None or raises OSError to mean "not yet".

    Waits `RETRY_WAIT` between attempts, never past `deadline` (a `clock` time); once it has passed, raises
    RendezvousError naming `what`, the seconds waited, the attempts and the last error seen.
    """
    start = clock() if started is None else started
    last_error = ["no answer yet"]

    def remember_error(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if error is not None:
            last_error[0] = f"{type(error).__name__}: {error}"

    def give_up(state: RetryCallState) -> NoReturn:
        raise RendezvousError(
            f"{what}: gave up after waiting {clock() - start:.1f} s ({state.attempt_number} attempts); last error: "
            f"{last_error[0]}"
        )

    retrying = Retrying(
        retry=retry_if_exception_type(OSError) | retry_if_result(lambda result: result is None),
        # The clock is injectable (tests run on simulated time), so stop and wait read it rather than
        # tenacity's own stop_after_delay, which reads time.monotonic.
        stop=lambda state: clock() >= deadline,
        wait=lambda state: min(RETRY_WAIT(state), max(0.0, deadline - clock())),
        sleep=sleep,
        after=remember_error,
        retry_error_callback=give_up,
    )
    result = retrying(attempt)
    assert result is not None  # a None result is retried until give_up raises
    return result


def resolve_host(host: str, port: int) -> str:
    """One DNS lookup of `host`; returns an address to connect to (raises OSError when it does not resolve)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return str(infos[0][4][0])


def port_accepts(addr: str, port: int, timeout: float = 2.0) -> str | None:
    """One TCP connection attempt to `addr:port`; returns `addr` when it was accepted."""
    with socket.create_connection((addr, port), timeout=timeout):
        return addr


def find_rank0(
    env: DistEnv,
    config: DistributedConfig,
    *,
    discover_pod_ip: Callable[[], str | None] | None = None,
    resolve: Callable[[str, int], str] = resolve_host,
    probe: Callable[[str, int], str | None] = port_accepts,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> DistEnv:
    """Return `env` with a reachable MASTER_ADDR: for rank > 0 of an Indexed Job, discover rank 0's address
    (DNS name from the Job, or `discover_pod_ip` for kubernetes-api discovery), resolve it and wait until rank
    0's port accepts a connection, all within `distributed.rendezvous_timeout_s`.

    Rank 0 hosts the rendezvous store on all interfaces and connects to it over loopback, so it never waits
    for its own DNS name, which may not exist until its pod is ready.
    """
    if env.source != "indexed-job" or not env.is_distributed:
        return env
    if env.rank == 0:
        return dataclasses.replace(env, master_addr="127.0.0.1")
    start = clock()
    deadline = start + config.rendezvous_timeout_s

    def wait(attempt: Callable[[], str | None], what: str) -> str:
        return retry_until(attempt, deadline=deadline, what=what, clock=clock, sleep=sleep, started=start)

    if env.master_addr:
        host = env.master_addr
    else:
        if discover_pod_ip is None:
            raise ConfigError("MASTER_ADDR is not set and no Kubernetes API discovery is available")
        host = wait(discover_pod_ip, "rank 0's pod IP from the Kubernetes API")
    resolved: list[str] = []

    def reachable() -> str | None:
        # Resolved again at every try: after a restart of the gang the name may still point at the old rank 0's
        # address for a moment, and waiting on that address would never succeed.
        addr = resolve(host, env.master_port)
        resolved[:] = [addr]
        return probe(addr, env.master_port)

    try:
        addr = wait(reachable, f"waiting for rank 0 at {host} port {env.master_port} to accept connections")
    except RendezvousError as err:
        if not resolved:
            raise RendezvousError(f"resolving rank 0's address {host!r}: {err}") from None
        raise RendezvousError(f"{err} (last resolved to {resolved[0]})") from None
    # One line per rendezvous in the pod's log: which name resolved to which address, and how long it took.
    print(
        f"rank {env.rank}: rank 0 is {host} = {addr}:{env.master_port} (found in {clock() - start:.1f} s)",
        file=sys.stderr, flush=True,
    )  # fmt: skip
    return dataclasses.replace(env, master_addr=addr)


def connect(env: DistEnv, config: DistributedConfig, environ: Mapping[str, str]) -> DistEnv:
    """`find_rank0` with Kubernetes API discovery wired in where the contract asks for it."""
    discover: Callable[[], str | None] | None = None
    if env.source == "indexed-job" and env.rank > 0 and not env.master_addr:
        from trainer.k8s import InClusterAPI, rank0_pod_ip

        api = InClusterAPI.from_environment(environ)
        discover = functools.partial(rank0_pod_ip, api, environ["TRAINER_JOB_NAME"])

    return find_rank0(env, config, discover_pod_ip=discover)
