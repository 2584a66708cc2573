import pytest

from tledge.artifact import FORMAT_VERSION, Head, ModelInfo, Preprocess
from tledge.errors import ArtifactError


def make_info(**kw) -> ModelInfo:
    base = dict(backbone="mobilenet_v2", embedding_dim=1280, fingerprint="ab" * 32,
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
])
def test_invalid_values_are_named(key, value, message):
    props = make_info().to_metadata()
    props[key] = value
    with pytest.raises(ArtifactError, match=message):
        ModelInfo.from_metadata(props)


def test_missing_key_is_reported():
    props = make_info().to_metadata()
    del props["tledge.fingerprint"]
    with pytest.raises(ArtifactError, match="fingerprint"):
        ModelInfo.from_metadata(props)


def test_preprocess_validation():
    with pytest.raises(ArtifactError, match="resize_mode"):
        Preprocess(resize_mode="letterbox").validate()
    with pytest.raises(ArtifactError, match="crop_size"):
        Preprocess(crop_size=300, resize_size=256).validate()
