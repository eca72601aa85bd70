"""The checked-in protobuf code describes exactly the messages of ``covey.proto``.

``make proto`` regenerates ``covey_pb2.py`` and ``covey_pb2.pyi``; an edit of
the ``.proto`` file without it would leave the wire using the old messages.
"""

from __future__ import annotations

import re
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from covey.transport.grpc.proto import covey_pb2

PROTO_DIR = Path(covey_pb2.__file__).parent


def _compiled(proto_dir: Path, out: Path) -> descriptor_pb2.FileDescriptorProto:
    code = protoc.main(["protoc", f"-I{proto_dir}", f"--descriptor_set_out={out}", "covey.proto"])
    assert code == 0, f"protoc failed on {proto_dir / 'covey.proto'}"
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    assert [f.name for f in files] == ["covey.proto"]
    compiled = files[0]
    for message in compiled.message_type:  # generated code leaves out the JSON names
        for field in message.field:
            field.ClearField("json_name")
    return compiled


def _checked_in() -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto.FromString(covey_pb2.DESCRIPTOR.serialized_pb)


def test_the_checked_in_code_matches_covey_proto(tmp_path: Path) -> None:
    compiled = _compiled(PROTO_DIR, tmp_path / "set.pb")
    assert compiled == _checked_in(), "covey.proto changed: run `make proto`"


def test_an_edited_proto_is_told_apart(tmp_path: Path) -> None:
    # The comparison above can fail: a field added to the .proto changes the descriptor.
    edited = tmp_path / "proto"
    edited.mkdir()
    text = (PROTO_DIR / "covey.proto").read_text(encoding="utf-8")
    head, sep, tail = text.partition("message Heartbeat {")
    assert sep, "covey.proto has no Heartbeat message"
    (edited / "covey.proto").write_text(
        head + sep + "\n  bool edited_in_test = 99;" + tail, encoding="utf-8"
    )
    assert _compiled(edited, tmp_path / "set.pb") != _checked_in()


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_the_checked_in_code_runs_on_the_oldest_protobuf_covey_allows() -> None:
    # protobuf refuses code generated for a newer protobuf than the one installed: code
    # regenerated with a newer grpcio-tools would break every install at the old floor.
    generated = Path(covey_pb2.__file__).read_text(encoding="utf-8")
    made = re.search(r"^# Protobuf Python Version: ([\d.]+)$", generated, re.M)
    assert made, "covey_pb2.py names no protobuf version"
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    floor = re.search(r'"protobuf>=([\d.]+)', pyproject)
    assert floor, "pyproject.toml names no lowest protobuf"
    assert _version(made.group(1)) <= _version(floor.group(1)), (
        f"covey_pb2.py was generated for protobuf {made.group(1)}, newer than the lowest "
        f"covey allows ({floor.group(1)}): raise that floor in pyproject.toml, or "
        "regenerate with the grpcio-tools that made the checked-in code"
    )
