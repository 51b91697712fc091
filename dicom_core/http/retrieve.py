"""WADO-RS routes (PS3.18 10.4): instances, metadata, frames, bulk data, rendered images, thumbnails.

Each route declares the representations it offers and negotiates once (http/negotiation.py,
PS3.18 8.7); the operation is handed the result. Bodies stream, and a small one is sent whole (multipart_response.py).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicom_core.dicom.frames import EXPLICIT_VR_LITTLE_ENDIAN, NATIVE_MEDIA_TYPE, media_type_of
from dicom_core.dicom.rendering import DEFAULT_QUALITY, RENDERED_MEDIA_TYPES, WINDOW_FUNCTIONS, RenderOptions, Viewport, Window
from dicom_core.dicom.transcode import HTJ2K_LOSSLESS, JPEG_2000_LOSSLESS
from dicom_core.errors import BadRequest, RangeNotSatisfiable
from dicom_core.http.context import base_url, scope_of, services_for
from dicom_core.http.media_types import DICOM, DICOM_JSON, JSON, MULTIPART_RELATED, OCTET_STREAM, ZIP
from dicom_core.http.multipart_response import body_response, multipart_response, zip_response
from dicom_core.http.negotiation import Offer, choose, multipart_offer, negotiate
from dicom_core.http.routing import Route
from dicom_core.operations.retrieve.bulkdata import retrieve_bulk_data
from dicom_core.operations.retrieve.finding import find_instance
from dicom_core.operations.retrieve.frames import FrameRendition, retrieve_frames
from dicom_core.operations.retrieve.instances import AS_STORED, Part, retrieve_instances
from dicom_core.operations.retrieve.metadata import retrieve_metadata
from dicom_core.operations.retrieve.rendered import retrieve_rendered, retrieve_thumbnail
from dicom_core.operations.retrieve.streams import iterate
from dicom_core.storage.layout import InstanceKey

_BULK_DATA_DEPTH = 3  # sequence levels a bulk data path may go through: bulkdata/sq/item/sq/item/sq/item/tag


ORIGINAL_HEADER = "msdicom-request-original"


def _wants_original(request: Request) -> bool:
    """``msdicom-request-original: true``: the instances as first received, before any bulk update (Azure DICOM)."""
    value = request.headers.get(ORIGINAL_HEADER, "false").strip().lower()
    if value not in ("true", "false"):
        raise BadRequest(f"{ORIGINAL_HEADER} must be true or false, got {value[:20]!r}")
    return value == "true"


def _instance_key(request: Request) -> InstanceKey:
    target = scope_of(request)
    return InstanceKey(target.partition, target.study, target.series or "", target.sop or "")


# -- instances ---------------------------------------------------------------------------------


# Explicit VR Little Endian unless the client names another transfer syntax (PS3.18 8.7.3.5.2);
# the operation refuses, with a 406 saying why, any it cannot produce.
_INSTANCES = multipart_offer(DICOM, default_syntax=EXPLICIT_VR_LITTLE_ENDIAN)
_ZIP = Offer(ZIP, default_syntax=AS_STORED, takes_syntax=False)
_SINGLE_FILE = Offer(DICOM, default_syntax=EXPLICIT_VR_LITTLE_ENDIAN)


async def get_instances(request: Request) -> Response:
    """GET a study, series or instance (PS3.18 10.4.1.1.1)."""
    target = scope_of(request)
    offers = [_INSTANCES, _SINGLE_FILE] if target.sop is not None else [_INSTANCES, _ZIP]
    choice = negotiate(request.headers.get("accept"), offers)
    services = await services_for(request)
    syntax = choice.transfer_syntax or EXPLICIT_VR_LITTLE_ENDIAN
    parts = await retrieve_instances(services, target, syntax, original=_wants_original(request))
    media_type = choice.media_type
    if media_type == ZIP:
        name = target.series or target.study
        return zip_response(parts, f"{name}.zip")
    if media_type == DICOM:
        part = await anext(parts)
        return await body_response(part.chunks, f"{DICOM}; transfer-syntax={part.transfer_syntax}", length=part.size)
    return await multipart_response(parts, DICOM, single_part=target.sop is not None)


# -- metadata ----------------------------------------------------------------------------------


async def get_metadata(request: Request) -> Response:
    """GET .../metadata: DICOM JSON with BulkDataURIs, ETag and If-None-Match (PS3.18 10.4.1.1.2, Annex F)."""
    target = scope_of(request)
    media_type = choose(request.headers.get("accept"), [DICOM_JSON, JSON])
    services = await services_for(request)
    metadata = await retrieve_metadata(services, target, base_url(request), original=_wants_original(request))
    headers = {"ETag": metadata.etag, "Cache-Control": "no-cache"}
    if _matches(request.headers.get("if-none-match"), metadata.etag):
        await metadata.body.aclose()
        return Response(status_code=304, headers=headers)
    return await body_response(metadata.body, media_type, headers)


def _matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 13.1.2: weak comparison of If-None-Match entries with ``etag``."""
    if not if_none_match:
        return False
    candidates = [candidate.strip().removeprefix("W/") for candidate in if_none_match.split(",")]
    return "*" in candidates or etag in candidates


