"""Runs one ATP frame session for a transport: bytes in, a pipeline task per stream, frames out.

Shared by the gRPC Session RPC (each message holds whole frames) and QUIC (one session per
bidirectional stream, frames back to back). Output is flushed once per event-loop pass, so a burst of chunks
from many streams leaves as one write: on QUIC that is the 4-5x cheaper coalesced transmit.
"""
import asyncio
import logging
from contextlib import aclosing

from codec import Connection
from codec import events as ev
from codec.aio import FrameDriver, now_ms
from codec.errors import ErrorCode

from .credits import CreditPacer
from .tracing.context import from_metadata
from .types import AtpError, ChatRequest, Delta, Done

log = logging.getLogger("atp.session")
FLUSH_EVERY = 16      # ended streams that force a flush before the loop pass is over
ROLES = frozenset({"system", "user", "assistant", "tool"})   # PROTOCOL.md §6.2, REQUEST messages


def request_from_payload(p: dict) -> ChatRequest:
    """REQUEST payload (already shape-checked by the codec) -> the pipeline's ChatRequest.
    ValueError for what the shape allows but §6.2 does not (a role outside ROLES)."""
    max_cost = p.get("max_cost")
    messages = [(m[0], m[1]) for m in p["messages"]]
    for i, (role, _) in enumerate(messages):
        if role not in ROLES:
            raise ValueError(f"messages[{i}] has role {role[:40]!r}, not one of "
                             f"{', '.join(sorted(ROLES))}")
    request = ChatRequest(
        messages=messages, tier=p.get("tier", "balanced"),
        model=p.get("model") or None, max_tokens=p.get("max_tokens"),
        max_cost_usd=max_cost / 1e6 if max_cost is not None else None,
        latency_slo_ms=p.get("slo_ms"), tenant=p.get("tenant", ""),
        capabilities=tuple(p.get("caps", ())), temperature=p.get("temperature"),
        stream=p.get("stream", True), request_id=p.get("rid", ""), metadata=p.get("meta", {}))
    from_metadata(request)      # meta.traceparent / meta.tracestate: W3C trace context (tracing/)
    return request


