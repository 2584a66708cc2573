import numpy as np
import onnx
import pytest

from tledge.errors import ArtifactError, ImageError, ProviderError
from tledge.runtime import Embedder
from tledge.runtime import providers as prov
from tledge.runtime.images import load_image


def test_embed_returns_unit_float32_rows(embedder, sample_files):
    files = [f for fs in sample_files.values() for f in fs][:5]
    vecs = embedder.embed(files)
    assert vecs.shape == (5, embedder.dim) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_paths_and_rgb_arrays_give_the_same_vectors(embedder, sample_files):
    files = sample_files["watch"]
    arrays = [load_image(f) for f in files]
    np.testing.assert_allclose(embedder.embed(files), embedder.embed(arrays), atol=1e-6)


def test_batching_does_not_change_results(tiny_model, sample_files):
    files = [f for fs in sample_files.values() for f in fs][:7]
    one = Embedder(tiny_model, providers="cpu", batch_size=1).embed(files)
    many = Embedder(tiny_model, providers="cpu", batch_size=4).embed(files)
    np.testing.assert_allclose(one, many, atol=1e-5)


def test_empty_input_gives_empty_array(embedder):
    assert embedder.embed([]).shape == (0, embedder.dim)


def test_bad_image_in_batch_names_the_file(embedder, tmp_path, sample_files):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8garbage")
    with pytest.raises(ImageError, match="broken.jpg"):
        embedder.embed([sample_files["cup"][0], bad])


def test_metadata_is_read(embedder):
    info = embedder.info
    assert info.backbone == "tiny" and info.embedding_dim == 32 and len(info.fingerprint) == 64
    assert "min_cosine" in info.extra["parity"]


def test_model_without_metadata_is_refused(tiny_model, tmp_path):
    proto = onnx.load(str(tiny_model))
    del proto.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(proto, str(plain))
    with pytest.raises(ArtifactError, match="no tledge metadata.*tledge export"):
        Embedder(plain, providers="cpu")


def test_non_model_files_are_refused(tmp_path):
    junk = tmp_path / "model.onnx"
    junk.write_text("not a model")
    with pytest.raises(ArtifactError, match="not a loadable ONNX model"):
        Embedder(junk, providers="cpu")
    with pytest.raises(ArtifactError, match="not found"):
        Embedder(tmp_path / "missing.onnx")


def test_auto_reports_the_provider_that_really_runs(tiny_model):
    e = Embedder(tiny_model, providers="auto")
    assert e.provider in e.session.get_providers()
    if prov.cuda_unavailable_reason() is not None:
        assert e.provider == prov.CPU


def test_explicit_cuda_without_a_driver_is_an_error_saying_why(tiny_model):
    reason = prov.cuda_unavailable_reason()
    if reason is None:
        pytest.skip("CUDA is really available here")
    with pytest.raises(ProviderError, match="CUDA was requested but cannot run|not in this"):
        Embedder(tiny_model, providers="cuda")


def test_unknown_provider_gets_a_suggestion(tiny_model):
    with pytest.raises(ProviderError, match="Did you mean 'cuda'"):
        Embedder(tiny_model, providers="cdua")


@pytest.mark.gpu
def test_cuda_provider_runs_when_present(tiny_model, sample_files):
    if prov.cuda_unavailable_reason() is not None:
        pytest.skip(f"no CUDA: {prov.cuda_unavailable_reason()}")
    gpu = Embedder(tiny_model, providers="cuda")
    assert gpu.provider == prov.CUDA
    cpu = Embedder(tiny_model, providers="cpu")
    files = sample_files["cup"]
    assert (gpu.embed(files) * cpu.embed(files)).sum(1).min() > 0.999
