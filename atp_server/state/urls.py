"""The Redis URL forms ATP accepts beyond redis-py's own (Sentinel, Cluster), parsed without importing redis:
config checks them at load, and a config load must not import the Redis client (nor, through
it, OpenTelemetry)."""


SENTINEL_SCHEME = "redis+sentinel://"
CLUSTER_SCHEME = "redis+cluster://"


def _hosts(rest: str) -> tuple[list[tuple[str, int]], str | None]:
    """`[:password@]host:port[,host:port...]` -> (hosts, password); ValueError names the bad one."""
    password = None
    if "@" in rest:
        auth, rest = rest.rsplit("@", 1)
        password = auth.split(":", 1)[-1] or None
    hosts = []
    for item in rest.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{item!r} is not host:port")
        hosts.append((host.strip("[]"), int(port)))
    return hosts, password


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], str | None]:
    """`redis+cluster://[:password@]host:port[,host:port...]` -> (seed nodes, password)."""
    rest = url[len(CLUSTER_SCHEME):].rstrip("/")
    if not rest or "/" in rest:
        raise ValueError("needs host:port[,host:port...] and no path (a cluster has only db 0)")
    return _hosts(rest)


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int, str | None]:
    """`redis+sentinel://[:password@]host:port[,host:port...]/service[/db]` -> (sentinels,
    service name, db, password). ValueError says what is wrong."""
    hosts, _, path = url[len(SENTINEL_SCHEME):].partition("/")
    parts = [p for p in path.split("/") if p]
    if not hosts or not parts:
        raise ValueError("needs host:port[,host:port...]/service[/db]")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError(f"the path {path!r} is not service[/db]")
    sentinels, password = _hosts(hosts)
    return sentinels, parts[0], int(parts[1]) if len(parts) == 2 else 0, password


# The URL schemes beyond redis-py's own, each with what checks its form (config.parse_state).
MULTI_NODE_URLS = {SENTINEL_SCHEME: parse_sentinel_url, CLUSTER_SCHEME: parse_cluster_url}
