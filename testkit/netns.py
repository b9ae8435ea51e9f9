"""Several hosts on one machine, for multi-host tests: each host is a network namespace
(``ip netns``) with its own hostname (a UTS namespace) and its own private state directory (a
tmpfs in a mount namespace of its own), joined by a veth pair to a bridge in the root namespace,
on a private /24 that nothing routes beyond this machine (the bridge has no uplink). So the hosts
share the network and nothing else: the same state path on each host is a different, empty
directory, invisible to the others and to the test process; the code and the .venv are the
machine's (the "installed software" of every host).

A host is a holder process (``sleep infinity``) that owns the namespaces; every process started
on the host joins them with ``nsenter`` and runs the same .venv python from the repository root.
:meth:`Network.vanish` takes a host away as a power cut would: its link is deleted first (no FIN or
RST reaches anyone), then every process in its namespace is killed and the namespace deleted.
:meth:`Network.close` leaves nothing behind (processes, namespaces, links, the bridge), also
after a failure; names carry the owner's process id, and a later run deletes what a killed run
left (:func:`sweep`).

:func:`explainer_cluster` builds the service on it: Redis, the object store, the API and N Celery
workers, each on its own host. Root only (``unavailable()`` says why not, for a skip)."""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from testkit.s3 import S3Endpoint, SeaweedS3
from testkit.stack import ROOT, Process, wait_for

TOOLS = ("ip", "unshare", "nsenter", "mount")
PREFIX = "mh"  # namespaces and links: mh<owner pid, base 36>-<host name>
NAME = re.compile(rf"^{PREFIX}([0-9a-z]{{1,5}})-[a-z0-9]{{1,7}}$")


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        number, rest = divmod(number, 36)
        text = digits[rest] + text
        if not number:
            return text


def _ip(*args: str, check: bool = True) -> str:
    """``ip ARGS``; its stdout. A failure raises with ip's own message (``check``)."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def unavailable() -> str | None:
    """Why network namespaces cannot be made here (a test's skip reason), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add); this test runs as a user"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install -y iproute2 util-linux)"
    probe = f"{PREFIX}{_base36(os.getpid())}-probe"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"cannot create a network namespace: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespace_pids(namespace: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
    return [int(pid) for pid in done.stdout.split() if pid.isdigit()]


def _kill_namespace(namespace: str, timeout: float = 10.0) -> None:
    """SIGKILL every process in the namespace, until none is left."""
    deadline = time.monotonic() + timeout
    while pids := _namespace_pids(namespace):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} of namespace {namespace} do not die")
        time.sleep(0.05)


