"""Limits and budgets as clients see them over real sockets: HTTP status + Retry-After (the
official openai client), gRPC status + ATP error metadata (the SDK), on one running server each."""
import asyncio

import openai
import pytest

from atp_client import AsyncGrpcClient, AtpClientError
from atp_server.config import DEV_API_KEY
from codec.errors import ErrorCode

RATE = '\n[[limits]]\nname = "rpm"\nrequests_per_min = 2\n'
# Less than any request's most possible cost: every request is refused before dispatch.
BROKE = '\n[[limits]]\nname = "broke"\nusd_per_day = 0.000001\n'


def openai_client(h) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{h.ports.http}/v1", api_key=DEV_API_KEY,
                         max_retries=0, timeout=30)


def ask(client):
    return client.chat.completions.create(model="sim-fast",
                                          messages=[{"role": "user", "content": "hi"}])


def test_http_over_rate_is_429_with_retry_after(start_server):
    h = start_server(grpc=False, quic=False, extra_toml=RATE)
    client = openai_client(h)
    ask(client)
    ask(client)
    with pytest.raises(openai.RateLimitError) as err:
        ask(client)
    response = err.value.response
    assert response.status_code == 429 and int(response.headers["Retry-After"]) >= 1
    assert err.value.body["code"] == "RATE_LIMITED" and "limits.rpm" in err.value.body["message"]


def test_http_over_budget_is_402_with_retry_after(start_server):
    h = start_server(grpc=False, quic=False, extra_toml=BROKE)
    with pytest.raises(openai.APIStatusError) as err:
        ask(openai_client(h))
    response = err.value.response
    assert response.status_code == 402 and int(response.headers["Retry-After"]) >= 1
    assert err.value.body["code"] == "BUDGET_EXCEEDED" and err.value.body["retryable"] is False


@pytest.mark.parametrize("extra, code", [(RATE, ErrorCode.RATE_LIMITED),
                                         (BROKE, ErrorCode.BUDGET_EXCEEDED)])
def test_grpc_refusals_carry_the_wire_code_and_retry_after(start_server, extra, code):
    h = start_server(http=False, quic=False, extra_toml=extra)

    async def go():
        async with AsyncGrpcClient(h.grpc_target, api_key=DEV_API_KEY) as c:
            for _ in range(3):
                try:
                    await c.complete("hi", model="sim-fast")
                except AtpClientError as exc:
                    return exc
        return None
    exc = asyncio.run(asyncio.wait_for(go(), 30))
    assert exc is not None and exc.code == code and exc.retry_after_ms > 0
