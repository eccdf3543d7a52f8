"""Real redis-server processes for tests (a node, a Sentinel, a Cluster): started, waited for on
their own log lines, stopped."""
import random
import shutil
import socket
import subprocess
import threading

READY = b"Ready to accept connections"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Logged:
    """A redis-server child whose log (its stdout) is read as it comes: `wait_for(marker)` blocks
    until a line holds it — the server's own events are what a test waits on, never a timer —
    and the pipe never fills up and stalls the server."""

    proc: subprocess.Popen | None = None

    def _spawn(self, cmd: list[str], ready: bytes, what: str) -> None:
        self.lines: list[bytes] = []
        self._seen = threading.Condition()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._follow, args=(self.proc,), daemon=True).start()
        try:
            self.wait_for(ready, what=f"{what} did not start")
        except AssertionError:
            self.stop()
            raise

    def _follow(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()
        with self._seen:                  # exited: wake a waiter, which then sees no marker
            self._seen.notify_all()

    def wait_for(self, marker: bytes, timeout_s: float = 30.0, what: str = "") -> None:
        """Block until the server logged `marker` (ready, +slave, +switch-master, cluster ok...)."""
        def seen() -> bool:
            return any(marker in ln for ln in self.lines) or self.proc.poll() is not None
        with self._seen:
            self._seen.wait_for(seen, timeout_s)
            if not any(marker in ln for ln in self.lines):
                raise AssertionError(f"{what or 'redis'}: never logged {marker!r}: "
                                     f"{b''.join(self.lines)[-2000:].decode(errors='replace')}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()
            self.proc = None


class RedisServer(_Logged):
    """`start()` returns once the server logged that it accepts connections; `stop()` kills it.
    Restarting keeps the port, so clients reconnect to the same URL (the recovery tests)."""

    def __init__(self, port: int | None = None, args: tuple = ()):
        self.port = port or free_port()
        self.args = tuple(args)          # more redis-server options (e.g. --replicaof host port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (scripts/setup.sh installs it)")
        # No persistence: each start is an empty server; the log goes to stdout to read READY.
        self._spawn([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--daemonize", "no", "--logfile", "", *self.args],
                    READY, "redis-server")
        return self


class SentinelServer(_Logged):
    """A real Redis Sentinel (redis-server --sentinel) watching `master` under SERVICE: started
    once it reports the master monitored; `stop()` kills it."""

    SERVICE = "atpmaster"
    MONITORING = b"+monitor master"

    def __init__(self, master: RedisServer, directory):
        self.master, self.port = master, free_port()
        self.conf = directory / "sentinel.conf"

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.SERVICE}/0"

    def start(self) -> "SentinelServer":
        # sentinel rewrites its config file: it must be its own, writable
        self.conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndaemonize no\nlogfile \"\"\n"
                             f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master.port} 1\n"
                             f"sentinel down-after-milliseconds {self.SERVICE} 500\n"
                             f"sentinel failover-timeout {self.SERVICE} 5000\n")
        self._spawn([shutil.which("redis-server"), str(self.conf), "--sentinel"], self.MONITORING,
                    "redis sentinel")
        return self


def _cluster_port() -> int:
    """A free port p with p + 10000 free too (a cluster node's bus port; p must be <= 55535)."""
    for _ in range(200):
        p = random.randint(20000, 45000)
        try:
            for port in (p, p + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return p
    raise RuntimeError("no free port pair for a cluster node")


class ClusterServer:
    """A real three-master Redis Cluster on free ports (redis-server --cluster-enabled, joined
    with `redis-cli --cluster create`), ready once every node logged that the cluster is ok;
    `stop()` kills it."""

    CLUSTER_OK = b"Cluster state changed: ok"

    def __init__(self, directory, masters: int = 3):
        self.nodes = [RedisServer(_cluster_port(), args=(
            "--cluster-enabled", "yes", "--cluster-config-file", str(directory / f"nodes-{i}.conf")))
            for i in range(masters)]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> "ClusterServer":
        try:
            for node in self.nodes:
                node.start()
            subprocess.run([shutil.which("redis-cli"), "--cluster", "create",
                            *(f"127.0.0.1:{n.port}" for n in self.nodes), "--cluster-replicas", "0",
                            "--cluster-yes"], check=True, capture_output=True, timeout=30)
            for node in self.nodes:       # each learns the slot map by gossip, then says so
                node.wait_for(self.CLUSTER_OK, what="cluster node")
        except BaseException:
            self.stop()                  # no node outlives a failed start
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
