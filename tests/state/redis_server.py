"""A real redis-server on a free port for tests: started, waited for (its ready line), stopped."""
import shutil
import socket
import subprocess

READY = b"Ready to accept connections"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """`start()` returns once the server logged that it accepts connections; `stop()` kills it.
    Restarting keeps the port, so clients reconnect to the same URL (the recovery tests)."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
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
             "--daemonize", "no", "--logfile", ""], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        lines = []
        for line in self.proc.stdout:   # blocks until the server says it is ready (or exits)
            lines.append(line)
            if READY in line:
                break
        else:
            raise RuntimeError(f"redis-server did not start: {b''.join(lines).decode(errors='replace')}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()
            self.proc = None
