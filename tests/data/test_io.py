import io
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.color import rgb2gray

from nanomorph.data.io import load_image_stack, load_mask_stack, read_image, read_mask, read_zenodo_label
from nanomorph.errors import ImageReadError

GRAY8 = np.array([[0, 64, 128], [192, 255, 7]], dtype=np.uint8)
GRAY16 = np.array([[0, 1000, 30000], [65535, 12345, 7]], dtype=np.uint16)


def save_png(path, array, **kwargs):
    Image.fromarray(array).save(path, format="PNG", **kwargs)
    return path


def test_8bit_png(tmp_path):
    image = read_image(save_png(tmp_path / "g.png", GRAY8))
    assert image.dtype == np.float32 and image.shape == (2, 3)
    np.testing.assert_allclose(image, GRAY8 / 255, atol=1e-7)


def test_16bit_png(tmp_path):
    path = save_png(tmp_path / "g16.png", GRAY16)
    with Image.open(path) as stored:
        assert stored.mode.startswith("I")  # really 16-bit on disk
    np.testing.assert_allclose(read_image(path), GRAY16 / 65535, atol=1e-7)


@pytest.mark.parametrize("array", [GRAY8, GRAY16], ids=["8bit", "16bit"])
@pytest.mark.parametrize("suffix", [".tif", ".TIFF"])
def test_tiff(tmp_path, array, suffix):
    path = tmp_path / f"g{suffix}"
    tifffile.imwrite(path, array)
    np.testing.assert_allclose(read_image(path), array / np.iinfo(array.dtype).max, atol=1e-7)


def test_float_tiffs_are_read_as_they_are_or_refused_never_clipped(tmp_path):
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, np.array([[0.0, 0.25], [0.75, 1.0]], dtype=np.float32))
    np.testing.assert_allclose(read_image(path), [[0.0, 0.25], [0.75, 1.0]])
    tifffile.imwrite(path, np.array([[-0.5, 0.25], [0.75, 3.0]], dtype=np.float32))
    with pytest.raises(ImageReadError, match=r"f.tif: intensities must lie in \[0, 1\], got \[-0.5, 3\]"):
        read_image(path)
    tifffile.imwrite(path, np.array([[np.nan, 0.25]], dtype=np.float32))
    with pytest.raises(ImageReadError, match="f.tif: float image contains NaN or infinite values"):
        read_image(path)


RGB = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [90, 180, 30]]], dtype=np.uint8)


def test_rgb_and_rgba_become_luminance(tmp_path):
    expected = rgb2gray(RGB / 255)
    np.testing.assert_allclose(read_image(save_png(tmp_path / "rgb.png", RGB)), expected, atol=1e-6)
    rgba = np.concatenate([RGB, np.full((2, 2, 1), 17, dtype=np.uint8)], axis=2)  # alpha is ignored
    np.testing.assert_allclose(read_image(save_png(tmp_path / "rgba.png", rgba)), expected, atol=1e-6)
    tifffile.imwrite(tmp_path / "rgb.tif", RGB)
    np.testing.assert_allclose(read_image(tmp_path / "rgb.tif"), expected, atol=1e-6)


def test_palette_png(tmp_path):
    indices = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0, 255, 255, 255] + [0] * (256 * 3 - 9))
    image.save(tmp_path / "p.png")
    np.testing.assert_allclose(read_image(tmp_path / "p.png"), [[0.0, 0.2125], [1.0, 0.2125]], atol=1e-4)
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), indices > 0)


def test_bilevel_gray_alpha_and_16bit_rgb_tiff(tmp_path):
    Image.fromarray(GRAY8 > 100).save(tmp_path / "bw.png")  # mode "1"
    np.testing.assert_array_equal(read_image(tmp_path / "bw.png"), (GRAY8 > 100).astype(np.float32))
    la = Image.fromarray(np.dstack([GRAY8, np.zeros_like(GRAY8)]), mode="LA")  # alpha is ignored
    la.save(tmp_path / "la.png")
    np.testing.assert_allclose(read_image(tmp_path / "la.png"), GRAY8 / 255, atol=1e-7)
    rgb16 = (RGB.astype(np.uint16) * 257)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb16, photometric="rgb")
    np.testing.assert_allclose(read_image(tmp_path / "rgb16.tif"), rgb2gray(RGB / 255), atol=1e-6)


def test_jpeg(tmp_path):
    smooth = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (32, 1))
    Image.fromarray(smooth).save(tmp_path / "g.jpg", quality=95)
    image = read_image(tmp_path / "g.jpg")
    assert image.shape == (32, 32)
    assert np.abs(image - smooth / 255).max() < 0.05


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    save_png(tmp_path / "turned.png", GRAY8, exif=exif)
    np.testing.assert_allclose(read_image(tmp_path / "turned.png"), np.rot90(GRAY8, k=-1) / 255, atol=1e-7)


def expect_read_error(path, fragment, reader=read_image, **kwargs):
    with pytest.raises(ImageReadError) as info:
        reader(path, **kwargs)
    assert str(path) in str(info.value)
    assert fragment in info.value.reason
    return info.value


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    expect_read_error(tmp_path / "empty.png", "empty")
    (tmp_path / "empty.tif").write_bytes(b"")
    expect_read_error(tmp_path / "empty.tif", "empty")


def test_missing_file(tmp_path):
    expect_read_error(tmp_path / "absent.png", "no such file")


