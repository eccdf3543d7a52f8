"""Prometheus families for the federation: peers by session state, routes by standing, remote rows.

Read at scrape time from the AGP link's node (no per-request cost). Labels are fixed words (the
session states, best/alternate/suppressed) and, per peer, router ids from the trust store: the
series are bounded by configuration, not by what peers advertise.
"""
from prometheus_client.core import GaugeMetricFamily

from .session import State


class FederationCollector:
    def __init__(self, app):
        self.app = app          # App.federation (the link) exists once the App has started

    def describe(self):
        return []

    def collect(self):
        link = self.app.federation
        peers = GaugeMetricFamily("atp_federation_peers", "AGP sessions by state", labels=["state"])
        up = GaugeMetricFamily("atp_federation_peer_up", "1 while the session with this trusted "
                               "peer is established", labels=["peer"])
        routes = GaugeMetricFamily("atp_federation_routes", "Routes learnt from peers: the best "
                                   "per model, the alternates, and those damping suppresses",
                                   labels=["standing"])
        remote = GaugeMetricFamily("atp_federation_remote_models", "Remote models in the routing "
                                   "table (forwarded to a next hop)")
        if link is not None:
            status = link.node.status(link.clock())
            by_state = {s.value: 0 for s in State}
            trusted = set(link.node.trust)
            seen = {}
            for p in status["peers"]:
                by_state[p["state"]] = by_state.get(p["state"], 0) + 1
                if p["router_id"] in trusted:
                    seen[p["router_id"]] = seen.get(p["router_id"]) or p["state"] == State.ESTABLISHED.value
            for state, n in by_state.items():
                peers.add_metric([state], n)
            for peer in sorted(trusted):
                up.add_metric([peer], 1.0 if seen.get(peer) else 0.0)
            standing = {"best": 0, "alternate": 0, "suppressed": 0}
            for r in status["routes"]:
                if r["origin"] == status["router_id"]:
                    continue            # this router's own models
                key = "suppressed" if r["suppressed"] else "best" if r["best"] else "alternate"
                standing[key] += 1
            for key, n in standing.items():
                routes.add_metric([key], n)
            forwarding = getattr(self.app, "forwarding", None)
            remote.add_metric([], len(forwarding.remote) if forwarding is not None else 0)
        yield peers
        yield up
        yield routes
        yield remote
