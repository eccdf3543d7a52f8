"""The SDK's one exception type: every failure carries the ATP wire code it came with."""
from codec.errors import RETRYABLE, ErrorCode, code_name


class AtpClientError(Exception):
    def __init__(self, code: int, message: str, retryable: bool | None = None,
                 retry_after_ms: int = 0):
        super().__init__(message)
        self.code = int(code)
        self.name = code_name(self.code)
        self.message = message
        self.retryable = (self.code in RETRYABLE) if retryable is None else retryable
        self.retry_after_ms = retry_after_ms

    def __str__(self) -> str:
        return f"{self.name} ({self.code}): {self.message}"


__all__ = ["AtpClientError", "ErrorCode"]
