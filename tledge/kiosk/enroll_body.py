"""Parse a ``POST /enroll`` body into an ``EnrollJob``, refusing anything malformed with the
right status: 400 (not JSON, wrong shape), 413 (too big), 415 (not JSON content), 422 (a
label that is not a valid class name). Image pixels are not decoded here (the worker does,
one at a time)."""

from __future__ import annotations

import json
import re

from tledge.errors import TledgeError
from tledge.kiosk.enroll import EnrollJob, body_digest
from tledge.kiosk.enroll_images import RequestError, check_images
from tledge.kiosk.http_guard import HttpLimits
from tledge.runtime.labels import validate_label

_KEY = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII, no spaces
SHAPE = 'expected {"label": "name"} with optional "images": ["<base64>", ...]'


def _read_body(environ, limits: HttpLimits) -> bytes:
    kind = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
    if kind != "application/json":
        raise RequestError(415, "send the body as JSON with Content-Type: application/json")
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise RequestError(400, "Content-Length is not a number") from None
    if length > limits.max_body:
        raise RequestError(413, f"the body is larger than {limits.max_body // 2**20} MiB")
    if length <= 0:
        raise RequestError(400, f"a JSON body is required: {SHAPE}")
    return environ["wsgi.input"].read(length)


def _parse_json(data: bytes):
    try:
        return json.loads(data)
    except RecursionError:
        raise RequestError(400, "the JSON body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, integers of >4300 digits
        raise RequestError(400, f"the body is not valid JSON: {' '.join(str(exc).split())}"
                           ) from None


def parse_enroll_body(environ, limits: HttpLimits) -> EnrollJob:
    """The job a request asks for (images still base64), or RequestError."""
    data = _read_body(environ, limits)
    body = _parse_json(data)
    if not isinstance(body, dict) or not isinstance(body.get("label"), str):
        raise RequestError(400, SHAPE)
    unknown = set(body) - {"label", "images"}
    if unknown:
        raise RequestError(400, f"unknown fields {sorted(map(ascii, unknown))[:5]}; {SHAPE}")
    try:
        label = validate_label(body["label"])
    except TledgeError as exc:
        raise RequestError(422, str(exc)) from None
    images = body.get("images")
    if images is not None:
        images = check_images(images, limits.max_images)
    key = environ.get("HTTP_IDEMPOTENCY_KEY")
    if key is not None and not _KEY.fullmatch(key):
        raise RequestError(400, "Idempotency-Key must be 1-128 printable ASCII characters")
    return EnrollJob(label=label, images=images, key=key, digest=body_digest(data))
