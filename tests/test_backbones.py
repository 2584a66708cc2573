import pytest
import torch

from tledge.errors import TledgeError, WeightsError
from tledge.train import backbones as B
from tledge.train import weights as W


def test_registry_lists_and_refuses_duplicates():
    assert {"mobilenet_v2", "efficientnet_lite0", "tiny"} <= set(B.list_backbones())
    with pytest.raises(TledgeError, match="already registered"):
        B.register(B.get_spec("tiny"))


def test_misspelled_name_gets_a_suggestion():
    with pytest.raises(TledgeError, match="Did you mean 'efficientnet_lite0'"):
        B.get_spec("efficientnet-lite0")


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1",
                                  "efficientnet_lite2"])
def test_offline_weights_are_found_and_hash_verified(name):
    spec = B.get_spec(name)
    places = [p for p, _ in W.candidates(spec.weights) if p.is_file()]
    assert places, f"{spec.weights.filename} not found; run scripts/bootstrap.sh"
    assert W.sha256_of(places[-1]).startswith(spec.weights.sha256_prefix)
    model, _, source = B.get_backbone(name)
    assert "ImageNet" in source
    x = torch.zeros(2, 3, spec.preprocess.crop_size, spec.preprocess.crop_size)
    with torch.no_grad():
        assert model.forward_features(x).shape == (2, spec.dim)
        assert model(x).shape == (2, 1000)


@pytest.mark.parametrize("name,size,resize,blocks,sha256", [
    ("efficientnet_lite1", 240, 272, 21,
     "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    ("efficientnet_lite2", 260, 292, 21,
     "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d")])
def test_larger_lites_load_strictly_with_their_own_preprocessing(name, size, resize, blocks,
                                                                 sha256):
    spec = B.get_spec(name)
    assert (spec.preprocess.crop_size, spec.preprocess.resize_size) == (size, resize)
    assert spec.preprocess.mean == (0.498, 0.498, 0.498)
    assert spec.weights.sha256_prefix == sha256  # the whole hash, not a prefix
    model, _, _ = B.get_backbone(name)  # load_state_dict(strict=True) inside
    file_keys = set(W.resolve(spec.weights).state_dict)
    assert len(file_keys) == len(model.state_dict())  # every tensor of the file is used
    assert len(model.stages) == blocks + 2  # stem, MBConv blocks, head


def test_tampered_weights_are_refused(tmp_path):
    spec = B.get_spec("mobilenet_v2").weights
    fake = tmp_path / spec.filename
    torch.save({"w": torch.zeros(1)}, fake)
    with pytest.raises(WeightsError, match="does not start with b0353104"):
        W.resolve(spec, fake)


def test_weights_that_do_not_fit_are_explained(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"layer.weight": torch.zeros(3)}, path)
    with pytest.raises(TledgeError, match="do not fit tiny"):
        B.get_backbone("tiny", weights=str(path))


def test_missing_offline_weights_name_the_way_out(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    spec = B.get_spec("resnet18")  # any torchvision classifier by name
    assert spec.dim == 512 and spec.preprocess.crop_size == 224
    with pytest.raises(WeightsError, match="not available offline.*--allow-download"):
        B.get_backbone("resnet18")


def test_torchvision_model_from_the_hub_cache(monkeypatch, tmp_path):
    """A file in the hub cache under torchvision's name is used (its hash is checked)."""
    import torchvision

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    spec = B.get_spec("mobilenet_v3_small")
    state = torchvision.models.mobilenet_v3_small().state_dict()
    (tmp_path / "checkpoints").mkdir()
    cached = tmp_path / "checkpoints" / spec.weights.filename
    torch.save(state, cached)  # random weights: the hash must not match
    with pytest.raises(WeightsError, match="sha256"):
        B.get_backbone("mobilenet_v3_small")
    explicit = tmp_path / "mine.pt"
    torch.save(state, explicit)
    model, _, source = B.get_backbone("mobilenet_v3_small", weights=str(explicit))
    assert source == f"file {explicit}"
    with torch.no_grad():
        assert model.forward_features(torch.zeros(1, 3, 224, 224)).shape == (1, spec.dim)
