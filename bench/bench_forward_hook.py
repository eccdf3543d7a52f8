"""µs the forwarding hook adds to a routing decision (`python -m bench.bench_forward_hook`):
Router.choose wrapped by Forwarding.annotate, for a local decision (one dict miss) and a remote
one (the path reason appended). Without [federation] the hook is not installed at all."""
import statistics
import time
import timeit

from atp_server import config as atp_config
from atp_server.federation.forward import Forwarding
from atp_server.routing.router import Router
from atp_server.types import ChatRequest

N, REPEAT = 200_000, 7


class _Cfg:
    router_id, forward = "A", ()


def main() -> None:
    cfg = atp_config.loads(atp_config.DEFAULT_TOML)
    router = Router(list(cfg.models))
    fw = Forwarding(_Cfg(), router, router.models.values(), time.monotonic)
    fw.paths["remote-x"] = "federation path A>B>C"
    request = ChatRequest(messages=[("user", "hello")], model="sim-fast")
    local = router.choose(request, 0.0)
    remote = local._replace(model="remote-x")
    for name, decision in (("local decision", local), ("remote decision", remote)):
        def inner(req, now, d=decision):
            return d
        wrapped = fw.annotate(inner)
        bare = [t / N * 1e6 for t in timeit.repeat(lambda: inner(request, 0.0), number=N, repeat=REPEAT)]
        hooked = [t / N * 1e6 for t in timeit.repeat(lambda: wrapped(request, 0.0), number=N, repeat=REPEAT)]
        print(f"{name}: +{statistics.median(hooked) - statistics.median(bare):.3f} µs "
              f"(median of {REPEAT} × {N})")


if __name__ == "__main__":
    main()
