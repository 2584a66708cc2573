"""A minimal protobuf wire-format reader for ONNX model files (no ``onnx`` package needed).

The runtime has ONNX Runtime and numpy but not ``onnx``, yet it must check a model file's
fingerprint against the file itself. ``read_model(data)`` walks the top-level ``ModelProto``
fields once and returns the graph digest and the ``metadata_props``; the training side stamps
models with the same ``graph_digest``, so both halves hash the same bytes the same way.
"""

from __future__ import annotations

import hashlib

from tledge.errors import ArtifactError

DOC_STRING = 6        # ModelProto.doc_string: the exporter's description names the fingerprint
METADATA_PROPS = 14   # ModelProto.metadata_props: where the tledge.* keys live
_FIXED = {1: 8, 5: 4}  # wire type -> payload bytes (fixed64, fixed32)


def graph_digest(model_bytes: bytes) -> str:
    """sha256 (hex) over every top-level ModelProto field except doc_string and
    metadata_props, tag bytes included, in file order: the weights, graph, opsets, producer
    and IR version, i.e. everything ONNX Runtime computes with."""
    return read_model(model_bytes)[0]


def read_model(model_bytes: bytes) -> tuple[str, dict[str, str]]:
    """``(graph_digest, metadata_props)`` of a serialised ModelProto in one pass.

    Raises ArtifactError for bytes that are not well-formed protobuf, or for a metadata key
    that appears twice (two readers could disagree on which value counts).
    """
    data = memoryview(model_bytes)
    digest = hashlib.sha256()
    props: dict[str, str] = {}
    for number, _, start, body_start, end in _fields(data, 0, len(data)):
        if number == METADATA_PROPS:
            key, value = _entry(data, body_start, end)
            if key in props:
                raise ArtifactError(f"metadata key {key!r} appears twice in the model file")
            props[key] = value
        elif number != DOC_STRING:
            digest.update(data[start:end])
    return digest.hexdigest(), props


def _fields(data: memoryview, pos: int, stop: int):
    """Yield ``(field number, wire type, field start, payload start, field end)`` for each
    field; length-delimited payloads start after their length prefix."""
    while pos < stop:
        start = pos
        key, pos = _varint(data, pos, stop)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ArtifactError(f"malformed protobuf: field number 0 at byte {start}")
        if wire == 0:
            _, pos = _varint(data, pos, stop)
            body = pos
        elif wire == 2:
            size, body = _varint(data, pos, stop)
            pos = body + size
        elif wire in _FIXED:
            body, pos = pos, pos + _FIXED[wire]
        else:
            raise ArtifactError(f"malformed protobuf: wire type {wire} at byte {start}")
        if pos > stop:
            raise ArtifactError(f"malformed protobuf: field {number} at byte {start} runs "
                                f"past the end ({pos} > {stop})")
        if number in (DOC_STRING, METADATA_PROPS) and wire != 2:
            raise ArtifactError(f"malformed ONNX model: field {number} is not length-delimited")
        yield number, wire, start, body, pos


def _varint(data: memoryview, pos: int, stop: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 70, 7):
        if pos >= stop:
            raise ArtifactError("malformed protobuf: a varint runs past the end")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise ArtifactError("malformed protobuf: a varint longer than 10 bytes")


def _entry(data: memoryview, pos: int, stop: int) -> tuple[str, str]:
    """A StringStringEntryProto: key = field 1, value = field 2 (both UTF-8 strings)."""
    found = {1: "", 2: ""}
    for number, wire, _, body, end in _fields(data, pos, stop):
        if number in found and wire == 2:
            try:
                found[number] = bytes(data[body:end]).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ArtifactError(f"malformed ONNX metadata: not UTF-8 ({exc})") from None
    return found[1], found[2]