# -- frames ------------------------------------------------------------------------------------


def _frame_numbers(raw: str, maximum: int) -> list[int]:
    """``1,3,5`` as [1, 3, 5]; anything else is a 400 (PS3.18 10.4.1.1.4)."""
    if raw.count(",") >= maximum:
        raise BadRequest(
            f"the frame list names {raw.count(',') + 1} frames, more than {maximum} (setting DICOM_MAX_FRAMES_PER_REQUEST)"
        )
    numbers = []
    for item in raw.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise BadRequest(f"frame list {raw[:80]!r} is malformed: give frame numbers from 1, separated by commas")
        numbers.append(int(item))
    return numbers


def _frame_offers(stored_syntax: str) -> list[Offer]:
    """Frames of an instance stored in ``stored_syntax``: in its own media type as stored, native bytes, or transcoded.

    A wildcard Accept gets the frames as stored; ``application/octet-stream`` named
    explicitly gets Explicit VR Little Endian unless a transfer syntax is given;
    ``image/jp2`` and ``image/jphc`` get JPEG 2000 or HTJ2K Lossless (PS3.18 Table 8.7.3-2)
    unless the stored syntax is one of theirs, which they get as stored.
    """
    stored_type = media_type_of(stored_syntax)
    native = multipart_offer(
        NATIVE_MEDIA_TYPE,
        syntaxes=frozenset({AS_STORED, stored_syntax, EXPLICIT_VR_LITTLE_ENDIAN}),
        default_syntax=EXPLICIT_VR_LITTLE_ENDIAN,
        wildcard_syntax=AS_STORED,
    )
    encoded = {media_type_of(syntax): syntax for syntax in (JPEG_2000_LOSSLESS, HTJ2K_LOSSLESS)}
    offers = [native]
    if stored_type != NATIVE_MEDIA_TYPE:
        syntaxes = {AS_STORED, stored_syntax}
        if stored_type in encoded:
            syntaxes.add(encoded.pop(stored_type))
        offers.insert(0, multipart_offer(stored_type, syntaxes=frozenset(syntaxes), default_syntax=AS_STORED))
    return offers + [
        multipart_offer(media_type, syntaxes=frozenset({syntax}), default_syntax=syntax) for media_type, syntax in encoded.items()
    ]


async def get_frames(request: Request) -> Response:
    """GET .../frames/{frames} (PS3.18 10.4.1.1.4): ranged reads of the lake."""
    key = _instance_key(request)
    services = await services_for(request)
    numbers = _frame_numbers(request.path_params["frames"], services.settings.limits.max_frames_per_request)
    accept = request.headers.get("accept")

    def rendition(stored_syntax: str) -> FrameRendition:
        choice = negotiate(accept, _frame_offers(stored_syntax))
        return FrameRendition(choice.offer.part_type or NATIVE_MEDIA_TYPE, choice.transfer_syntax or AS_STORED)

    chosen, parts = await retrieve_frames(services, key, numbers, rendition)
    return await multipart_response(parts, chosen.media_type, single_part=len(numbers) == 1)


