"""A real redis-server on a free port for tests: started, waited for (its ready line), stopped."""
import shutil
import socket
import subprocess
import threading

READY = b"Ready to accept connections"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill(proc: subprocess.Popen | None) -> None:
    """Kill a server started here, reap it, close its pipe; None (what `proc` becomes)."""
    if proc is not None:
        proc.kill()
        proc.wait()
        proc.stdout.close()


class RedisServer:
    """`start()` returns once the server logged that it accepts connections; `stop()` kills it.
    Restarting keeps the port, so clients reconnect to the same URL (the recovery tests)."""

    def __init__(self, port: int | None = None, args: tuple = ()):
        self.port = port or free_port()
        self.args = tuple(args)          # more redis-server options (e.g. --replicaof host port)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (scripts/setup.sh installs it)")
        # No persistence: each start is an empty server; the log goes to stdout to read READY.
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--logfile", "", *self.args], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        lines = []
        for line in self.proc.stdout:   # blocks until the server says it is ready (or exits)
            lines.append(line)
            if READY in line:
                break
        else:
            raise RuntimeError(f"redis-server did not start: {b''.join(lines).decode(errors='replace')}")
        return self

    def stop(self) -> None:
        self.proc = _kill(self.proc)


class SentinelServer:
    """A real Redis Sentinel (redis-server --sentinel) watching `master` under SERVICE: started
    once it reports the master monitored; `stop()` kills it."""

    SERVICE = "atpmaster"
    MONITORING = b"+monitor master"

    def __init__(self, master: RedisServer, directory):
        self.master, self.port = master, free_port()
        self.conf = directory / "sentinel.conf"
        self.proc: subprocess.Popen | None = None
        self.lines: list[bytes] = []
        self._seen = threading.Condition()

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.SERVICE}/0"

    def start(self) -> "SentinelServer":
        # sentinel rewrites its config file: it must be its own, writable
        self.conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndaemonize no\nlogfile \"\"\n"
                             f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master.port} 1\n"
                             f"sentinel down-after-milliseconds {self.SERVICE} 500\n"
                             f"sentinel failover-timeout {self.SERVICE} 5000\n")
        self.proc = subprocess.Popen([shutil.which("redis-server"), str(self.conf), "--sentinel"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        lines = []
        for line in self.proc.stdout:
            lines.append(line)
            if self.MONITORING in line:
                break
        else:
            raise RuntimeError(f"redis sentinel did not start: {b''.join(lines).decode(errors='replace')}")
        self.lines = lines
        threading.Thread(target=self._follow, daemon=True).start()
        return self

    def _follow(self) -> None:
        for line in self.proc.stdout:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()

    def wait_for(self, marker: bytes, timeout_s: float = 30.0) -> None:
        """Block until the sentinel logged `marker` (its events: +slave, +switch-master...)."""
        with self._seen:
            if not self._seen.wait_for(lambda: any(marker in ln for ln in self.lines), timeout_s):
                raise AssertionError(f"sentinel never logged {marker!r}: {b''.join(self.lines)[-2000:]!r}")

    def stop(self) -> None:
        self.proc = _kill(self.proc)


def _cluster_port() -> int:
    """A free port p with p + 10000 free too (a cluster node's bus port; p must be <= 55535)."""
    import random
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
    with `redis-cli --cluster create`), ready once every slot is served; `stop()` kills it."""

    def __init__(self, directory, masters: int = 3):
        self.directory = directory
        self.nodes = [RedisServer(_cluster_port(), args=("--cluster-enabled", "yes", "--cluster-config-file",
                                        str(directory / f"nodes-{i}.conf")))
                      for i in range(masters)]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> "ClusterServer":
        try:
            return self._start()
        except BaseException:
            self.stop()                  # no node outlives a failed start
            raise

    def _start(self) -> "ClusterServer":
        import time
        for node in self.nodes:
            node.start()
        subprocess.run([shutil.which("redis-cli"), "--cluster", "create",
                        *(f"127.0.0.1:{n.port}" for n in self.nodes), "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, capture_output=True, timeout=30)
        # the nodes agree on the slot map by gossip after `create`: wait (bounded) until they do
        deadline = time.monotonic() + 20
        while b"cluster_state:ok" not in subprocess.run(
                [shutil.which("redis-cli"), "-p", str(self.nodes[0].port), "cluster", "info"],
                capture_output=True, timeout=5).stdout:
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis cluster did not reach cluster_state:ok")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