def sweep() -> list[str]:
    """Delete the namespaces and links that a run killed before its cleanup left (their owner
    process is gone); returns their names."""
    removed = []
    for line in _ip("netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        match = NAME.match(name)
        if match and not _alive(int(match.group(1), 36)):
            _kill_namespace(name)
            _ip("netns", "del", name, check=False)
            removed.append(name)
    for line in _ip("-o", "link", "show", check=False).splitlines():
        link = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        match = NAME.match(link)
        if match and not _alive(int(match.group(1), 36)):
            _ip("link", "del", link, check=False)
            removed.append(link)
    return removed


def _free_subnet(seed: int) -> ipaddress.IPv4Network:
    """A /24 in 10.0.0.0/8 that no address or route of this machine overlaps."""
    used = []
    for line in (_ip("-4", "-o", "addr", "show") + _ip("-4", "route", "show")).splitlines():
        for word in line.split():
            with contextlib.suppress(ValueError):
                if "/" in word or word[0].isdigit():
                    used.append(ipaddress.ip_network(word, strict=False))
    for step in range(1000):
        index = (seed + step * 7919) % (200 * 250)
        subnet = ipaddress.ip_network(f"10.{50 + index // 250}.{index % 250 + 1}.0/24")
        if not any(subnet.overlaps(other) for other in used):
            return subnet
    raise RuntimeError("no free private /24 for the test network")


@dataclass
class Host:
    """One host: its namespaces (held by ``holder``), its address and its processes; its
    hostname is its name."""

    name: str
    namespace: str
    link: str  # the root side of its veth pair, on the bridge
    address: str
    state: Path  # its private tmpfs (the same path on every host; empty in the root namespace)
    holder: Process
    processes: list[Process] = field(default_factory=list)
    gone: bool = False

    def start(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> Process:
        """Run ``args`` on this host (its network, hostname and state directory), from the
        repository root, with this process's environment plus ``env``."""
        process = Process([*self.enter(), *args], log, env)
        self.processes.append(process)
        return process

    def enter(self) -> list[str]:
        """The command prefix that runs a command on this host (``nsenter`` into its network,
        hostname and mounts, in the repository root)."""
        assert not self.gone, f"host {self.name} is gone"
        return ["nsenter", f"--target={self.holder.proc.pid}", "--net", "--uts", "--mount",
                f"--wd={ROOT}", "--"]  # fmt: skip

    def path(self, inside: str | Path) -> Path:
        """Where a path of this host's private state is seen from the root namespace (while the
        host is up)."""
        return Path(f"/proc/{self.holder.proc.pid}/root") / Path(inside).relative_to("/")

    def stop(self, grace_s: float = 2.0) -> None:
        """SIGTERM to each process it started, SIGKILL after ``grace_s``; then everything left
        in its namespace."""
        for process in self.processes:
            if process.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        _kill_namespace(self.namespace)
        for process in [*self.processes, self.holder]:
            process.kill()  # reaps it, closes its log


class Network:
    """A bridge in the root namespace and hosts on it (:meth:`add`); the root namespace is the
    test's client at the subnet's first address. Process logs go to ``<folder>/logs``; every
    host's private state is mounted at ``<folder>/state`` (an empty folder in the root
    namespace)."""

    def __init__(self, folder: Path):
        if reason := unavailable():
            raise RuntimeError(reason)
        sweep()
        self.logs, self.state = folder / "logs", folder / "state"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.state.mkdir(parents=True, exist_ok=True)
        self.tag = f"{PREFIX}{_base36(os.getpid())}"
        self.subnet = _free_subnet(os.getpid())
        self.bridge = f"{self.tag}-br"
        self.hosts: dict[str, Host] = {}
        self._next = 10
        gateway = f"{self.subnet.network_address + 1}/{self.subnet.prefixlen}"
        _ip("link", "add", self.bridge, "type", "bridge")
        try:
            _ip("addr", "add", gateway, "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        except BaseException:
            _ip("link", "del", self.bridge, check=False)
            raise

    @property
    def client_address(self) -> str:
        return str(self.subnet.network_address + 1)

    def add(self, name: str, state_mb: int = 2048) -> Host:
        """A new host ``name`` (at most 7 of a-z0-9) with ``state_mb`` of private state at
        :attr:`state`; its hostname is ``name``."""
        assert re.fullmatch(r"[a-z0-9]{1,7}", name) and name not in self.hosts, name
        namespace = link = f"{self.tag}-{name}"
        address = str(self.subnet.network_address + self._next)
        self._next += 1
        _ip("netns", "add", namespace)
        try:
            _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            _ip("link", "set", link, "master", self.bridge, "up")
            _ip("-n", namespace, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
            # The holder: a hostname and a tmpfs of its own, then it sleeps while the host is up.
            script = (
                'hostname "$0" && mount -t tmpfs -o "size=$2m,mode=0755" hoststate "$1" && '
                'mkdir "$1/tmp" && echo up && exec sleep infinity'
            )
            holder = Process(
                ["ip", "netns", "exec", namespace, "unshare", "--uts", "--mount",
                 "--propagation", "private", "--", "sh", "-c", script, name, str(self.state),
                 str(state_mb)],
                self.logs / f"{name}-holder.log",
            )  # fmt: skip
        except BaseException:
            _kill_namespace(namespace)
            _ip("link", "del", link, check=False)
            _ip("netns", "del", namespace, check=False)
            raise
        host = Host(name, namespace, link, address, self.state, holder)
        self.hosts[name] = host
        wait_for(lambda: "up" in holder.output() or not holder.alive(), 20, f"host {name}")
        assert holder.alive(), f"host {name} did not start: {holder.output()}"
        return host

    def vanish(self, host: Host) -> float:
        """Take ``host`` away as a power cut would: its link first (so that no connection of
        its processes is closed in an orderly way), then every process on it, then its
        namespace. Returns the monotonic time when the namespace was deleted."""
        _ip("link", "del", host.link)
        _kill_namespace(host.namespace)
        _ip("netns", "del", host.namespace)
        deleted = time.monotonic()
        host.gone = True
        for process in [*host.processes, host.holder]:
            process.kill()  # reaps it
        return deleted

    def close(self) -> None:
        """Stop every host and delete every namespace and link, and the bridge; raises at the
        end if something could not be removed."""
        errors = []
        for host in self.hosts.values():
            try:
                if not host.gone:
                    host.stop()
            except Exception as error:
                errors.append(f"{host.name}: {error}")
            with contextlib.suppress(Exception):
                _kill_namespace(host.namespace)
            _ip("link", "del", host.link, check=False)
            _ip("netns", "del", host.namespace, check=False)
        _ip("link", "del", self.bridge, check=False)
        left = [n for n in _ip("netns", "list", check=False).split() if n.startswith(self.tag)]
        links = [n for n in _ip("-br", "link", check=False).split() if n.startswith(self.tag)]
        if errors or left or links:
            raise RuntimeError(f"cleanup incomplete: {errors}, namespaces {left}, links {links}")


@contextlib.contextmanager
def network(folder: Path) -> Iterator[Network]:
    """A :class:`Network` that is closed however the block ends."""
    net = Network(folder)
    try:
        yield net
    finally:
        net.close()


# --- the explanation service on it ------------------------------------------------------------

REDIS_PORT, API_PORT = 6379, 8000
API_KEY, ADMIN_KEY = "multihost-key", "multihost-admin"
# tests.tiny_models' 2-class CNN at 32², uploaded as a state dict (patterns need its modules)
TINY = {"name": "tiny", "source": "state_dict", "factory": "tests.tiny_models:tiny_cnn",
        "input_size": [32, 32], "labels": ["left", "right"], "normalize": False}  # fmt: skip
TINY_SETTINGS = {"allowed_factories": "torchvision,tests.tiny_models:tiny_cnn"}


@dataclass
class Cluster:
    """The service spread over hosts: ``redis``, ``store`` (the object store, ``s3`` its
    endpoint), ``api`` and the ``workers`` (host name → host); ``client`` talks to the API from
    the root namespace."""

    net: Network
    redis: Host
    store: Host | None
    s3: S3Endpoint | None
    api: Host
    workers: dict[str, Host]
    env: dict[str, str]
    client: httpx.Client
    logs: Path

    @property
    def redis_url(self) -> str:
        return f"redis://{self.redis.address}:{REDIS_PORT}/0"

    def record(self, job_id: str) -> Any:
        """The job's record as the workers wrote it (jobs.records.JobRecord), from Redis."""
        from jobs.store import RedisJobStore

        store = RedisJobStore(self.redis_url, 3600)
        try:
            return store.get(job_id)
        finally:
            store.redis.close()

    def host_of(self, job_id: str) -> str | None:
        """The hostname of the worker that ran (or runs) the job: its record's run token is
        ``host/pid/random`` (jobs.records.new_run_token)."""
        record = self.record(job_id)
        token = record.run_token if record is not None else None
        return token.partition("/")[0] if token else None

    def worker_log(self, name: str) -> str:
        return (self.logs / f"{name}-worker.log").read_text(errors="replace")

    def upload_tiny(self) -> None:
        """:data:`TINY` with seeded random weights, as an admin's upload (probed on the API's
        host); the cluster needs :data:`TINY_SETTINGS`."""
        import torch

        from tests.tiny_models import tiny_cnn

        torch.manual_seed(3)
        weights = io.BytesIO()
        torch.save(tiny_cnn().state_dict(), weights)
        added = self.client.post(
            "/models", headers={"X-Admin-Key": ADMIN_KEY}, data={"config": json.dumps(TINY)},
            files={"weights": ("tiny.pt", weights.getvalue())},
        )  # fmt: skip
        assert added.status_code == 201, added.text

    def submit(self, path: str, request: dict) -> str:
        """POST a job (``/explain``, ``/patterns``); its id."""
        created = self.client.post(path, json=request)
        assert created.status_code == 202, created.text
        return created.json()["id"]

    def running_on(self, job_id: str, progress: bool = False, timeout: float = 120) -> str:
        """The hostname of the worker once it runs the job (and, with ``progress``, once the
        job has reported progress)."""

        def running() -> str | None:
            record = self.record(job_id)
            if record is None or record.status != "running" or not record.run_token:
                assert record is None or record.status == "queued", record
                return None
            if progress and not self.client.get(f"/jobs/{job_id}").json()["progress"]:
                return None
            return record.run_token.partition("/")[0]

        return wait_for(running, timeout, f"job {job_id} to run", interval=0.05)

    def cancel(self, job_id: str) -> None:
        """DELETE the job and wait until it reads cancelled."""
        assert self.client.delete(f"/jobs/{job_id}").status_code in (200, 202)
        assert self.wait_done(job_id)["status"] == "cancelled"

    def wait_done(self, job_id: str, timeout: float = 120) -> dict:
        """Poll the API until the job is in a terminal state; its last view."""

        def done() -> dict | None:
            view = self.client.get(f"/jobs/{job_id}").json()
            return view if view["status"] in ("succeeded", "failed", "cancelled") else None

        return wait_for(done, timeout, f"job {job_id}", interval=0.05)


def _redis(host: Host, logs: Path) -> None:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (apt-get install -y redis-server)"
    process = host.start(
        [binary, "--port", str(REDIS_PORT), "--bind", host.address, "--dir", str(host.state),
         "--appendonly", "yes", "--save", "", "--protected-mode", "no"],
        logs / f"{host.name}-redis.log",
    )  # fmt: skip
    wait_for(lambda: "Ready to accept" in process.output() or not process.alive(), 20, "Redis")
    assert process.alive(), process.output()


def _object_store(host: Host, folder: Path) -> tuple[SeaweedS3, S3Endpoint]:
    """SeaweedFS's S3 gateway on ``host``, with its bucket; its data and log in ``folder``, which
    the test process writes its configuration into (so not the host's private state)."""
    server = SeaweedS3(folder, host=host.address, command_prefix=host.enter())
    endpoint = server.start()
    return server, endpoint


@contextlib.contextmanager
def explainer_cluster(
    folder: Path, workers: int = 2, object_store: bool = True, **settings: object
) -> Iterator[Cluster]:
    """Redis, the object store, the API and ``workers`` Celery workers (one prefork process
    each), each on a host of its own; ``settings`` become EXPLAINER_ variables of every
    process. The API listens on its host's address with an API key (:data:`API_KEY`) and an
    admin key (:data:`ADMIN_KEY`); the client sends the API key. Everything is stopped and
    removed afterwards."""
    server: SeaweedS3 | None = None
    with network(folder) as net:
        logs, state = net.logs, net.state
        try:
            redis = net.add("redis")
            store = net.add("store") if object_store else None
            api = net.add("api")
            hosts = {f"w{i}": net.add(f"w{i}") for i in range(1, workers + 1)}
            _redis(redis, logs)
            env = {
                "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": "1",  # two cores for every host: one thread each
                "TMPDIR": str(state / "tmp"),
                "EXPLAINER_BROKER_URL": f"redis://{redis.address}:{REDIS_PORT}/0",
                "EXPLAINER_ARTIFACT_DIR": str(state / "artifacts"),
                "EXPLAINER_CACHE_DIR": str(state / "cache"),
                "EXPLAINER_MODEL_DIR": str(state / "models"),
                "EXPLAINER_API_KEYS": API_KEY,
                "EXPLAINER_ADMIN_KEYS": ADMIN_KEY,
            }
            endpoint = None
            if store is not None:
                (folder / "store").mkdir(exist_ok=True)
                server, endpoint = _object_store(store, folder / "store")
                env.update(endpoint.env("explainer"))
            env.update({f"EXPLAINER_{k.upper()}": str(v) for k, v in settings.items()})
            started = [
                (name, host.start(
                    [sys.executable, "-m", "celery", "-A", "workers", "worker", "--pool",
                     "prefork", "--concurrency", "1", "--loglevel", "INFO", "--hostname",
                     f"{name}@{name}", "--without-gossip", "--without-mingle"],
                    logs / f"{name}-worker.log", env,
                ))
                for name, host in hosts.items()
            ]  # fmt: skip
            service = api.start(
                [sys.executable, "-m", "service", "--host", api.address, "--port", str(API_PORT)],
                logs / "api.log",
                env,
            )
            client = httpx.Client(base_url=f"http://{api.address}:{API_PORT}", timeout=30,
                                  headers={"X-API-Key": API_KEY})  # fmt: skip

            def api_ready() -> bool:
                if not service.alive():
                    raise RuntimeError(service.output())
                try:
                    return client.get("/health").status_code == 200
                except httpx.TransportError:
                    return False

            try:
                wait_for(api_ready, 120, "the API")
                for name, process in started:
                    wait_for(lambda p=process: "ready." in p.output() or not p.alive(), 120,
                             f"worker {name}")  # fmt: skip
                    assert process.alive(), process.output()
                yield Cluster(net, redis, store, endpoint, api, hosts, env, client, logs)
            finally:
                client.close()
        finally:
            if server is not None:
                server.stop()  # at once (weed's own graceful stop takes 15 s)
