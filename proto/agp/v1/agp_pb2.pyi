from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgpMessage(_message.Message):
    __slots__ = ("open", "update", "withdraw", "keepalive", "notification")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    WITHDRAW_FIELD_NUMBER: _ClassVar[int]
    KEEPALIVE_FIELD_NUMBER: _ClassVar[int]
    NOTIFICATION_FIELD_NUMBER: _ClassVar[int]
    open: Open
    update: Update
    withdraw: Withdraw
    keepalive: Keepalive
    notification: Notification
    def __init__(self, open: _Optional[_Union[Open, _Mapping]] = ..., update: _Optional[_Union[Update, _Mapping]] = ..., withdraw: _Optional[_Union[Withdraw, _Mapping]] = ..., keepalive: _Optional[_Union[Keepalive, _Mapping]] = ..., notification: _Optional[_Union[Notification, _Mapping]] = ...) -> None: ...

class Open(_message.Message):
    __slots__ = ("version", "router_id", "domain", "capabilities", "public_key", "hold_time_ms", "keepalive_ms", "nonce", "proof")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUTER_ID_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    HOLD_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    KEEPALIVE_MS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    version: int
    router_id: str
    domain: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    public_key: bytes
    hold_time_ms: int
    keepalive_ms: int
    nonce: bytes
    proof: bytes
    def __init__(self, version: _Optional[int] = ..., router_id: _Optional[str] = ..., domain: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., public_key: _Optional[bytes] = ..., hold_time_ms: _Optional[int] = ..., keepalive_ms: _Optional[int] = ..., nonce: _Optional[bytes] = ..., proof: _Optional[bytes] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("model", "origin", "capabilities", "price_in_per_mtok", "price_out_per_mtok", "latency_ms", "health", "capacity", "seq", "origin_time_ms", "signature", "hops")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    PRICE_IN_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    PRICE_OUT_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    model: str
    origin: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    price_in_per_mtok: float
    price_out_per_mtok: float
    latency_ms: float
    health: float
    capacity: int
    seq: int
    origin_time_ms: int
    signature: bytes
    hops: _containers.RepeatedCompositeFieldContainer[Hop]
    def __init__(self, model: _Optional[str] = ..., origin: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., price_in_per_mtok: _Optional[float] = ..., price_out_per_mtok: _Optional[float] = ..., latency_ms: _Optional[float] = ..., health: _Optional[float] = ..., capacity: _Optional[int] = ..., seq: _Optional[int] = ..., origin_time_ms: _Optional[int] = ..., signature: _Optional[bytes] = ..., hops: _Optional[_Iterable[_Union[Hop, _Mapping]]] = ...) -> None: ...

class Hop(_message.Message):
    __slots__ = ("router_id", "overhead_per_mtok", "latency_ms", "signature")
    ROUTER_ID_FIELD_NUMBER: _ClassVar[int]
    OVERHEAD_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    router_id: str
    overhead_per_mtok: float
    latency_ms: float
    signature: bytes
    def __init__(self, router_id: _Optional[str] = ..., overhead_per_mtok: _Optional[float] = ..., latency_ms: _Optional[float] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Update(_message.Message):
    __slots__ = ("routes",)
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    def __init__(self, routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ...) -> None: ...

class RouteKey(_message.Message):
    __slots__ = ("model", "origin")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    model: str
    origin: str
    def __init__(self, model: _Optional[str] = ..., origin: _Optional[str] = ...) -> None: ...

class Withdraw(_message.Message):
    __slots__ = ("routes",)
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    routes: _containers.RepeatedCompositeFieldContainer[RouteKey]
    def __init__(self, routes: _Optional[_Iterable[_Union[RouteKey, _Mapping]]] = ...) -> None: ...

class Keepalive(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Notification(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PeerStatus(_message.Message):
    __slots__ = ("router_id", "domain", "state", "last_heard_ms_ago", "routes_received")
    ROUTER_ID_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARD_MS_AGO_FIELD_NUMBER: _ClassVar[int]
    ROUTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    router_id: str
    domain: str
    state: str
    last_heard_ms_ago: int
    routes_received: int
    def __init__(self, router_id: _Optional[str] = ..., domain: _Optional[str] = ..., state: _Optional[str] = ..., last_heard_ms_ago: _Optional[int] = ..., routes_received: _Optional[int] = ...) -> None: ...

class RouteStatus(_message.Message):
    __slots__ = ("model", "origin", "path", "price_in_per_mtok", "price_out_per_mtok", "latency_ms", "health", "best", "suppressed")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    PRICE_IN_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    PRICE_OUT_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    model: str
    origin: str
    path: _containers.RepeatedScalarFieldContainer[str]
    price_in_per_mtok: float
    price_out_per_mtok: float
    latency_ms: float
    health: float
    best: bool
    suppressed: bool
    def __init__(self, model: _Optional[str] = ..., origin: _Optional[str] = ..., path: _Optional[_Iterable[str]] = ..., price_in_per_mtok: _Optional[float] = ..., price_out_per_mtok: _Optional[float] = ..., latency_ms: _Optional[float] = ..., health: _Optional[float] = ..., best: _Optional[bool] = ..., suppressed: _Optional[bool] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("router_id", "domain", "peers", "routes")
    ROUTER_ID_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    router_id: str
    domain: str
    peers: _containers.RepeatedCompositeFieldContainer[PeerStatus]
    routes: _containers.RepeatedCompositeFieldContainer[RouteStatus]
    def __init__(self, router_id: _Optional[str] = ..., domain: _Optional[str] = ..., peers: _Optional[_Iterable[_Union[PeerStatus, _Mapping]]] = ..., routes: _Optional[_Iterable[_Union[RouteStatus, _Mapping]]] = ...) -> None: ...
