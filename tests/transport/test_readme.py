"""The README's Python quickstart runs as written against a real server and prints what it shows:
answers as text — no `Chunk(...)` or `Result(...)` reprs."""
import contextlib
import io
import os
import pathlib
import re

README = pathlib.Path(__file__).parents[2] / "README.md"


def quickstart() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (block,) = [b for b in blocks if "atp_client" in b]
    return block


def test_readme_python_snippet_prints_text(atp_server):
    h = atp_server
    cert = os.path.join(h.config.server.state_dir, "quic-cert.pem")
    code = (quickstart()
            .replace("127.0.0.1:8470", f"127.0.0.1:{h.ports.http}")
            .replace("127.0.0.1:8471", f"127.0.0.1:{h.ports.grpc}")
            .replace('"127.0.0.1", 8472', f'"127.0.0.1", {h.ports.quic}')
            .replace('os.path.expanduser("~/.atp/quic-cert.pem")', repr(cert)))
    assert code.count(str(h.ports.quic)) == 1 and repr(cert) in code   # every address rewritten
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and all(line.strip() for line in lines)   # OpenAI, gRPC, QUIC stream
    assert "Chunk(" not in out.getvalue() and "Result(" not in out.getvalue()