# -- bulk data ---------------------------------------------------------------------------------


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The single range of a ``Range: bytes=...`` header as [start, end), None to send everything (RFC 9110 14.2)."""
    if not header or not header.strip().lower().startswith("bytes=") or "," in header:
        return None  # absent, another unit, or several ranges: the whole value (RFC 9110 allows ignoring Range)
    first, _, last = header.strip()[6:].partition("-")
    try:
        if first.strip() == "":
            start, end = max(size - int(last), 0), size
        else:
            start = int(first)
            end = min(int(last) + 1, size) if last.strip() else size
    except ValueError:
        return None
    if start >= size or start >= end or start < 0:
        raise RangeNotSatisfiable(
            f"the range is outside the {size} bytes of this bulk data", headers={"Content-Range": f"bytes */{size}"}
        )
    return start, end


_BULK_DATA_OFFERS = [Offer(OCTET_STREAM, takes_syntax=False), multipart_offer(OCTET_STREAM, takes_syntax=False)]


async def get_bulk_data(request: Request) -> Response:
    """GET .../bulkdata/<tag>[/<item>/<tag>...]: one bulk data value, whole or a byte range (PS3.18 10.4.1.1.5)."""
    key = _instance_key(request)
    segments = [request.path_params[f"segment{position}"] for position in range(_segment_count(request))]
    accepted = negotiate(request.headers.get("accept"), _BULK_DATA_OFFERS).media_type
    services = await services_for(request)
    bulk_data = await retrieve_bulk_data(services, key, segments)
    selected = _byte_range(request.headers.get("range"), bulk_data.size)
    start, end = selected or (0, bulk_data.size)
    chunks = await bulk_data.open(start, end)
    status = 206 if selected else 200
    if accepted == MULTIPART_RELATED:
        return await multipart_response(
            iterate([Part(OCTET_STREAM, None, chunks, size=end - start)]), OCTET_STREAM, single_part=True
        )
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(end - start)}
    if selected:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{bulk_data.size}"
    return StreamingResponse(chunks, status_code=status, media_type=OCTET_STREAM, headers=headers)


def _segment_count(request: Request) -> int:
    return sum(1 for name in request.path_params if name.startswith("segment"))


def _bulk_data_paths() -> list[str]:
    """bulkdata/{segment0}, bulkdata/{segment0}/{segment1}/{segment2}, ... up to _BULK_DATA_DEPTH sequence levels.

    Plain path parameters rather than a catch-all, so that the same templates
    work in Starlette and in Azure Functions routes.
    """
    return [
        "/bulkdata/" + "/".join(f"{{segment{position}}}" for position in range(1 + 2 * depth))
        for depth in range(_BULK_DATA_DEPTH + 1)
    ]


# -- rendered and thumbnails -------------------------------------------------------------------


def _render_options(request: Request) -> RenderOptions:
    """The PS3.18 8.3.5.1 query parameters: quality, window, viewport (others are ignored)."""
    media_type = choose(request.headers.get("accept"), list(RENDERED_MEDIA_TYPES))
    query = request.query_params
    quality = _integer(query.get("quality", str(DEFAULT_QUALITY)), "quality")
    if not 1 <= quality <= 100:
        raise BadRequest(f"quality {quality} is out of range: give 1 to 100")
    return RenderOptions(media_type, quality, _window(query.get("window")), _viewport(query.get("viewport")))


def _integer(raw: str, name: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"{name} {raw[:40]!r} is not an integer") from None


def _window(raw: str | None) -> Window | None:
    """``window=center,width[,function]`` (PS3.18 8.3.5.1.4)."""
    if raw is None:
        return None
    values = [value.strip() for value in raw.split(",")]
    function = values[2].lower() if len(values) == 3 else "linear"
    try:
        center, width = float(values[0]), float(values[1])
    except (ValueError, IndexError):
        center = width = float("nan")
    if len(values) not in (2, 3) or center != center or width != width or width <= 0 or function not in WINDOW_FUNCTIONS:
        raise BadRequest(
            f"window {raw[:80]!r} is malformed: give center,width,function with a positive width and function one of "
            + ", ".join(WINDOW_FUNCTIONS)
        )
    return Window(center, width, function)


def _viewport(raw: str | None) -> Viewport | None:
    """``viewport=vw,vh[,sx,sy,sw,sh]`` (PS3.18 8.3.5.1.3)."""
    if raw is None:
        return None
    values = [value.strip() for value in raw.split(",")]
    if len(values) not in (2, 6) or not all(value.isdigit() for value in values) or int(values[0]) < 1 or int(values[1]) < 1:
        raise BadRequest(
            f"viewport {raw[:80]!r} is malformed: give vw,vh (positive integers) or vw,vh,sx,sy,sw,sh (non-negative)"
        )
    numbers = [int(value) for value in values]
    region = tuple(numbers[2:]) if len(numbers) == 6 else None
    if region is not None and (region[2] < 1 or region[3] < 1):
        raise BadRequest(f"viewport {raw[:80]!r}: the source region's width and height must be positive")
    return Viewport(numbers[0], numbers[1], region)  # type: ignore[arg-type]


async def get_rendered(request: Request) -> Response:
    """GET .../rendered on an instance (its first frame) or on a frame (PS3.18 10.4.1.1.3)."""
    key = _instance_key(request)
    services = await services_for(request)
    numbers = _frame_numbers(request.path_params.get("frames", "1"), services.settings.limits.max_frames_per_request)
    if len(numbers) != 1:
        raise BadRequest("a rendered frame request names exactly one frame")
    options = _render_options(request)
    instance = await find_instance(services, key)
    image = await retrieve_rendered(services, instance, numbers[0], options)
    return Response(image, media_type=options.media_type)


async def get_thumbnail(request: Request) -> Response:
    """GET .../thumbnail on a study, series or instance: a small rendering of a representative image."""
    target = scope_of(request)
    options = _render_options(request)
    services = await services_for(request)
    return Response(await retrieve_thumbnail(services, target, options), media_type=options.media_type)


_STUDY = "/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"

ROUTES = [
    Route("retrieve_study", _STUDY, ("GET",), get_instances),
    Route("retrieve_series", _SERIES, ("GET",), get_instances),
    Route("retrieve_instance", _INSTANCE, ("GET",), get_instances),
    Route("retrieve_study_metadata", _STUDY + "/metadata", ("GET",), get_metadata),
    Route("retrieve_series_metadata", _SERIES + "/metadata", ("GET",), get_metadata),
    Route("retrieve_instance_metadata", _INSTANCE + "/metadata", ("GET",), get_metadata),
    Route("retrieve_frames", _INSTANCE + "/frames/{frames}", ("GET",), get_frames),
    Route("retrieve_instance_rendered", _INSTANCE + "/rendered", ("GET",), get_rendered),
    Route("retrieve_frame_rendered", _INSTANCE + "/frames/{frames}/rendered", ("GET",), get_rendered),
    Route("retrieve_study_thumbnail", _STUDY + "/thumbnail", ("GET",), get_thumbnail),
    Route("retrieve_series_thumbnail", _SERIES + "/thumbnail", ("GET",), get_thumbnail),
    Route("retrieve_instance_thumbnail", _INSTANCE + "/thumbnail", ("GET",), get_thumbnail),
    *(
        Route(f"retrieve_bulk_data_{depth}", _INSTANCE + path, ("GET",), get_bulk_data)
        for depth, path in enumerate(_bulk_data_paths())
    ),
]
