"""Hostile images and folders: limits before the expensive step, bounded memory, finite walks.

Memory is measured, not assumed: each adversarial input is decoded and preprocessed in a
fresh interpreter (capped with RLIMIT_AS so a regression cannot eat the machine), which
reports its peak RSS growth. Folder walks run in a subprocess with a timeout, so a symlink
loop cannot hang the suite.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tledge.artifact import Preprocess
from tledge.errors import ImageError
from tledge.runtime import images
from tledge.runtime.images import check_rgb, decode_image, encode_jpeg, load_image
from tledge.runtime.preprocess import crop_box, normalise, preprocess_one, resized_size
from tledge.samples import sample_root

REPO = Path(__file__).resolve().parents[1]
BOUND_MB = 450  # images.PEAK_MEMORY_BOUND_MB; literal so this file also runs on older code
ADDRESS_SPACE = 4 * 2**30  # the child's cap: a regression fails with MemoryError, not swap
# ru_maxrss is in KiB and RLIMIT_AS is enforced on Linux only.
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="memory is measured on Linux")


def _png(path: Path, width: int, height: int, depth: int = 8) -> Path:
    """An all-black greyscale PNG written with zlib: huge headers cost a few hundred KB."""
    row = b"\x00" * (1 + width * depth // 8)
    packer, parts = zlib.compressobj(9), []
    step = max(1, (1 << 22) // len(row))
    for top in range(0, height, step):
        parts.append(packer.compress(row * min(step, height - top)))
    parts.append(packer.flush())

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))
    return path


def _sof_offset(jpeg: bytes) -> int:
    """Offset of the SOF0/SOF2 marker (its height and width follow at +5 and +7)."""
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        if marker in jpeg:
            return jpeg.index(marker)
    raise AssertionError("sample JPEG has no SOF0/SOF2 marker")


def _sample_jpeg() -> bytes:
    return sorted(sample_root().rglob("*.jpg"))[0].read_bytes()


def _jpeg_claiming(path: Path, width: int, height: int) -> Path:
    data = bytearray(_sample_jpeg())
    at = _sof_offset(bytes(data))
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


ADVERSARIAL = {
    # name: (make(dir) -> path, expected outcome: "ok" or a piece of the refusal)
    "png_1x12000": (lambda d: _png(d / "wide.png", 12000, 1), "aspect ratio 12000:1"),
    "png_1x100000": (lambda d: _png(d / "strip.png", 1, 100000), "the limit is 50:1"),
    "png_at_aspect_limit": (lambda d: _png(d / "pano.png", 20000, 400), "ok"),
    "png16_168mp": (lambda d: _png(d / "big16.png", 13000, 13000, 16), "the limit is 50 MP"),
    "png16_49mp": (lambda d: _png(d / "near16.png", 7000, 7000, 16), "ok"),
    "jpeg_header_60000": (lambda d: _jpeg_claiming(d / "claim.jpg", 60000, 60000), "too large"),
    "sparse_2gb_jpg": (lambda d: _sparse(d / "huge.jpg"), "the limit is 100 MiB"),
}


def _sparse(path: Path) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(2**31)  # sparse: no disk is used
    return path


_PROBE = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
import numpy as np
from tledge.artifact import Preprocess
from tledge.errors import ImageError
from tledge.runtime.images import load_image
from tledge.runtime.preprocess import preprocess_one
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    if sys.argv[1] == "array":
        preprocess_one(np.zeros((1, 100_000, 3), np.uint8), Preprocess())
    else:
        preprocess_one(load_image(sys.argv[1]), Preprocess())
    outcome = "ok"
except ImageError as exc:
    outcome = str(exc)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"outcome": outcome, "growth_mb": (peak - base) / 1024}}))
"""


