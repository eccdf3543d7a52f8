"""Plain result types the SDK returns, whatever the transport."""
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    text: str
    tokens: int = 0

    def __str__(self) -> str:      # print(chunk) shows the text, as a stream reader expects
        return self.text


@dataclass(frozen=True, slots=True)
class Result:
    text: str
    model: str
    provider: str
    finish_reason: str
    input_tokens: int
    output_tokens: int
    cost_usd_micros: int
    gateway_overhead_us: int
    request_id: str = ""
    extra: dict = field(default_factory=dict, compare=False)

    def __str__(self) -> str:      # print(result) shows the answer; repr() keeps every field
        return self.text

    @property
    def cost_usd(self) -> float:
        return self.cost_usd_micros / 1e6
