"""The SDK's defaults are safe: no built-in credentials, QUIC certificates verified, clear errors."""
import asyncio
import pathlib
import ssl

import pytest

from atp_client import (AsyncGrpcClient, AsyncQuicClient, AsyncSessionClient, AtpClientError,
                        Chunk, QuicClient, Result, SessionClient)
from atp_server import config
from codec.errors import ErrorCode

ROOT = pathlib.Path(__file__).parents[2]
ENV = ("ATP_API_KEY", "ATP_KEY_ID", "ATP_HMAC_SECRET")


@pytest.fixture
def no_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_grpc_client_without_a_key_refuses_before_sending(no_env):
    async def go():
        c = AsyncGrpcClient("127.0.0.1:9")      # nothing is sent: no server needed
        with pytest.raises(AtpClientError) as info:
            await c.complete("hi")
        await c.close()
        return info.value
    err = asyncio.run(go())
    assert err.code == ErrorCode.UNAUTHENTICATED and "ATP_API_KEY" in err.message


def test_grpc_client_takes_the_key_from_the_environment(no_env):
    no_env.setenv("ATP_API_KEY", "sk-from-env")
    assert AsyncGrpcClient().api_key == "sk-from-env"
    assert AsyncGrpcClient(api_key="sk-given").api_key == "sk-given"
    assert AsyncGrpcClient(api_key="").metadata("Complete", b"") == ()   # "" = send no key


@pytest.mark.parametrize("make", [
    lambda: AsyncSessionClient("127.0.0.1:9"), lambda: AsyncQuicClient("127.0.0.1", 9),
    lambda: SessionClient("127.0.0.1:9"), lambda: QuicClient("127.0.0.1", 9),
    lambda: AsyncQuicClient("127.0.0.1", 9, key_id=1)])
def test_frame_clients_need_signing_credentials(no_env, make):
    with pytest.raises(AtpClientError) as info:
        make()
    assert info.value.code == ErrorCode.UNAUTHENTICATED
    assert "ATP_HMAC_SECRET" in info.value.message


def test_frame_clients_take_credentials_from_the_environment(no_env):
    no_env.setenv("ATP_KEY_ID", "7")
    no_env.setenv("ATP_HMAC_SECRET", "s" * 32)
    assert (AsyncSessionClient().key_id, AsyncSessionClient().secret) == (7, b"s" * 32)
    no_env.setenv("ATP_KEY_ID", "seven")
    with pytest.raises(AtpClientError, match="ATP_KEY_ID must be an integer"):
        AsyncSessionClient()


def test_quic_verifies_certificates_unless_told_otherwise(no_env):
    c = AsyncQuicClient("127.0.0.1", 9, 1, b"k" * 32)
    assert c._configuration().verify_mode == ssl.CERT_REQUIRED
    assert AsyncQuicClient("127.0.0.1", 9, 1, b"k" * 32, insecure=True) \
        ._configuration().verify_mode == ssl.CERT_NONE
    with pytest.raises(ValueError):
        AsyncQuicClient("127.0.0.1", 9, 1, b"k" * 32, insecure=True, ca_file="x.pem")


def test_the_dev_credentials_live_in_one_place():
    """Only atp_server/config.py spells them; the SDK ships neither."""
    code = [p for d in ("atp_server", "clients/atp_client", "codec") for p in (ROOT / d).rglob("*.py")]
    for literal in (config.DEV_HMAC_SECRET.decode(), config.DEV_API_KEY):
        holders = [str(p.relative_to(ROOT)) for p in code if literal in p.read_text()]
        assert holders == ["atp_server/config.py"], literal


def test_chunks_and_results_print_as_text():
    assert str(Chunk(0, "Hel", 1)) == "Hel" and "Chunk(" in repr(Chunk(0, "Hel", 1))
    assert str(Result("Hello", "m", "p", "stop", 1, 1, 1, 1)) == "Hello"


def test_old_module_paths_still_import_for_one_release():
    import codec.aio
    import codec.aio.quic
    from atp_client.quic_protocol import CoalescingQuicProtocol
    from atp_client.timer import ConnectionTimer, now_ms
    assert ConnectionTimer is codec.aio.ConnectionTimer and now_ms is codec.aio.now_ms
    assert CoalescingQuicProtocol is codec.aio.quic.CoalescingQuicProtocol
