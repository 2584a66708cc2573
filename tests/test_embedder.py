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


def _log_model(path, normalized: bool):
    """A real 3-d embedding model, log(mean colour + 0.5) per channel, stamped by tledge's
    writer: finite for bright pictures, NaN for dark ones (what an fp16 model overflowing on a
    crafted image gives)."""
    from onnx import TensorProto, helper, numpy_helper

    from tledge.artifact import ModelInfo, Preprocess
    from tledge.train.metadata import write_model

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["m"], axes=[2, 3], keepdims=0),
         helper.make_node("Add", ["m", "half"], ["s"]),
         helper.make_node("Log", ["s"], ["embedding"])],
        "log_colour",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", 3])],
        initializer=[numpy_helper.from_array(np.array(0.5, np.float32), "half")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    info = ModelInfo(backbone="log_colour", embedding_dim=3, normalized=normalized,
                     preprocess=Preprocess(crop_size=8, resize_size=8))
    write_model(model, info, path)
    return path


def test_non_finite_embeddings_are_never_returned(tmp_path):
    """Issue 12 attack A2: NaN rows went into galleries; now the image is named instead."""
    import cv2

    from tledge.runtime import Gallery
    from tledge.runtime.embedder import ModelOutputError

    embedder = Embedder(_log_model(tmp_path / "log.onnx", normalized=False), providers="cpu")
    white = np.full((16, 16, 3), 255, np.uint8)
    cv2.imwrite(str(tmp_path / "black.png"), np.zeros((16, 16, 3), np.uint8))
    assert np.isfinite(embedder.embed([white])).all()
    with pytest.raises(ModelOutputError, match=r"non-finite output .* for image #1"):
        embedder.embed([white, np.zeros((16, 16, 3), np.uint8)])
    with Gallery.create(tmp_path / "g", embedder) as gallery:
        with pytest.raises(ModelOutputError, match="non-finite output"):
            gallery.enroll("dark", [tmp_path / "black.png"])
        assert gallery.labels() == []
    with pytest.raises(ModelOutputError, match="non-finite"):  # augmented views too
        embedder.embed([np.zeros((16, 16, 3), np.uint8)], augment="flip")
    with pytest.raises(ModelOutputError, match="for dark.png"):
        embedder.embed_tensor(np.full((1, 3, 8, 8), -3, np.float32), names=["dark.png"])


def test_a_model_claiming_unit_rows_must_give_them(tmp_path):
    from tledge.runtime.embedder import ModelOutputError

    embedder = Embedder(_log_model(tmp_path / "log.onnx", normalized=True), providers="cpu")
    with pytest.raises(ModelOutputError, match="length .* unit length"):
        embedder.embed([np.full((16, 16, 3), 255, np.uint8)])


@pytest.mark.parametrize("threads", [257, 100_000, -1, 2.5, True])
def test_thread_counts_are_bounded(tiny_model, threads):
    """Attack C4: 100 000 threads took 8 GB; 10**20 gave a pybind11 message."""
    with pytest.raises(ArtifactError, match="threads must be a whole number from 1 to 256"):
        Embedder(tiny_model, providers="cpu", threads=threads)
