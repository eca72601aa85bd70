from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Hello(_message.Message):
    __slots__ = ("version", "name", "properties", "kinds", "protocol", "data_lane")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    DATA_LANE_FIELD_NUMBER: _ClassVar[int]
    version: str
    name: str
    properties: bytes
    kinds: _containers.RepeatedScalarFieldContainer[str]
    protocol: int
    data_lane: bool
    def __init__(self, version: _Optional[str] = ..., name: _Optional[str] = ..., properties: _Optional[bytes] = ..., kinds: _Optional[_Iterable[str]] = ..., protocol: _Optional[int] = ..., data_lane: _Optional[bool] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("cid", "name", "heartbeat_interval", "run_id", "protocol", "version", "data_port", "data_token")
    CID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DATA_PORT_FIELD_NUMBER: _ClassVar[int]
    DATA_TOKEN_FIELD_NUMBER: _ClassVar[int]
    cid: int
    name: str
    heartbeat_interval: float
    run_id: str
    protocol: int
    version: str
    data_port: int
    data_token: bytes
    def __init__(self, cid: _Optional[int] = ..., name: _Optional[str] = ..., heartbeat_interval: _Optional[float] = ..., run_id: _Optional[str] = ..., protocol: _Optional[int] = ..., version: _Optional[str] = ..., data_port: _Optional[int] = ..., data_token: _Optional[bytes] = ...) -> None: ...

class TaskHeader(_message.Message):
    __slots__ = ("task_id", "kind", "round", "config", "payload", "weights_size", "extras_size", "data_lane", "unit", "reply_bytes")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SIZE_FIELD_NUMBER: _ClassVar[int]
    EXTRAS_SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_LANE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    REPLY_BYTES_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    kind: str
    round: int
    config: bytes
    payload: bytes
    weights_size: int
    extras_size: int
    data_lane: bool
    unit: str
    reply_bytes: int
    def __init__(self, task_id: _Optional[int] = ..., kind: _Optional[str] = ..., round: _Optional[int] = ..., config: _Optional[bytes] = ..., payload: _Optional[bytes] = ..., weights_size: _Optional[int] = ..., extras_size: _Optional[int] = ..., data_lane: _Optional[bool] = ..., unit: _Optional[str] = ..., reply_bytes: _Optional[int] = ...) -> None: ...

class ReplyHeader(_message.Message):
    __slots__ = ("task_id", "kind", "error", "result", "weights_size", "extras_size", "data_lane")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SIZE_FIELD_NUMBER: _ClassVar[int]
    EXTRAS_SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_LANE_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    kind: str
    error: str
    result: bytes
    weights_size: int
    extras_size: int
    data_lane: bool
    def __init__(self, task_id: _Optional[int] = ..., kind: _Optional[str] = ..., error: _Optional[str] = ..., result: _Optional[bytes] = ..., weights_size: _Optional[int] = ..., extras_size: _Optional[int] = ..., data_lane: _Optional[bool] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("data_ready", "refusal")
    DATA_READY_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    data_ready: bool
    refusal: Refusal
    def __init__(self, data_ready: _Optional[bool] = ..., refusal: _Optional[_Union[Refusal, _Mapping]] = ...) -> None: ...

class Refusal(_message.Message):
    __slots__ = ("round", "unit", "stage", "reason")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    round: int
    unit: str
    stage: str
    reason: str
    def __init__(self, round: _Optional[int] = ..., unit: _Optional[str] = ..., stage: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Goodbye(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class ClientMessage(_message.Message):
    __slots__ = ("hello", "reply", "heartbeat")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    reply: ReplyHeader
    heartbeat: Heartbeat
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., reply: _Optional[_Union[ReplyHeader, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("welcome", "task", "heartbeat", "goodbye")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    GOODBYE_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    task: TaskHeader
    heartbeat: Heartbeat
    goodbye: Goodbye
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., task: _Optional[_Union[TaskHeader, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., goodbye: _Optional[_Union[Goodbye, _Mapping]] = ...) -> None: ...