class FrameSession(FrameDriver):
    """Glue between a codec.Connection and the pipeline; the transport supplies `write` and `closed`.

    write(frames: list[bytes]) sends frames in order; on_closed() is called once, after the final
    frames (a CLOSE) were handed to write, so the transport can end its stream. `service` is the
    transports' facade (atp_server/service.py): credentials, limits and the pipeline's calls.
    """

    def __init__(self, service, transport: str, write, on_closed, *, message_mode: bool):
        super().__init__(Connection("server", service.keyring, limits=service.limits,
                                    config=service.connection_config,
                                    nonce_cache=service.nonce_cache, now_ms=now_ms()), write)
        self.service = service
        self.transport = transport
        self._on_closed = on_closed
        if message_mode:
            self.feed = self.feed_frames    # each gRPC message holds whole frames
        self.principal = None
        self.tasks: dict[int, asyncio.Task] = {}
        self._ended = 0                 # streams ended since the last flush
        # True while the HELLO's nonce is being checked in the shared store ([state] redis_url):
        # nothing is dispatched or sent until it answers (see _check_shared_nonce).
        self._held = False
        self._nonce_task = None         # that check (referenced: a bare task may be collected)
        # Returns closed streams' credit, the request credit sized by dispatch capacity (credits.py).
        self.credits = CreditPacer(self.conn, service.credit_target, self.conn.config.initial_window[0])
        service.session_opened(transport)
        self._timer.arm()

    # ---- input -----------------------------------------------------------------------------------

    def peer_gone(self) -> None:
        """The transport lost the peer: cancel every stream (and so every upstream call)."""
        for task in list(self.tasks.values()):
            task.cancel()
        self.finish()

    def _dispatch(self) -> None:
        if self._held:
            return
        conn, service = self.conn, self.service
        while (event := conn.next_event()) is not None:
            kind = type(event)
            if kind is ev.RequestReceived:
                sid = event.stream_id
                self.credits.opened(sid, event.request)
                if service.draining:
                    conn.send_error(sid, ErrorCode.UNAVAILABLE, "server draining: retry elsewhere",
                                    retry_after_ms=1000)
                    service.refused(self.transport, reason="draining")
                    self.credits.closed(sid)
                    continue
                try:
                    request = request_from_payload(event.request)
                except (TypeError, ValueError, KeyError) as exc:
                    conn.send_error(sid, ErrorCode.INVALID_REQUEST, f"bad request: {exc}")
                    service.refused(self.transport, reason="parse")
                    self.credits.closed(sid)
                    continue
                self.tasks[sid] = self._loop.create_task(self._run(sid, request, self.fed_ns))
            elif kind is ev.StreamCancelled:
                task = self.tasks.pop(event.stream_id, None)
                if task is not None:
                    task.cancel()
            elif kind is ev.SessionStarted:
                self.principal = service.session_principal(event.key_id)
                if service.check_shared_nonce is not None:
                    self._held = True       # later events wait in the codec's queue
                    self._nonce_task = self._loop.create_task(self._check_shared_nonce(event))
                    return
            elif kind is ev.ConnectionTerminated:
                if not event.by_peer and event.code != ErrorCode.NO_ERROR:
                    service.protocol_error(self.transport, event.code)
                    log.info("%s session closed: %s (%d)", self.transport, event.message, event.code)
                for task in list(self.tasks.values()):
                    task.cancel()

    async def _check_shared_nonce(self, started: ev.SessionStarted) -> None:
        """The codec checked the opening nonce in this process's cache; workers sharing a Redis
        also need it checked there. The codec stays sans-I/O, so the shell does it: the session
        is held (no request dispatched, nothing sent) until the store answers; a nonce another
        worker already recorded closes the session with REPLAYED_NONCE, as a local replay would
        (an unreachable store failing closed: the retryable UNAVAILABLE)."""
        try:
            await self.service.check_shared_nonce(started.nonce, started.timestamp_ms, now_ms())
            refusal = None
        except AtpError as exc:
            refusal = exc
        self._held = False
        if self.finished:
            return
        if refusal is not None:
            while self.conn.next_event() is not None:   # requests that came with the HELLO
                pass
            self.close(refusal.code, refusal.message)
            return
        self._dispatch()
        self.schedule_flush()

    async def _run(self, sid: int, request: ChatRequest, started_ns: int) -> None:
        conn, service = self.conn, self.service
        try:
            if not request.stream:
                # The whole answer as one CHUNK: a signed frame per token costs ~10 µs a side.
                c = await service.complete(request, self.principal, self.transport, started_ns)
                if conn.closed:
                    return
                conn.send_chunk(sid, c.text, c.usage.output_tokens, now_ms=now_ms())
                self._send_end(sid, request, c.usage, c.decision, c.finish_reason, c.overhead_us)
                return
            async with aclosing(service.stream(request, self.principal, self.transport,
                                                started_ns)) as items:
                async for item in items:
                    if conn.closed:
                        return
                    kind = type(item)
                    if kind is Delta:
                        conn.send_chunk(sid, item.text, item.tokens, now_ms=now_ms())
                        self.schedule_flush()
                    elif kind is Done:
                        self._send_end(sid, request, item.usage, item.decision, item.finish_reason,
                                       item.overhead_us)
        except AtpError as exc:
            service.refused(self.transport, exc.code)
            if not conn.closed and sid in conn.streams:
                conn.send_error(sid, exc.code, exc.message, exc.retry_after_ms, now_ms=now_ms())
        except asyncio.CancelledError:
            pass    # the client cancelled (the codec already answered) or the session ended
        except Exception:  # a bug must cost one stream, not the session
            log.exception("stream %d failed", sid)
            if not conn.closed and sid in conn.streams:
                conn.send_error(sid, ErrorCode.INTERNAL, "internal error", now_ms=now_ms())
        finally:
            self.tasks.pop(sid, None)
            self.credits.closed(sid)
            self.schedule_flush()

    def _send_end(self, sid, request, usage, decision, finish_reason, overhead_us) -> None:
        end = {"in": usage.input_tokens, "out": usage.output_tokens,
               "cost": usage.cost_usd_micros, "model": decision.model,
               "provider": decision.provider, "finish": finish_reason,
               "overhead_us": overhead_us, "rid": request.request_id}
        if usage.estimated:       # counted by ATP, not reported by the provider (PROTOCOL.md END)
            end["est"] = True
        self.conn.send_end(sid, end, now_ms=now_ms())
        self._ended += 1
        if self._ended >= FLUSH_EVERY:
            # A burst of many finished streams leaves in slices, so the peer starts on the first
            # answers while we still work on the rest (no lock-step between the two sides).
            self.flush()

    # ---- output ----------------------------------------------------------------------------------

    def flush(self) -> None:
        if self._held:                  # the HELLO reply waits for the shared nonce check
            self._flush_pending = False
            return
        self._ended = 0
        if not self.finished:   # the CONGESTION flag rides on the frames about to leave
            self.conn.congested = self.service.congested()
            self.credits.top_up()
        super().flush()

    def close(self, code: int = ErrorCode.NO_ERROR, message: str = "") -> None:
        """Server-initiated close (shutdown): CLOSE goes out with the next flush."""
        if not self.conn.closed:
            self.conn.close(code, message, now_ms=now_ms())
            self._dispatch()
            self.schedule_flush()

    def _closed(self) -> None:
        self.service.session_closed(self.transport)
        self._on_closed()
