"""Bad and unusual image files: decodable ones are converted, the rest name the file."""

import io

import numpy as np
import pytest
from PIL import Image

from tledge.errors import ImageError
from tledge.runtime import images
from tledge.runtime.images import decode_image, load_image


@pytest.fixture()
def photo(sample_files):  # a real Caltech-101 JPEG
    return sample_files["cup"][0]


def test_real_jpeg_is_rgb_uint8(photo):
    arr = load_image(photo)
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3


@pytest.mark.parametrize("make,message", [
    (lambda p: None, "file not found"),
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_text("this is not an image"), "not a readable image"),
    (lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000)), "not a readable image"),
])
def test_unreadable_files_raise_naming_the_file(tmp_path, make, message):
    path = tmp_path / "bad image.jpg"
    make(path)
    with pytest.raises(ImageError, match=message) as err:
        load_image(path)
    assert str(path) in str(err.value)


def test_truncated_jpeg_is_reported(tmp_path, photo):
    path = tmp_path / "cut.jpg"
    path.write_bytes(photo.read_bytes()[:600])
    with pytest.raises(ImageError, match="cut.jpg: corrupt or truncated"):
        load_image(path)


def test_folder_is_not_an_image(tmp_path):
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path)


def _save(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_greyscale_becomes_three_equal_channels(photo):
    grey = Image.open(photo).convert("L")
    arr = decode_image(_save(grey))
    assert arr.shape == (grey.height, grey.width, 3)
    assert np.array_equal(arr[:, :, 0], arr[:, :, 2])
    assert np.array_equal(arr[:, :, 0], np.asarray(grey))


def test_rgba_is_composited_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:2, :, :] = (255, 0, 0, 255)  # opaque red top, fully transparent bottom
    arr = decode_image(_save(Image.fromarray(rgba, "RGBA")))
    assert tuple(arr[0, 0]) == (255, 0, 0)
    assert tuple(arr[3, 3]) == (255, 255, 255)


def test_sixteen_bit_png_is_scaled_not_clipped():
    ramp = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369)  # 0 .. 65535
    arr = decode_image(_save(Image.fromarray(ramp)))
    assert arr.shape == (4, 4, 3)
    assert arr[0, 0, 0] == 0 and arr[3, 3, 0] == 255
    assert 100 < arr[2, 0, 0] < 160  # mid-grey stays mid-grey


def test_palette_and_cmyk_convert(photo):
    img = Image.open(photo).convert("RGB")
    assert decode_image(_save(img.convert("P"))).shape[2] == 3
    assert decode_image(_save(img.convert("CMYK"), "JPEG")).shape[2] == 3


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (10, 20, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert decode_image(buf.getvalue()).shape[:2] == (40, 20)


def test_huge_image_is_refused_with_its_size(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 50 * 50)
    with pytest.raises(ImageError, match=r"too large \(60x60"):
        decode_image(_save(Image.new("RGB", (60, 60))), "big.png")


def test_large_image_within_limit_decodes():
    arr = decode_image(_save(Image.new("RGB", (6000, 4000), (1, 2, 3)), "PNG"))
    assert arr.shape == (4000, 6000, 3)


def test_check_rgb_rejects_wrong_arrays():
    with pytest.raises(ImageError, match="dtype uint8"):
        images.check_rgb(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ImageError, match="H x W x 3"):
        images.check_rgb(np.zeros((8, 8, 5), np.uint8))
    assert images.check_rgb(np.zeros((8, 8), np.uint8)).shape == (8, 8, 3)