def test_truncated_png(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    expect_read_error(tmp_path / "cut.png", "truncated")


def test_text_renamed_png_and_tif(tmp_path):
    (tmp_path / "notes.png").write_text("these are not pixels\n" * 10)
    expect_read_error(tmp_path / "notes.png", "not a recognised image")
    (tmp_path / "notes.tif").write_text("these are not pixels\n" * 10)
    expect_read_error(tmp_path / "notes.tif", "not a readable TIFF")


def chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width, height):
    """A well-formed PNG header claiming width x height, followed by a few bytes of pixel data only."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(bytes(64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_huge_png_header_is_refused_before_decoding(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_claiming(100_000, 100_000))
    expect_read_error(tmp_path / "bomb.png", "decompression bomb")
    # Below PIL's own limit (~1.8e8 pixels), ours applies: 12000 x 12000 = 1.44e8 > 1e8 pixels.
    (tmp_path / "big.png").write_bytes(png_claiming(12_000, 12_000))
    expect_read_error(tmp_path / "big.png", "exceeds the limit")
    expect_read_error(tmp_path / "big.png", "exceeds the limit", reader=read_mask)


def test_pixel_limit_applies_to_real_files(tmp_path):
    save_png(tmp_path / "g.png", np.zeros((40, 40), dtype=np.uint8))
    expect_read_error(tmp_path / "g.png", "exceeds the limit", max_pixels=1000)
    assert read_image(tmp_path / "g.png", max_pixels=1600).shape == (40, 40)


def test_huge_tiff_header_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.tif"
    tifffile.imwrite(path, np.zeros((2, 2), dtype=np.uint8))
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages.first.tags
        patches = [(tags[code].valueoffset, tags[code].dtype) for code in (256, 257)]  # ImageWidth, ImageLength
    data = bytearray(path.read_bytes())
    byteorder = "<" if data[:2] == b"II" else ">"
    for offset, dtype in patches:
        fmt = byteorder + ("I" if dtype == 4 else "H")
        struct.pack_into(fmt, data, offset, 60_000)
    path.write_bytes(bytes(data))
    expect_read_error(path, "exceeds the limit")


def test_stacks_and_multichannel_are_not_2d(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 8, 8), dtype=np.uint8), photometric="minisblack")
    expect_read_error(tmp_path / "stack.tif", "not a 2-D image")
    tifffile.imwrite(
        tmp_path / "five.tif", np.zeros((8, 8, 5), dtype=np.uint8), photometric="minisblack", planarconfig="contig"
    )
    expect_read_error(tmp_path / "five.tif", "not a 2-D image")
    tifffile.imwrite(tmp_path / "single.tif", np.full((1, 8, 9), 255, dtype=np.uint8))
    assert read_image(tmp_path / "single.tif").shape == (8, 9)  # a length-1 page axis is harmless


def test_zenodo_label(tmp_path):
    gray = np.repeat(GRAY8[..., None], 3, axis=2)
    wire = np.array([[True, False, False], [False, True, True]])
    label = gray.copy()
    label[wire] = (0, 255, 0)
    label[1, 2] = (200, 10, 9)  # any green != blue is wire
    np.testing.assert_array_equal(read_zenodo_label(save_png(tmp_path / "l.png", label)), wire)
    rgba = np.concatenate([label, np.full((2, 3, 1), 255, dtype=np.uint8)], axis=2)
    np.testing.assert_array_equal(read_zenodo_label(save_png(tmp_path / "la.png", rgba)), wire)
    expect_read_error(save_png(tmp_path / "g.png", GRAY8), "RGB", reader=read_zenodo_label)


def test_read_mask_encodings(tmp_path):
    expected = GRAY8 > 0
    np.testing.assert_array_equal(read_mask(save_png(tmp_path / "m8.png", GRAY8)), expected)
    np.testing.assert_array_equal(read_mask(save_png(tmp_path / "m16.png", GRAY16)), GRAY16 > 0)
    white_on_black = np.repeat((expected * 255).astype(np.uint8)[..., None], 3, axis=2)
    np.testing.assert_array_equal(read_mask(save_png(tmp_path / "rgb.png", white_on_black)), expected)
    zenodo = white_on_black.copy()
    zenodo[..., 1] = np.where(expected, 255, 0)
    zenodo[..., 2] = 0
    zenodo[..., 0] = 128  # red carries no meaning in this encoding
    np.testing.assert_array_equal(read_mask(save_png(tmp_path / "z.png", zenodo)), expected)
    tifffile.imwrite(tmp_path / "m.tif", GRAY16)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.tif"), GRAY16 > 0)


def test_stacks_are_resized(tmp_path):
    flat = save_png(tmp_path / "flat.png", np.full((30, 50), 100, dtype=np.uint8))
    ramp = tmp_path / "ramp.tif"
    tifffile.imwrite(ramp, np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1)))
    stack = load_image_stack([flat, ramp], 16)
    assert stack.dtype == np.float32 and stack.shape == (2, 16, 16)
    np.testing.assert_allclose(stack[0], 100 / 255, atol=1e-5)
    assert stack.min() >= 0 and stack.max() <= 1
    assert np.all(np.diff(stack[1], axis=1) > 0)  # the ramp survives downsampling
    assert load_image_stack([], 16).shape == (0, 16, 16)

    block = np.zeros((64, 64), dtype=np.uint8)
    block[16:48, 32:] = 255
    masks = load_mask_stack([save_png(tmp_path / "block.png", block)], 8)
    assert masks.dtype == bool and masks.shape == (1, 8, 8)
    expected = np.zeros((8, 8), dtype=bool)
    expected[2:6, 4:] = True
    np.testing.assert_array_equal(masks[0], expected)
