"""A model's fingerprint is verified against the file, never merely claimed (issue 12, item 8).

Each refused file below is what a real tool or a clumsy operator makes from a real tledge
export: other weights, another colour order, onnxruntime's own quantisation, an edited
embedding size, a file from an older tledge.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from tledge.artifact import graph_digest, model_fingerprint, read_model
from tledge.errors import ArtifactError, GalleryError
from tledge.runtime import Embedder
from tledge.runtime import embedder as embedder_mod
from tledge.runtime.gallery import Gallery
from tledge.train.metadata import write_model

from .conftest import perturbed_copy


def _props(proto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def _edited(src, out, **changes: str):
    """``src`` with some ``tledge.*`` metadata values replaced (None: removed), nothing
    re-stamped: what a hand edit or another tool leaves."""
    proto = onnx.load(str(src))
    props = {**_props(proto), **changes}
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {k: v for k, v in props.items() if v is not None})
    onnx.save(proto, str(out))
    return out


def test_changed_weights_with_the_old_metadata_are_refused(tiny_model, tmp_path):
    proto = onnx.load(str(tiny_model))
    init = next(t for t in proto.graph.initializer if np.prod(t.dims) > 1)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.01, init.name))
    onnx.save(proto, str(tmp_path / "tampered.onnx"))
    with pytest.raises(ArtifactError, match="weights or graph changed after tledge exported"):
        Embedder(tmp_path / "tampered.onnx", providers="cpu")


def test_bgr_preprocessing_under_the_rgb_fingerprint_is_refused(tiny_model, tmp_path):
    pre = json.loads(_props(onnx.load(str(tiny_model)))["tledge.preprocess"])
    assert pre["color_order"] == "RGB"
    bgr = _edited(tiny_model, tmp_path / "bgr.onnx",
                  **{"tledge.preprocess": json.dumps({**pre, "color_order": "BGR"})})
    with pytest.raises(ArtifactError, match="preprocessing or output metadata.*re-export"):
        Embedder(bgr, providers="cpu")


def test_onnxruntime_quantize_dynamic_output_is_refused(tiny_model, tmp_path):
    from onnxruntime.quantization import quantize_dynamic

    out = tmp_path / "ort_int8.onnx"
    quantize_dynamic(str(tiny_model), str(out))
    # ORT copies the metadata, fingerprint included: the copy claims to be its fp32 parent.
    claimed = _props(onnx.load(str(out)))
    assert claimed["tledge.fingerprint"] == Embedder(tiny_model, providers="cpu").fingerprint
    with pytest.raises(ArtifactError, match="re-quantised.*`tledge quantize`"):
        Embedder(out, providers="cpu")


def test_embedding_dim_that_the_graph_does_not_have_is_refused(tiny_model, tmp_path):
    hand = _edited(tiny_model, tmp_path / "dim.onnx", **{"tledge.embedding_dim": "64"})
    with pytest.raises(ArtifactError, match="no longer matches its fingerprint"):
        Embedder(hand, providers="cpu")
    # Even stamped by tledge's own writer, metadata that does not describe the graph fails.
    info = Embedder(tiny_model, providers="cpu").info
    stamped = tmp_path / "stamped.onnx"
    write_model(onnx.load(str(tiny_model)), dataclasses.replace(info, embedding_dim=64), stamped)
    with pytest.raises(ArtifactError, match=r"'embedding' has shape .*implies \['n', 64\]"):
        Embedder(stamped, providers="cpu")
    crop = dataclasses.replace(info.preprocess, crop_size=96, resize_size=110)
    write_model(onnx.load(str(tiny_model)), dataclasses.replace(info, preprocess=crop), stamped)
    with pytest.raises(ArtifactError, match=r"'images' has shape .*implies \['n', 3, 96, 96\]"):
        Embedder(stamped, providers="cpu")


def test_format_1_file_is_refused_with_the_reexport_and_reembed_hint(tiny_model, tmp_path):
    old = _edited(tiny_model, tmp_path / "v1.onnx",
                  **{"tledge.format_version": "1", "tledge.graph_digest": None})
    with pytest.raises(ArtifactError, match=r"older tledge \(format 1\).*cannot be verified"
                                            r".*tledge export.*tledge gallery reembed"):
        Embedder(old, providers="cpu")


def test_exported_model_opens_and_its_fingerprint_is_the_verified_one(tiny_model, tmp_path):
    from tledge.train.export import ExportOptions, export_model

    info = Embedder(tiny_model, providers="cpu").info
    data = tiny_model.read_bytes()
    assert info.graph_digest == graph_digest(data)
    assert info.fingerprint == model_fingerprint(graph_digest(data), info)
    # The exporter is deterministic here: the same weights give the same fingerprint.
    again = export_model(tmp_path / "again.onnx", ExportOptions(backbone="tiny", parity_limit=2))
    assert again.info.fingerprint == info.fingerprint


def test_reduced_precision_copies_open_with_their_own_fingerprint(tiny_model, tmp_path):
    from tledge.train.gate import GateOptions
    from tledge.train.quantize import QuantizeOptions, reduce_precision

    parent = Embedder(tiny_model, providers="cpu").fingerprint
    seen = {parent}
    for precision in ("fp16", "int8"):
        out = tmp_path / f"tiny_{precision}.onnx"
        reduce_precision(tiny_model, out, QuantizeOptions(
            precision=precision, calib_limit=8, gate=GateOptions(episodes=5, force=True)))
        info = Embedder(out, providers="cpu").info
        assert info.precision == precision and info.extra["parent_fingerprint"] == parent
        assert info.fingerprint not in seen
        seen.add(info.fingerprint)


def test_gallery_of_model_a_refuses_a_real_model_b_with_the_reembed_hint(
        tiny_model, tmp_path, sample_files):
    a = Embedder(tiny_model, providers="cpu")
    b = Embedder(perturbed_copy(tiny_model, tmp_path / "b.onnx"), providers="cpu")
    assert b.fingerprint != a.fingerprint
    shots = sample_files["cup"][:2]
    assert (a.embed(shots) * b.embed(shots)).sum(1).max() < 0.99999  # really other vectors
    with Gallery.create(tmp_path / "g", a) as gallery:
        gallery.enroll("cup", shots)
    with pytest.raises(GalleryError, match="another model.*tledge gallery reembed"):
        Gallery.open(tmp_path / "g", b)


def test_metadata_and_description_are_outside_the_digest(tiny_model):
    proto = onnx.load(str(tiny_model))
    before = graph_digest(proto.SerializeToString())
    proto.doc_string = "anything at all"
    onnx.helper.set_model_props(proto, {**_props(proto), "note": "x"})
    assert graph_digest(proto.SerializeToString()) == before
    proto.producer_name = "someone else"
    assert graph_digest(proto.SerializeToString()) != before


def test_model_over_the_size_bound_is_refused_before_reading(tiny_model, monkeypatch):
    monkeypatch.setattr(embedder_mod, "MAX_MODEL_BYTES", 1024)
    with pytest.raises(ArtifactError, match="a tledge model is one ONNX file of at most"):
        Embedder(tiny_model, providers="cpu")


def test_truncated_model_is_refused_as_not_loadable(tiny_model, tmp_path):
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(tiny_model.read_bytes()[:5000])
    with pytest.raises(ArtifactError, match="not a loadable ONNX model"):
        Embedder(cut, providers="cpu")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_wire_reader_answers_or_raises_artifact_error_for_any_bytes(data):
    try:
        digest, props = read_model(data)
    except ArtifactError:
        return
    assert len(digest) == 64 and all(isinstance(v, str) for v in props.values())


def test_a_model_with_external_data_is_refused_even_when_stamped(tiny_model, tmp_path,
                                                                  monkeypatch):
    """Issue 12 attack A3: the digest covers an external tensor's reference, not its bytes,
    and ONNX Runtime reads them relative to the working directory: swapping weights.bin would
    change the answers under the same fingerprint."""
    info = Embedder(tiny_model, providers="cpu").info
    split = tmp_path / "split.onnx"
    onnx.save_model(onnx.load(str(tiny_model)), str(split), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    assert (tmp_path / "weights.bin").stat().st_size > 0
    stamped = tmp_path / "stamped.onnx"
    write_model(onnx.load(str(split), load_external_data=False), info, stamped)
    monkeypatch.chdir(tmp_path)  # where ONNX Runtime would find weights.bin
    with pytest.raises(ArtifactError, match=r"keeps tensor data outside the file \(external "
                                            r"data\); export it as one self-contained file"):
        Embedder(stamped, providers="cpu")


def _external(tensor) -> None:
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "w.bin"


def _nested_models():
    """Models whose only external tensor hides in each place a TensorProto can sit."""
    from onnx import helper

    def model(graph_nodes, inits=(), sparse=()):
        graph = helper.make_graph(graph_nodes, "g", [], [helper.make_tensor_value_info(
            "y", onnx.TensorProto.FLOAT, [1])], initializer=list(inits),
            sparse_initializer=list(sparse))
        return helper.make_model(graph)

    def const(name="y"):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(
            np.ones(1, np.float32)))

    out = {}
    init = numpy_helper.from_array(np.ones(1, np.float32), "w")
    _external(init)
    out["initializer"] = model([const()], inits=[init])
    node = const()
    _external(node.attribute[0].t)
    out["node attribute"] = model([node])
    inner = const()
    _external(inner.attribute[0].t)
    sub = helper.make_graph([inner], "then", [], [helper.make_tensor_value_info(
        "y", onnx.TensorProto.FLOAT, [1])])
    cond = helper.make_node("If", ["c"], ["y"], then_branch=sub, else_branch=sub)
    out["subgraph"] = model([cond])
    values = numpy_helper.from_array(np.ones(1, np.float32), "s")
    _external(values)
    indices = numpy_helper.from_array(np.zeros(1, np.int64), "s_idx")
    out["sparse initializer"] = model([const()], sparse=[
        helper.make_sparse_tensor(values, indices, [4])])
    only_location = numpy_helper.from_array(np.ones(1, np.float32), "w")
    only_location.data_location = onnx.TensorProto.EXTERNAL
    out["data_location alone"] = model([const()], inits=[only_location])
    return out


@pytest.mark.parametrize("where", list(_nested_models()))
def test_external_data_is_found_wherever_a_tensor_sits(where):
    data = _nested_models()[where].SerializeToString()
    with pytest.raises(ArtifactError, match="outside the file"):
        read_model(data, source="model m.onnx")
    graph_digest(data)  # the writer's digest itself still works on such bytes


def test_a_self_contained_model_reads_with_the_same_digest(tiny_model):
    data = tiny_model.read_bytes()
    assert read_model(data)[0] == graph_digest(data)
