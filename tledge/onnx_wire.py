"""A minimal protobuf wire-format reader for ONNX model files (no ``onnx`` package needed).

The runtime has ONNX Runtime and numpy but not ``onnx``, yet it must check a model file's
fingerprint against the file itself. ``read_model(data)`` walks the top-level ``ModelProto``
fields once and returns the graph digest and the ``metadata_props``; the training side stamps
models with the same ``graph_digest``, so both halves hash the same bytes the same way.

The same pass walks the graph (subgraphs and functions included) for tensors whose data lives
outside the file (ONNX "external data"): the digest covers only such a tensor's reference, and
ONNX Runtime would read the bytes from a file found relative to the working directory, so
swapping that file would change the answers without changing the fingerprint. They are refused.
"""

from __future__ import annotations

import hashlib

from tledge.errors import ArtifactError

DOC_STRING = 6        # ModelProto.doc_string: the exporter's description names the fingerprint
METADATA_PROPS = 14   # ModelProto.metadata_props: where the tledge.* keys live
GRAPH, FUNCTIONS = 7, 25  # ModelProto.graph, ModelProto.functions
# Where tensors sit: message field number -> what the field holds.
_GRAPH_FIELDS = {1: "node", 5: "tensor", 15: "sparse"}      # node, initializer, sparse_initializer
_NODE_FIELDS = {5: "attribute"}                             # NodeProto.attribute
_ATTRIBUTE_FIELDS = {5: "tensor", 10: "tensor", 6: "graph", 11: "graph",  # t, tensors, g, graphs
                     22: "sparse", 23: "sparse"}                        # sparse_tensor(s)
_SPARSE_FIELDS = {1: "tensor", 2: "tensor"}                 # SparseTensorProto values, indices
_FUNCTION_FIELDS = {7: "node", 11: "attribute"}             # FunctionProto node, attribute_proto
_MESSAGES = {"graph": _GRAPH_FIELDS, "node": _NODE_FIELDS, "attribute": _ATTRIBUTE_FIELDS,
             "sparse": _SPARSE_FIELDS, "function": _FUNCTION_FIELDS}
EXTERNAL_DATA, DATA_LOCATION = 13, 14  # TensorProto.external_data, TensorProto.data_location
MAX_NESTING = 64  # subgraphs inside subgraphs; protobuf itself stops at 100 levels


class ExternalDataError(ArtifactError):
    """A model file whose tensors are not all inside it."""
_FIXED = {1: 8, 5: 4}  # wire type -> payload bytes (fixed64, fixed32)


def graph_digest(model_bytes: bytes) -> str:
    """sha256 (hex) over every top-level ModelProto field except doc_string and
    metadata_props, tag bytes included, in file order: the weights, graph, opsets, producer
    and IR version, i.e. everything ONNX Runtime computes with."""
    return _scan(model_bytes, None)[0]


def read_model(model_bytes: bytes, source: str = "the model") -> tuple[str, dict[str, str]]:
    """``(graph_digest, metadata_props)`` of a serialised ModelProto in one pass.

    Raises ArtifactError for bytes that are not well-formed protobuf, or for a metadata key
    that appears twice (two readers could disagree on which value counts); ExternalDataError
    (naming ``source``) when a tensor keeps its data outside the file.
    """
    return _scan(model_bytes, source)


def _scan(model_bytes: bytes, source: str | None) -> tuple[str, dict[str, str]]:
    """The pass behind both functions; ``source`` None skips the external-data walk (the
    writer digests what it is given; the runtime refuses what it would have to trust)."""
    data = memoryview(model_bytes)
    digest = hashlib.sha256()
    props: dict[str, str] = {}
    for number, wire, start, body_start, end in _fields(data, 0, len(data)):
        if number in (DOC_STRING, METADATA_PROPS) and wire != 2:
            raise ArtifactError(f"malformed ONNX model: field {number} is not length-delimited")
        if source is not None and wire == 2 and number in (GRAPH, FUNCTIONS):
            _walk(data, body_start, end, "graph" if number == GRAPH else "function", source, 0)
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
        if wire == 0:  # the payload is the varint itself
            body = pos
            _, pos = _varint(data, pos, stop)
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
        yield number, wire, start, body, pos


def _walk(data: memoryview, pos: int, stop: int, kind: str, source: str, depth: int) -> None:
    """Visit every TensorProto inside a ``kind`` message (see ``_MESSAGES``); raise
    ExternalDataError for one whose data is not in the file. Skips payloads, reads no data."""
    if depth > MAX_NESTING:
        raise ArtifactError(f"malformed ONNX model: graphs nested more than {MAX_NESTING} deep")
    fields = _MESSAGES[kind]
    for number, wire, _, body, end in _fields(data, pos, stop):
        inner = fields.get(number)
        if inner is None or wire != 2:
            continue
        if inner == "tensor":
            _check_tensor(data, body, end, source)
        else:
            _walk(data, body, end, inner, source, depth + 1)


def _check_tensor(data: memoryview, pos: int, stop: int, source: str) -> None:
    """A TensorProto with ``external_data`` entries or a non-default ``data_location``."""
    for number, wire, _, body, _end in _fields(data, pos, stop):
        external = number == EXTERNAL_DATA or (
            number == DATA_LOCATION and wire == 0 and _varint(data, body, stop)[0] != 0)
        if external:
            raise ExternalDataError(
                f"{source} keeps tensor data outside the file (external data); export it as "
                "one self-contained file (tledge export does)")


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
