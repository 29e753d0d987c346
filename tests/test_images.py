"""The structural JPEG check finds truncated and foreign files without decoding."""

import io

import pytest
from PIL import Image

from shards.convert.images import BadImage, encode_jpeg, probe_bytes, probe_file, target_size
from tests.support.raw_datasets import jpeg_bytes


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


@pytest.mark.parametrize("progressive", [False, True])
def test_probe_reads_size(tmp_path, progressive):
    data = jpeg_bytes(57, 31, 1, progressive=progressive)
    p = probe_file(write(tmp_path, "a.jpg", data))
    assert (p.width, p.height, p.size, p.is_jpeg) == (57, 31, len(data), True)
    assert probe_bytes(data) == (57, 31)


def test_probe_accepts_trailing_bytes_after_eoi(tmp_path):
    data = jpeg_bytes(40, 30, 2) + b"\0" * 100_000  # some cameras append data
    assert probe_file(write(tmp_path, "a.jpg", data)).width == 40


@pytest.mark.parametrize(
    "mutate,reason",
    [
        (lambda d: d[: len(d) // 2], "truncated"),
        (lambda d: d[:200], "truncated"),
        (lambda d: b"<html>not found</html>", "does not decode"),
        (lambda d: b"", "empty file"),
        (lambda d: d[:2] + b"\x00" * 50 + d[52:], "corrupt JPEG header"),
    ],
)
def test_probe_rejects_bad_files(tmp_path, mutate, reason):
    data = mutate(jpeg_bytes(64, 48, 3) + b"")
    with pytest.raises(BadImage, match=reason):
        probe_file(write(tmp_path, "bad.jpg", data))


def test_probe_large_app_segment_reads_whole_file(tmp_path):
    # an APP segment pushing the frame header past the first 64 KiB
    data = jpeg_bytes(33, 22, 4)
    app = b"\xff\xe2" + (65535).to_bytes(2, "big") + b"\0" * 65533
    big = data[:2] + app + app + data[2:]
    assert probe_file(write(tmp_path, "big.jpg", big)).width == 33
    with pytest.raises(BadImage, match="truncated"):
        probe_file(write(tmp_path, "big_cut.jpg", big[: len(big) - 500]))


def test_png_is_flagged_for_reencoding(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), "red").save(buf, format="PNG")
    p = probe_file(write(tmp_path, "a.jpg", buf.getvalue()))
    assert (p.width, p.height, p.is_jpeg) == (20, 10, False)


def test_decode_check_catches_what_headers_cannot(tmp_path):
    data = bytearray(jpeg_bytes(64, 64, 5))
    dht = data.find(b"\xff\xc4")
    data[dht + 5 : dht + 21] = b"\xff" * 16  # a bogus Huffman table; segment lengths intact
    path = write(tmp_path, "a.jpg", bytes(data))
    assert probe_file(path, "header").width == 64
    with pytest.raises(BadImage, match="does not decode"):
        probe_file(path, "decode")


def test_target_size_and_reencode():
    assert target_size(500, 375, None) == (500, 375)
    assert target_size(500, 375, 1000) == (500, 375)
    assert target_size(500, 375, 100) == (100, 75)
    assert target_size(375, 500, 100) == (75, 100)
    out = encode_jpeg(jpeg_bytes(500, 375, 6), (100, 75), 90)
    assert probe_bytes(out) == (100, 75)
    with Image.open(io.BytesIO(out)) as im:
        assert im.mode == "RGB" and im.format == "JPEG"
