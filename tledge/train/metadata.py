"""The one writer of a model file's ``tledge.*`` metadata (export, quantize and qat use it).

It stamps the verifiable fingerprint: clear the metadata, serialise, take ``graph_digest``
over those bytes (the function the runtime uses to check it), derive the fingerprint, write
the metadata and a description, and check the final bytes still give the same digest before
they are written. The runtime (``tledge.runtime.Embedder``) recomputes both on every open.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from tledge.artifact import FORMAT_VERSION, ModelInfo, graph_digest, model_fingerprint
from tledge.errors import TledgeError


def stamp(proto, info: ModelInfo) -> tuple[bytes, ModelInfo]:
    """``(file bytes, stamped info)`` for ``proto`` (an ``onnx.ModelProto``, changed in place)
    carrying ``info`` with its ``graph_digest`` and ``fingerprint`` computed from the graph."""
    import onnx

    del proto.metadata_props[:]
    proto.doc_string = ""
    digest = graph_digest(proto.SerializeToString())
    info = dataclasses.replace(info, graph_digest=digest, format_version=FORMAT_VERSION,
                               fingerprint="")
    info = dataclasses.replace(info, fingerprint=model_fingerprint(digest, info))
    onnx.helper.set_model_props(proto, info.to_metadata())
    proto.doc_string = f"tledge embedding model: {info.describe()}"
    data = proto.SerializeToString()
    if graph_digest(data) != digest:  # the serialiser reordered the graph: never write that
        raise TledgeError("the model's graph serialised differently twice; cannot stamp a "
                          "verifiable fingerprint")
    return data, info


def write_model(proto, info: ModelInfo, path: str | os.PathLike,
                check: bool = False) -> ModelInfo:
    """Stamp ``proto`` with ``info`` and write it to ``path`` (one file, no external data);
    ``check`` runs ``onnx.checker`` (full) first. Returns the stamped info."""
    import onnx

    data, info = stamp(proto, info)
    if check:
        onnx.checker.check_model(proto, full_check=True)
    with open(Path(path), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return info

