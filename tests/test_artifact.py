import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tledge.artifact import FORMAT_VERSION, Head, ModelInfo, Preprocess, model_fingerprint
from tledge.errors import ArtifactError


def make_info(**kw) -> ModelInfo:
    base = dict(backbone="mobilenet_v2", embedding_dim=1280, fingerprint="ab" * 32,
                graph_digest="cd" * 32,
                heads=(Head("style", ("photo", "sketch"), "style_probs"),),
                extra={"parity": "min_cosine=1.0"})
    base.update(kw)
    return ModelInfo(**base)


def test_metadata_round_trip_keeps_every_field():
    info = make_info(preprocess=Preprocess(crop_size=192, resize_size=220, color_order="BGR"))
    props = info.to_metadata()
    assert all(k.startswith("tledge.") and isinstance(v, str) for k, v in props.items())
    assert ModelInfo.from_metadata(props) == info


def test_model_without_tledge_metadata_is_refused_with_how_to_export():
    with pytest.raises(ArtifactError, match="no tledge metadata.*tledge export"):
        ModelInfo.from_metadata({"author": "someone"}, source="other.onnx")


def test_newer_format_is_refused():
    props = make_info().to_metadata()
    props["tledge.format_version"] = str(FORMAT_VERSION + 1)
    with pytest.raises(ArtifactError, match="newer than this tledge supports"):
        ModelInfo.from_metadata(props)


@pytest.mark.parametrize("key,value,message", [
    ("tledge.preprocess", "{not json", "broken tledge metadata"),
    ("tledge.embedding_dim", "-3", "embedding_dim must be positive"),
    ("tledge.precision", '"fp8"', "precision"),
    ("tledge.threshold", "7", "threshold"),
    ("tledge.threshold", "nan", "threshold"),
    ("tledge.threshold", "inf", "threshold"),
    ("tledge.embedding_dim", "100000", "embedding_dim"),
    ("tledge.embedding_dim", "true", "broken tledge metadata"),
    ("tledge.normalized", '"yes"', "broken tledge metadata"),
    ("tledge.heads", "{}", "broken tledge metadata"),
    ("tledge.heads", '[{"name": "style", "labels": [], "output": "style_probs"}]', "labels"),
    ("tledge.heads", '[{"name": "style", "labels": [""], "output": "style_probs"}]', "labels"),
    ("tledge.graph_digest", "short", "graph_digest"),
    ("tledge.format_version", "two", "format_version"),
    ("tledge.heads", "[" * 100_000, "broken tledge metadata"),
])
def test_invalid_values_are_named(key, value, message):
    props = make_info().to_metadata()
    props[key] = value
    with pytest.raises(ArtifactError, match=message):
        ModelInfo.from_metadata(props)


@pytest.mark.parametrize("key", ["tledge.fingerprint", "tledge.graph_digest"])
def test_missing_key_is_reported(key):
    props = make_info().to_metadata()
    del props[key]
    with pytest.raises(ArtifactError, match=key.split(".")[1]):
        ModelInfo.from_metadata(props)


def test_format_1_metadata_is_refused_as_unverifiable():
    props = make_info().to_metadata()
    props["tledge.format_version"] = "1"
    del props["tledge.graph_digest"]
    with pytest.raises(ArtifactError, match="older tledge.*cannot be verified.*reembed"):
        ModelInfo.from_metadata(props, source="old.onnx")


@pytest.mark.parametrize("change", [
    {"mean": (0.5, float("nan"), 0.5)},
    {"std": (0.2, 0.0, 0.2)},
    {"std": (0.2, float("inf"), 0.2)},
    {"std": (1e-40, 1e-40, 1e-40)},          # issue 12 attack A2: passed "> 0"
    {"std": (0.2, 9.9e-4, 0.2)},
    {"std": (0.2, 1001.0, 0.2)},
    {"mean": (0.5, 1e4, 0.5)},
    {"mean": (-1000.5, 0.5, 0.5)},
    {"resize_size": 100_000},
    {"crop_size": 4097, "resize_size": 4097},
    {"crop_size": 4},
    {"color_order": "BGRA"},
])
def test_preprocess_numbers_are_range_checked(change):
    pre = dataclasses.replace(Preprocess(), **change)
    with pytest.raises(ArtifactError, match="mean|std|crop_size|color_order"):
        pre.validate()
    with pytest.raises(ArtifactError):  # nor can an exporter write it
        make_info(preprocess=pre).to_metadata()


