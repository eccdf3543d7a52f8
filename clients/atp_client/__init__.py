"""ATP Python SDK: async and sync clients over typed gRPC, gRPC Session frames and QUIC."""
from .errors import AtpClientError, ErrorCode
from .frames import FrameClient, build_request, keyring_for
from .grpc_client import AsyncGrpcClient, AsyncSessionClient
from .quic_client import AsyncQuicClient
from .sync import GrpcClient, QuicClient, SessionClient
from .types import Chunk, Result

__all__ = ["AtpClientError", "ErrorCode", "FrameClient", "build_request", "keyring_for", "Chunk",
           "Result", "AsyncQuicClient", "AsyncGrpcClient", "AsyncSessionClient", "GrpcClient",
           "SessionClient", "QuicClient"]