def _measure(target: str) -> dict:
    """Decode + preprocess ``target`` in a fresh, address-capped interpreter."""
    proc = subprocess.run([sys.executable, "-c", _PROBE.format(cap=ADDRESS_SPACE), target],
                          cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{target}: child failed\n{proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@linux_only
@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_image_stays_under_the_memory_bound(tmp_path, name):
    make, expected = ADVERSARIAL[name]
    path = make(tmp_path)
    result = _measure(str(path))
    if expected == "ok":
        assert result["outcome"] == "ok"
    else:
        assert expected in result["outcome"] and str(path) in result["outcome"]
    assert result["growth_mb"] < BOUND_MB, f"{name}: {result}"


@linux_only
def test_preprocessing_an_extreme_array_does_not_build_the_upscaled_image():
    # check_rgb refuses such arrays, but preprocess_one must not need 26 GB either
    result = _measure("array")
    assert result["outcome"] == "ok" and result["growth_mb"] < 64, result


def test_the_documented_bound_is_the_one_measured():
    assert images.PEAK_MEMORY_BOUND_MB == BOUND_MB


def _jpeg_bytes(img: Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **options)
    return buf.getvalue()


def test_file_size_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "photo.jpg"
    path.write_bytes(_sample_jpeg())
    monkeypatch.setattr(images, "MAX_FILE_BYTES", 1000)
    with pytest.raises(ImageError, match=r"photo.jpg: file is too large .*the limit is 0 MiB"):
        load_image(path)
    with pytest.raises(ImageError, match="upload: file is too large"):
        decode_image(path.read_bytes(), "upload")


def test_pixels_and_aspect_are_refused_from_the_header(tmp_path):
    claim = _jpeg_claiming(tmp_path / "claim.jpg", 9000, 7000)  # 63 MP, data for 260 x 300
    with pytest.raises(ImageError, match=r"claim.jpg: image is too large \(9000x7000 = 63 MP; "
                                         r"the limit is 50 MP\)"):
        load_image(claim)
    narrow = _jpeg_claiming(tmp_path / "narrow.jpg", 6000, 100)
    with pytest.raises(ImageError, match=r"narrow.jpg: image is too narrow \(6000x100, aspect "
                                         r"ratio 60:1; the limit is 50:1\)"):
        load_image(narrow)


def test_large_jpeg_decodes_reduced_but_not_below_the_needed_side(tmp_path):
    base = Image.open(sorted(sample_root().rglob("*.jpg"))[0]).convert("RGB")
    path = tmp_path / "big.jpg"
    path.write_bytes(_jpeg_bytes(base.resize((6000, 3000), Image.Resampling.BILINEAR)))
    default = load_image(path)  # 18 MP: DCT-scaled to 1/2, shorter side >= 1024
    assert default.shape == (1500, 3000, 3)
    small = load_image(path, min_side=256)
    assert small.shape == (375, 750, 3)
    exact = np.asarray(base.resize((750, 375), Image.Resampling.BILINEAR), np.int16)
    assert np.abs(small.astype(np.int16) - exact).mean() < 8  # the same picture
    assert load_image(path, min_side=2000).shape == (3000, 6000, 3)  # no reduction possible


def test_normal_photos_decode_exactly(sample_files):
    photo = sample_files["cup"][0]
    assert np.array_equal(load_image(photo, min_side=8), np.asarray(Image.open(photo).convert("RGB")))


@pytest.mark.parametrize("mode,values", [
    ("I;16", np.arange(0, 65536, 7, dtype=np.uint16)[:9000]),
    ("I", np.arange(-500, 70000, 9, dtype=np.int32)[:7000]),
    ("I", np.arange(0, 256, dtype=np.int32).repeat(20)[:5000]),
    ("F", np.linspace(-3, 66000, 6000, dtype=np.float32)),
])
def test_deep_images_round_like_before_without_float64_copies(monkeypatch, mode, values):
    # many bands must not change a pixel (raising=False: the same test holds for the old code)
    monkeypatch.setattr(images, "_BAND_PIXELS", 1000, raising=False)
    grid = np.random.default_rng(0).permutation(values)[: (values.size // 50) * 50]
    grid = grid.reshape(-1, 50)
    buf = io.BytesIO()
    Image.fromarray(grid, mode if mode != "I;16" else None).save(
        buf, format="PNG" if mode == "I;16" else "TIFF")
    top = 65535.0 if mode == "I;16" or grid.max() > 255 else 255.0
    expected = np.clip(np.round(grid.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
    got = decode_image(buf.getvalue())
    assert got.shape == grid.shape + (3,)
    assert np.array_equal(got[:, :, 0], expected) and np.array_equal(got[:, :, 2], expected)


def test_sixteen_bit_png_matches_integer_rounding():
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    got = decode_image(_png_bytes(values))[:, :, 0].astype(np.int64)
    assert np.array_equal(got, (values.astype(np.int64) + 128) // 257)  # = round(x * 255 / 65535)


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil_for_all_eight(sample_files, orientation):
    from PIL import ImageOps

    img = Image.open(sample_files["cup"][0]).convert("RGB").resize((40, 24))
    exif = img.getexif()
    exif[0x0112] = orientation
    data = _jpeg_bytes(img, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert np.array_equal(decode_image(data), expected)


def test_check_rgb_refuses_huge_or_extreme_arrays_but_not_camera_frames():
    assert check_rgb(np.zeros((1080, 1920, 3), np.uint8), "frame").shape == (1080, 1920, 3)
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (8000, 8000, 3))  # no memory used
    with pytest.raises(ImageError, match=r"frame: image is too large \(8000x8000"):
        check_rgb(huge, "frame")
    with pytest.raises(ImageError, match=r"strip: image is too narrow \(3000x10"):
        check_rgb(np.zeros((10, 3000, 3), np.uint8), "strip")
    assert encode_jpeg(np.zeros((10, 400, 3), np.uint8))[:2] == b"\xff\xd8"


def test_wide_image_is_cropped_before_the_resize_within_one_grey_level():
    """A real 11:1 panorama: the band path vs the full resize (exact for normal photos)."""
    parts = [load_image(p) for p in sorted(sample_root().rglob("*.jpg"))[:8]]
    height = min(p.shape[0] for p in parts)
    pano = np.concatenate([p[:height] for p in parts], axis=1)
    for cfg in (Preprocess(), Preprocess(crop_size=64, resize_size=72, interpolation="bicubic")):
        for image in (pano, np.ascontiguousarray(pano.transpose(1, 0, 2))):
            new_w, new_h = resized_size(image.shape[1], image.shape[0], cfg)
            assert new_w * new_h > 4 * cfg.crop_size**2  # the band path is taken
            resample = {"bilinear": Image.Resampling.BILINEAR,
                        "bicubic": Image.Resampling.BICUBIC}[cfg.interpolation]
            full = Image.fromarray(image).resize((new_w, new_h), resample)
            exact = normalise(np.asarray(full.crop(crop_box(new_w, new_h, cfg.crop_size))), cfg)
            diff = np.abs(preprocess_one(image, cfg) - exact)
            one_level = 1.0 / 255.0 / min(cfg.std) + 1e-5
            assert diff.max() <= one_level and diff.mean() < 0.1 * one_level


# --- property tests: hostile headers either decode within the limits or raise ImageError ---

_SETTINGS = settings(max_examples=150, deadline=None, database=None,
                     suppress_health_check=[HealthCheck.too_slow])


def _decodes_or_refuses(data: bytes) -> None:
    try:
        rgb = decode_image(data, "fuzz")
    except ImageError:
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    height, width = rgb.shape[:2]
    assert height * width <= images.MAX_PIXELS
    assert max(height, width) <= images.MAX_ASPECT * min(height, width)


def _small_png() -> bytes:
    img = Image.open(sorted(sample_root().rglob("*.jpg"))[0]).convert("RGB").resize((48, 40))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _with_crc(png: bytearray) -> bytes:
    """Re-seal IHDR's CRC so mutations reach the decoder, not only the checksum."""
    length = struct.unpack(">I", png[8:12])[0]
    png[16 + length:20 + length] = struct.pack(">I", zlib.crc32(png[12:16 + length]) & 0xFFFFFFFF)
    return bytes(png)


@_SETTINGS
@given(st.binary(min_size=1, max_size=4096))
def test_random_bytes_decode_or_refuse(data):
    _decodes_or_refuses(data)


@_SETTINGS
@given(st.lists(st.tuples(st.integers(0, 699), st.integers(0, 255)), max_size=8),
       st.integers(0, 65535), st.integers(0, 65535), st.booleans())
def test_mutated_jpeg_headers_decode_or_refuse(flips, width, height, resize):
    data = bytearray(_sample_jpeg())
    if resize:
        at = _sof_offset(bytes(data))
        data[at + 5:at + 9] = struct.pack(">HH", height, width)
    for offset, value in flips:
        data[offset] = value
    _decodes_or_refuses(bytes(data))


@_SETTINGS
@given(st.lists(st.tuples(st.integers(8, 120), st.integers(0, 255)), max_size=6),
       st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1), st.booleans(), st.booleans())
def test_mutated_png_headers_decode_or_refuse(flips, width, height, resize, reseal):
    data = bytearray(_small_png())
    if resize:
        data[16:24] = struct.pack(">II", width, height)
    for offset, value in flips:
        data[offset] = value
    _decodes_or_refuses(_with_crc(data) if reseal else bytes(data))


@linux_only
def test_header_fuzzing_stays_under_the_memory_bound():
    """The three properties again, in a capped child that reports its peak memory."""
    code = (f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({ADDRESS_SPACE},) * 2)\n"
            "import tests.test_image_limits as t\n"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "t.test_random_bytes_decode_or_refuse()\n"
            "t.test_mutated_jpeg_headers_decode_or_refuse()\n"
            "t.test_mutated_png_headers_decode_or_refuse()\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(proc.stdout.strip().splitlines()[-1]) < BOUND_MB


# --- folder walks: symbolic links are followed, each folder visited once, each file once ---

_WALK = """
import json, sys
from tledge.runtime.images import list_images
from tledge.runtime.sources import open_source
files = [str(p) for p in list_images(sys.argv[1])]
with open_source(sys.argv[1]) as source:
    frames = [frame.name for frame in source]
print(json.dumps({"files": files, "frames": frames}))
"""


def _walk(root: Path) -> dict:
    """list_images and a FolderSource over ``root`` in a child that cannot hang the suite."""
    try:
        proc = subprocess.run([sys.executable, "-c", _WALK, str(root)], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"walking {root} did not finish in 60 s (a symlink loop?)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _class_folder(folder: Path, count: int = 3) -> list[Path]:
    folder.mkdir(parents=True)
    photos = sorted(sample_root().rglob("*.jpg"))[:count]
    for i, photo in enumerate(photos):
        (folder / f"{i}.jpg").write_bytes(photo.read_bytes())
    return sorted(folder.iterdir())


def test_self_link_in_a_class_folder_lists_each_image_once(tmp_path):
    shots = _class_folder(tmp_path / "cup")
    (tmp_path / "cup" / "again").symlink_to(".")
    (tmp_path / "cup" / "alias.jpg").symlink_to("0.jpg")  # the same file by another name
    result = _walk(tmp_path)
    assert result["files"] == [str(p) for p in shots]
    assert result["frames"] == result["files"]


def test_mutually_linked_folders_and_a_link_to_the_parent_end(tmp_path):
    a_shots = _class_folder(tmp_path / "a", 2)
    b_shots = _class_folder(tmp_path / "b", 2)
    (tmp_path / "a" / "to_b").symlink_to("../b")
    (tmp_path / "b" / "to_a").symlink_to("../a")
    (tmp_path / "a" / "up").symlink_to("..")
    (tmp_path / "b" / "gone.jpg").symlink_to("missing.jpg")  # broken links are skipped
    (tmp_path / "b" / "nowhere").symlink_to("no/such/folder")
    result = _walk(tmp_path)
    assert result["files"] == [str(p) for p in a_shots + b_shots]
    assert len(result["frames"]) == 4
    # walking one class folder: its link up does not pull in the other class ...
    assert _walk(tmp_path / "b")["files"] == [str(p) for p in b_shots] + [
        str(tmp_path / "b" / "to_a" / p.name) for p in a_shots]  # ... its link across does


def test_linked_photo_folder_is_still_followed(tmp_path):
    outside = _class_folder(tmp_path / "photos" / "dog", 2)
    root = tmp_path / "gallery"
    root.mkdir()
    (root / "dog").symlink_to(outside[0].parent)
    assert _walk(root)["files"] == [str(root / "dog" / p.name) for p in outside]


def test_walk_is_bounded_with_a_clear_error(tmp_path):
    from tledge.runtime.images import list_images

    _class_folder(tmp_path / "cup", 3)
    with pytest.raises(ImageError, match=r"more than 2 images .*the limit"):
        list_images(tmp_path, max_files=2)
    deep = tmp_path / "x" / "y" / "z"
    deep.mkdir(parents=True)
    with pytest.raises(ImageError, match=r"deeper than 2 levels"):
        list_images(tmp_path, max_depth=2)
    assert len(list_images(tmp_path, max_depth=3)) == 3
