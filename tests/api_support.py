"""Helpers shared by the API tests: images and upload bodies."""
from __future__ import annotations

import base64
import io

from PIL import Image


def image_bytes(fmt: str = "PNG", size=(40, 20), color="navy") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


PNG = image_bytes("PNG")
JPEG = image_bytes("JPEG")


def upload_body(mrn=12, room=3, name="Ada Lovelace", pressure=10, rate=14.5, apnea=1,
                image: bytes | None = PNG, **extra) -> dict:
    """A complete patient-station upload (measurement group + image)."""
    body = {"mrn": mrn, "room": room, "name": name, "cpap_pressure_cmh2o": pressure,
            "breath_rate_bpm": rate, "apnea_count": apnea}
    if image is not None:
        body["flow_image"] = b64(image)
    body.update(extra)
    return body