def test_fingerprint_survives_the_metadata_round_trip_and_names_what_matters():
    info = make_info(preprocess=Preprocess(mean=(0, 0, 0), std=(1, 1, 1)))
    back = ModelInfo.from_metadata(info.to_metadata())
    assert model_fingerprint("cd" * 32, back) == model_fingerprint("cd" * 32, info)
    for change in ({"precision": "fp16"}, {"embedding_dim": 64}, {"normalized": False},
                   {"preprocess": Preprocess(color_order="BGR")}, {"output_name": "e"}):
        other = dataclasses.replace(info, **change)
        assert model_fingerprint("cd" * 32, other) != model_fingerprint("cd" * 32, info)
    assert model_fingerprint("ce" * 32, info) != model_fingerprint("cd" * 32, info)
    assert model_fingerprint("cd" * 32, dataclasses.replace(info, threshold=0.9)) == \
        model_fingerprint("cd" * 32, info)


KEYS = [k for k in make_info().to_metadata() if not k.startswith("tledge.extra.")]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(KEYS), st.one_of(st.text(max_size=60), st.sampled_from(
    ["nan", "-inf", "1e309", "[]", "{}", "null", "true", "[1, 2]", '{"crop_size": "x"}',
     '[{"name": 1}]', '{"mean": [1, 2, 3]}', "9" * 5000])))
def test_any_metadata_value_parses_or_raises_artifact_error(key, value):
    props = make_info().to_metadata()
    props[key] = value
    try:
        info = ModelInfo.from_metadata(props)
    except ArtifactError:
        return
    info.validate()  # what parses is valid
    json.dumps(info.to_metadata())


def test_preprocess_validation():
    with pytest.raises(ArtifactError, match="resize_mode"):
        Preprocess(resize_mode="letterbox").validate()
    with pytest.raises(ArtifactError, match="crop_size"):
        Preprocess(crop_size=300, resize_size=256).validate()


def test_preprocess_bounds_are_inclusive_and_stated():
    dataclasses.replace(Preprocess(), std=(1e-3, 1e3, 1.0), mean=(-1e3, 1e3, 0.0)).validate()
    with pytest.raises(ArtifactError, match="std .* must be between 0.001 and 1000"):
        dataclasses.replace(Preprocess(), std=(1e-40,) * 3).validate()
    with pytest.raises(ArtifactError, match="mean .* must be between -1000 and 1000"):
        dataclasses.replace(Preprocess(), mean=(2e3, 0, 0)).validate()


def test_a_tiny_std_stamped_onto_a_real_model_is_refused(tiny_model, tmp_path):
    """Attack A2: std=(1e-40,)*3 turned every pixel into +-inf and every embedding into NaN.
    tledge's writer now refuses it; a file stamped by hand (digest and fingerprint right, as
    an older writer made them) is refused when opened."""
    import onnx

    from tledge.artifact import graph_digest
    from tledge.runtime import Embedder
    from tledge.train.metadata import write_model

    info = Embedder(tiny_model, providers="cpu").info
    tiny_std = dataclasses.replace(info, preprocess=dataclasses.replace(
        info.preprocess, std=(1e-40,) * 3))
    with pytest.raises(ArtifactError, match="std"):
        write_model(onnx.load(str(tiny_model)), tiny_std, tmp_path / "w.onnx")
    proto = onnx.load(str(tiny_model))
    props = {p.key: p.value for p in proto.metadata_props}
    del proto.metadata_props[:]
    proto.doc_string = ""
    digest = graph_digest(proto.SerializeToString())
    pre = {**json.loads(props["tledge.preprocess"]), "std": [1e-40] * 3}
    props.update({"tledge.preprocess": json.dumps(pre), "tledge.graph_digest": digest,
                  "tledge.fingerprint": model_fingerprint(digest, tiny_std)})
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(tmp_path / "hand.onnx"))
    with pytest.raises(ArtifactError, match=r"std \(1e-40, 1e-40, 1e-40\) is out of range"):
        Embedder(tmp_path / "hand.onnx", providers="cpu")
