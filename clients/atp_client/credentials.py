"""Where the SDK's credentials come from: the caller's arguments or the environment, never a default.

The SDK ships no development key or secret: a client that silently signs with a well-known
secret works against a dev server and fails confusingly (or, worse, works) anywhere else.
"""
import os

from .errors import AtpClientError, ErrorCode

API_KEY_ENV = "ATP_API_KEY"          # typed gRPC (and HTTP) API key
KEY_ID_ENV = "ATP_KEY_ID"            # HMAC key id for frame sessions (gRPC Session, QUIC)
SECRET_ENV = "ATP_HMAC_SECRET"       # its secret, as UTF-8 text


def api_key_from(given: str | None) -> str | None:
    """`given` if not None ("" means: send no key), else $ATP_API_KEY, else None."""
    return given if given is not None else os.environ.get(API_KEY_ENV)


def missing_api_key() -> AtpClientError:
    return AtpClientError(ErrorCode.UNAUTHENTICATED, f"no API key: pass api_key=... or set "
                          f"${API_KEY_ENV}")


def hmac_from(key_id: int | None, secret: bytes | str | None) -> tuple[int, bytes]:
    """(key id, secret) from the arguments, else $ATP_KEY_ID / $ATP_HMAC_SECRET; both are needed."""
    if key_id is None and (env := os.environ.get(KEY_ID_ENV)):
        try:
            key_id = int(env)
        except ValueError:
            raise AtpClientError(ErrorCode.UNAUTHENTICATED,
                                 f"${KEY_ID_ENV} must be an integer, not {env!r}") from None
    if secret is None:
        secret = os.environ.get(SECRET_ENV) or None
    if key_id is None or secret is None:
        raise AtpClientError(ErrorCode.UNAUTHENTICATED, "frame sessions are signed: pass key_id= "
                             f"and secret= (or set ${KEY_ID_ENV} and ${SECRET_ENV})")
    return int(key_id), secret.encode() if isinstance(secret, str) else bytes(secret)
