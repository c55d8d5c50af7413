"""The flow image check of an upload: complete PNG and JPEG files only, no bombs.

The check reads an image's header and structure without decoding its pixels (issue #15):
these cases hold it to refusing what a full decode refused, and more.
"""
from __future__ import annotations

import json
import struct
import zlib

import pytest

from tests.api_support import JPEG, b64, image_bytes, upload_body

PLOT_PNG = image_bytes("PNG", size=(640, 240), color="white")
PLOT_JPEG = image_bytes("JPEG", size=(640, 240), color="white")


def post_image(client, data: bytes):
    body = upload_body(image=None, flow_image=b64(data))
    return client.post("/api/v1/patients", data=json.dumps(body),
                       content_type="application/json")


def png_claiming(width_px: int, height_px: int) -> bytes:
    """A small PNG whose header claims ``width_px`` x ``height_px`` (CRC kept valid)."""
    ihdr = struct.pack(">IIBBBBB", width_px, height_px, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (PLOT_PNG[:8] + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + PLOT_PNG[33:])


def flip_byte(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def idat_offset(png: bytes) -> int:
    """Where the compressed pixels of a PNG start."""
    return png.index(b"IDAT") + 4


@pytest.mark.parametrize("data, message", [
    (PLOT_PNG[:len(PLOT_PNG) // 2], "not a readable PNG"),
    (PLOT_PNG[:-12], "not a readable PNG"),                  # no IEND chunk
    (PLOT_PNG[:-1], "not a readable PNG"),                   # IEND's CRC cut
    (flip_byte(PLOT_PNG, idat_offset(PLOT_PNG) + 5), "not a readable PNG"),  # CRC wrong
    (PLOT_JPEG[:len(PLOT_JPEG) * 3 // 4], "not a readable JPEG"),
    (PLOT_JPEG[:-2], "not a readable JPEG"),                 # no end-of-image marker
    (JPEG[:60], "not a readable JPEG"),
    (png_claiming(10_000, 10_000), "not a readable PNG"),    # 10^8 pixels: bomb warning
    (png_claiming(30_000, 30_000), "not a readable PNG"),    # 9x10^8: bomb error
], ids=["png-half", "png-no-iend", "png-iend-cut", "png-idat-crc", "jpeg-3/4",
        "jpeg-no-eoi", "jpeg-header-only", "png-bomb-warning", "png-bomb-error"])
def test_incomplete_or_oversized_images_are_refused(client, data, message):
    resp = post_image(client, data)
    assert resp.status_code == 400, resp.get_data(as_text=True)
    assert resp.get_json()["field"] == "flow_image"
    assert message in resp.get_json()["message"]


@pytest.mark.parametrize("data, content_type", [(PLOT_PNG, "image/png"),
                                                (PLOT_JPEG, "image/jpeg")],
                         ids=["png", "jpeg"])
def test_complete_images_are_stored_as_sent(client, data, content_type):
    record = post_image(client, data).get_json()["record"]
    image = client.get(f"/api/v1/records/{record['id']}/image")
    assert (image.status_code, image.mimetype, image.data) == (200, content_type, data)
