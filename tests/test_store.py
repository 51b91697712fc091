"""STOW-RS against a real Azurite: contract paths, the response module, duplicates, bad input."""

from __future__ import annotations

import asyncio
import uuid

import pydicom
import pytest

from dicom_core.storage.layout import InstanceKey
from tests.dicom_files import (
    TRUNCATED_TEST_FILES,
    file_bytes,
    minimal_instance,
    multipart,
    new_instance,
    preamble_zeroed,
    storable_test_files,
    stow_headers,
    uids,
)

STUDIES = "/v2/studies"


async def post(client, parts, url=STUDIES, method="POST", boundary=None, quoted=True):
    body, boundary = multipart(parts, boundary)
    return await client.request(method, url, content=body, headers=stow_headers(boundary, quoted))


def sequence(response_json: dict, tag: str) -> list[dict]:
    return response_json.get(tag, {}).get("Value", [])


def failure_reasons(response_json: dict) -> list[int]:
    return [item["00081197"]["Value"][0] for item in sequence(response_json, "00081198")]


async def lake_bytes(services, partition: str, data: bytes) -> bytes:
    study, series, sop, _ = uids(data)
    return await services.lake.read(services.layout.instance_path(InstanceKey(partition, study, series, sop)))


async def test_every_pydicom_test_file_stores_at_its_contract_path(client, services):
    files = storable_test_files()
    assert len(files) > 80  # pydicom's and pydicom-data's valid Part 10 files
    # Files that share UIDs (one image in several transfer syntaxes) go to separate partitions.
    by_partition: dict[str, list[bytes]] = {}
    seen: dict[tuple, int] = {}
    for path in files:
        data = path.read_bytes()
        key = uids(data)[:3]
        seen[key] = seen.get(key, -1) + 1
        by_partition.setdefault(f"copy{seen[key]}", []).append(data)
    for partition, instances in by_partition.items():
        for start in range(0, len(instances), 10):
            batch = instances[start : start + 10]
            response = await post(client, batch, url=f"/v2/partitions/{partition}/studies")
            assert response.status_code == 200, response.text
            assert len(sequence(response.json(), "00081199")) == len(batch)
            for data in batch:
                study, series, sop, _ = uids(data)
                path = f"AHDS/testws/dicom/testsvc/{partition}/{study}/{series}/{sop}.dcm"
                assert await services.lake.read(path) == preamble_zeroed(data)


@pytest.mark.parametrize("name", TRUNCATED_TEST_FILES)
async def test_pydicom_truncated_test_files_are_refused(client, services, name):
    response = await post(client, [file_bytes(name)])
    assert response.status_code == 409
    assert failure_reasons(response.json()) == [43264]
    message = response.json()["00081198"]["Value"][0]["00000902"]["Value"][0]
    assert "truncated" in message or "declares" in message
    assert not [f async for f in services.lake.list("AHDS/")]


async def test_response_module_lists_each_instance_with_urls(client):
    first = new_instance()
    study = uids(first)[0]
    second = new_instance(study=study)
    response = await post(client, [first, second])
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    body = response.json()
    assert body["00081190"]["Value"] == [f"http://testserver/v2/studies/{study}"]
    assert "00081198" not in body
    referenced = sequence(body, "00081199")
    expected = []
    for data in (first, second):
        study_uid, series, sop, sop_class = uids(data)
        expected.append(
            {
                "00081150": {"vr": "UI", "Value": [sop_class]},
                "00081155": {"vr": "UI", "Value": [sop]},
                "00081190": {
                    "vr": "UR",
                    "Value": [f"http://testserver/v2/studies/{study_uid}/series/{series}/instances/{sop}"],
                },
            }
        )
    assert referenced == expected


async def test_preamble_is_zeroed_even_when_it_holds_an_executable(client, services):
    data = bytearray(new_instance())
    data[0:2] = b"MZ"  # a PE header in the preamble: a DICOM/PE polyglot (CVE-2019-11687)
    data[60:64] = (64).to_bytes(4, "little")
    data[64:68] = b"PE\0\0"
    response = await post(client, [bytes(data)])
    assert response.status_code == 200
    stored = await lake_bytes(services, "Microsoft.Default", bytes(data))
    assert stored[:128] == bytes(128)
    assert stored[128:] == bytes(data[128:])


async def test_post_of_an_existing_instance_fails_with_45070_and_keeps_the_file(client, services):
    original = new_instance(StudyDescription="original")
    study, series, sop, _ = uids(original)
    assert (await post(client, [original])).status_code == 200
    before = await services.lake.properties(services.layout.instance_path(InstanceKey("Microsoft.Default", study, series, sop)))
    changed = new_instance(study=study, series=series, sop=sop, StudyDescription="changed")
    response = await post(client, [changed])
    assert response.status_code == 409
    assert failure_reasons(response.json()) == [45070]
    after = await services.lake.properties(before.path)
    assert after.etag == before.etag
    assert await services.lake.read(before.path) == preamble_zeroed(original)


async def test_put_replaces_an_existing_instance_without_counting_it_twice(client, services):
    original = new_instance(StudyDescription="original")
    study, series, sop, _ = uids(original)
    assert (await post(client, [original])).status_code == 200
    changed = new_instance(study=study, series=series, sop=sop, StudyDescription="changed")
    response = await post(client, [changed], method="PUT")
    assert response.status_code == 200, response.text
    assert await lake_bytes(services, "Microsoft.Default", changed) == preamble_zeroed(changed)
    study_entity = await services.index.get_study("Microsoft.Default", study)
    assert study_entity.instance_count == 1
    assert study_entity.attributes["00081030"]["Value"] == ["changed"]
    entity = await services.index.get_instance(InstanceKey("Microsoft.Default", study, series, sop))
    assert entity.size == len(changed)


@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_an_instance_sent_twice_in_one_request_is_stored_from_one_part_and_the_other_refused(client, services, method):
    first = new_instance(StudyDescription="first")
    study, series, sop, _ = uids(first)
    copies = [first] + [new_instance(study=study, series=series, sop=sop, StudyDescription=f"copy {n}") for n in range(5)]
    response = await post(client, copies, method=method)
    assert response.status_code == 202, response.text
    body = response.json()
    [stored] = body["00081199"]["Value"]
    assert stored["00081155"]["Value"] == [sop]
    refusals = body["00081198"]["Value"]
    assert [item["00081197"]["Value"] for item in refusals] == [[45070]] * 5
    assert all("more than once in this request" in item["00000902"]["Value"][0] for item in refusals)
    # The file, its entity and the counts agree: one instance, the entity's ETag is the file's.
    key = InstanceKey("Microsoft.Default", study, series, sop)
    record = await services.index.get_instance(key)
    assert (await services.lake.properties(record.path)).etag == record.etag
    assert await lake_bytes(services, "Microsoft.Default", first) in {preamble_zeroed(copy) for copy in copies}
    assert (await services.index.get_study("Microsoft.Default", study)).instance_count == 1


async def test_put_stores_new_instances_too(client, services):
    data = new_instance()
    response = await post(client, [data], method="PUT")
    assert response.status_code == 200
    assert await lake_bytes(services, "Microsoft.Default", data) == preamble_zeroed(data)


async def test_single_application_dicom_body(client, services):
    data = new_instance()
    response = await client.post(STUDIES, content=data, headers={"Content-Type": "application/dicom"})
    assert response.status_code == 200
    assert await lake_bytes(services, "Microsoft.Default", data) == preamble_zeroed(data)


@pytest.mark.parametrize(
    "boundary, quoted_type",
    [
        ("simple", True),
        ("simple", False),
        ("'()+_,-./:=? with spaces and-----dashes", True),
        ("x" * 70, False),
    ],
)
async def test_any_legal_boundary_and_quoting(client, services, boundary, quoted_type):
    data = new_instance()
    body, _ = multipart([data], boundary)
    type_parameter = 'type="application/dicom"' if quoted_type else "type=application/dicom"
    quoted_boundary = f'"{boundary}"' if any(c in boundary for c in " '()+,/:=?") else boundary
    response = await client.post(
        STUDIES, content=body, headers={"Content-Type": f"multipart/related; {type_parameter}; boundary={quoted_boundary}"}
    )
    assert response.status_code == 200, response.text
    assert await lake_bytes(services, "Microsoft.Default", data) == preamble_zeroed(data)


async def test_what_orthanc_sends_is_stored(client, services):
    """The wire form of Orthanc's DICOMweb plugin (1.7): a boundary of two UUIDs joined by '-' (73
    characters, over RFC 2046's 70), a Content-Length in each part, and a body without Content-Length
    (Orthanc sends it chunked)."""
    parts = [new_instance(), new_instance()]
    body, boundary = multipart(parts, f"{uuid.uuid4()}-{uuid.uuid4()}", content_length=True)

    async def chunked():
        yield body

    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
    response = await client.post(STUDIES, content=chunked(), headers=headers | {"Accept": "application/dicom+json"})
    assert response.status_code == 200, response.text
    assert len(sequence(response.json(), "00081199")) == 2
    for data in parts:
        assert await lake_bytes(services, "Microsoft.Default", data) == preamble_zeroed(data)


async def test_body_arriving_in_tiny_chunks(client, services):
    parts = [new_instance() for _ in range(3)]
    body, boundary = multipart(parts)

    async def trickle():
        for start in range(0, len(body), 7):
            yield body[start : start + 7]

    response = await client.post(STUDIES, content=trickle(), headers=stow_headers(boundary))
    assert response.status_code == 200
    for data in parts:
        assert await lake_bytes(services, "Microsoft.Default", data) == preamble_zeroed(data)


async def test_good_and_bad_parts_succeed_and_fail_on_their_own(client, services):
    good = [new_instance(), new_instance()]
    not_dicom = b"this is not DICOM at all" * 10
    missing_patient = minimal_instance(PatientID=None)
    bad_uid = minimal_instance(SeriesInstanceUID="1.2.abc")
    truncated = file_bytes("CT_small.dcm")[:-1000]
    wrong_type = ("application/json", b"{}")
    response = await post(client, [good[0], not_dicom, missing_patient, bad_uid, truncated, wrong_type, good[1]])
    assert response.status_code == 202
    body = response.json()
    assert [item["00081155"]["Value"][0] for item in sequence(body, "00081199")] == [uids(g)[2] for g in good]
    assert failure_reasons(body) == [49152, 43264, 43264, 43264, 49152]
    failed_sops = [item["00081155"].get("Value", [""])[0] for item in sequence(body, "00081198")]
    assert failed_sops[1] == uids(missing_patient)[2] or failed_sops[1] == ""
    for data in good:
        assert await lake_bytes(services, "Microsoft.Default", data) == preamble_zeroed(data)


async def test_study_in_url_must_match_with_43265(client, services):
    study = uids(new_instance())[0]
    matching = new_instance(study=study)
    other = new_instance()
    response = await post(client, [matching, other], url=f"{STUDIES}/{study}")
    assert response.status_code == 202
    body = response.json()
    assert failure_reasons(body) == [43265]
    assert body["00081190"]["Value"] == [f"http://testserver/v2/studies/{study}"]
    assert len(sequence(body, "00081199")) == 1
    missing_path = services.layout.instance_path(InstanceKey("Microsoft.Default", *uids(other)[:3]))
    assert not [f async for f in services.lake.list(missing_path)]


async def test_all_parts_failing_gives_409(client):
    response = await post(client, [b"not dicom", b"nor this"])
    assert response.status_code == 409
    assert failure_reasons(response.json()) == [49152, 49152]


@pytest.mark.parametrize(
    "content_type, status, words",
    [
        ("application/json", 415, "not supported"),
        ('multipart/related; type="application/dicom+json"; boundary=x', 415, "application/dicom+json"),
        ("multipart/related; type=application/dicom", 400, "boundary"),
        (f"multipart/related; boundary={'x' * 257}", 400, "257 characters long; at most 256"),
        (None, 415, "no Content-Type"),
    ],
)
async def test_unsupported_media_types(client, content_type, status, words):
    headers = {"Content-Type": content_type} if content_type else {}
    response = await client.post(STUDIES, content=b"--x\r\n\r\n--x--", headers=headers)
    assert response.status_code == status
    assert words in response.json()["message"]


async def test_accept_that_allows_no_json_gives_406(client, services):
    data = new_instance()
    body, boundary = multipart([data])
    headers = stow_headers(boundary) | {"Accept": "application/dicom"}
    response = await client.post(STUDIES, content=body, headers=headers)
    assert response.status_code == 406
    assert "application/dicom+json" in response.json()["message"]
    assert not [f async for f in services.lake.list("AHDS/")]


async def test_accept_application_json_is_honoured(client):
    body, boundary = multipart([new_instance()])
    response = await client.post(STUDIES, content=body, headers=stow_headers(boundary) | {"Accept": "application/json"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "body, words",
    [
        (b"", "no multipart part"),
        (b"garbage without any boundary", "lines of '--' + the boundary"),
        (b"--b\r\nContent-Type: application/dicom\r\n\r\nDICM-ish data never closed", "closing boundary"),
        (b"--b\r\nContent-Type application/dicom\r\n\r\n\r\n--b--", "malformed"),
    ],
)
async def test_malformed_multipart_is_a_400_and_stores_nothing(client, services, body, words):
    response = await client.post(STUDIES, content=body, headers=stow_headers("b"))
    assert response.status_code == 400, response.text
    assert words in response.json()["message"]
    assert not [f async for f in services.lake.list("AHDS/")]


async def test_body_cut_after_whole_parts_keeps_them_and_reports_the_rest(client, services):
    good = new_instance()
    body, boundary = multipart([good, new_instance()])
    cut = body[: len(body) - 5000]
    response = await client.post(STUDIES, content=cut, headers=stow_headers(boundary))
    assert response.status_code == 202
    assert failure_reasons(response.json()) == [49152]
    assert await lake_bytes(services, "Microsoft.Default", good) == preamble_zeroed(good)


@pytest.mark.parametrize(
    "url, words",
    [
        ("/v2/studies/1.2.abc", "not a valid UID"),
        ("/v2/studies/" + "1." * 40 + "1", "more than 64"),
        ("/v2/studies/1..2", "not a valid UID"),
        ("/v2/partitions/bad%20name/studies", "partition name"),
        ("/v2/partitions/" + "p" * 65 + "/studies", "partition name"),
        ("/v2/partitions/healthCheck/studies", "partition name"),
    ],
)
async def test_invalid_uids_and_partitions_in_the_url(client, services, url, words):
    body, boundary = multipart([new_instance()])
    response = await client.post(url, content=body, headers=stow_headers(boundary))
    assert response.status_code == 400
    assert words in response.json()["message"]
    assert not [f async for f in services.lake.list("AHDS/")]


async def test_path_characters_in_a_url_uid_never_reach_the_lake(client, services):
    response = await client.post("/v2/studies/..%2F..%2Fetc", content=b"x", headers=stow_headers("b"))
    assert response.status_code in (400, 404)
    assert not [f async for f in services.lake.list("")]


async def test_oversize_instance_is_refused_and_others_stored(client, services, with_limits):
    small = new_instance(template="MR_small.dcm")
    large = new_instance()
    with_limits(max_instance_bytes=len(small) + 100)
    response = await post(client, [small, large])
    assert response.status_code == 202
    body = response.json()
    assert failure_reasons(body) == [42752]
    assert "DICOM_MAX_INSTANCE_BYTES" in body["00081198"]["Value"][0]["00000902"]["Value"][0]
    assert await lake_bytes(services, "Microsoft.Default", small) == preamble_zeroed(small)


async def test_oversize_request_is_a_413_naming_the_limit(client, with_limits, services):
    with_limits(max_request_bytes=1000)
    body, boundary = multipart([new_instance()])
    response = await client.post(STUDIES, content=body, headers=stow_headers(boundary))
    assert response.status_code == 413
    assert "DICOM_MAX_REQUEST_BYTES" in response.json()["message"]


async def test_too_many_parts_is_a_413_naming_the_limit(client, with_limits):
    with_limits(max_parts_per_request=2)
    response = await post(client, [new_instance() for _ in range(3)])
    assert response.status_code == 413
    assert "DICOM_MAX_PARTS_PER_REQUEST" in response.json()["message"]


async def test_partitions_are_isolated(client, services):
    data = new_instance()
    study, _series, _sop, _ = uids(data)
    for partition in ("alpha", "beta-2"):
        response = await post(client, [data], url=f"/v2/partitions/{partition}/studies")
        assert response.status_code == 200, response.text
        assert response.json()["00081190"]["Value"] == [f"http://testserver/v2/partitions/{partition}/studies/{study}"]
        assert await lake_bytes(services, partition, data) == preamble_zeroed(data)
    assert await services.index.get_study("Microsoft.Default", study) is None
    assert (await services.index.get_study("alpha", study)).instance_count == 1
    default_files = [f async for f in services.lake.list(services.layout.partition_folder("Microsoft.Default"))]
    assert default_files == []
    # Storing again in one partition is a duplicate there only.
    response = await post(client, [data], url="/v2/partitions/alpha/studies")
    assert failure_reasons(response.json()) == [45070]
    assert (await post(client, [data])).status_code == 200


async def test_index_keeps_what_retrieve_needs(client, services):
    data = file_bytes("emri_small_jpeg_2k_lossless.dcm")
    assert (await post(client, [data])).status_code == 200
    study, series, sop, _sop_class = uids(data)
    key = InstanceKey("Microsoft.Default", study, series, sop)
    entity = await services.index.get_instance(key)

    assert entity.path == services.layout.instance_path(key)
    assert entity.size == len(data)
    assert entity.transfer_syntax == "1.2.840.10008.1.2.4.90"
    assert entity.number_of_frames == 10
    assert entity.etag == (await services.lake.properties(entity.path)).etag
    stored = await services.lake.read(entity.path)
    frames = entity.frame_ranges
    dataset = pydicom.dcmread(__import__("io").BytesIO(data))
    from pydicom.encaps import generate_frames

    expected = list(generate_frames(dataset.PixelData, number_of_frames=10))
    assert [b"".join(stored[o : o + n] for o, n in frame) for frame in frames] == expected


async def test_counts_stay_exact_under_concurrent_stores_into_one_study(client, services):
    study = uids(new_instance())[0]
    series = [uids(new_instance())[1] for _ in range(3)]
    requests = [
        [new_instance(study=study, series=series[n % 3], modality=("CT", "MR", "SEG")[n % 3]) for _ in range(4)]
        for n in range(12)
    ]
    responses = await asyncio.gather(*(post(client, parts) for parts in requests))
    assert all(response.status_code == 200 for response in responses)
    entity = await services.index.get_study("Microsoft.Default", study)
    assert entity.instance_count == 48
    assert entity.series_count == 3
    assert dict(entity.modality_counts) == {"CT": 1, "MR": 1, "SEG": 1}
    for uid in series:
        assert (await services.index.get_series("Microsoft.Default", study, uid)).instance_count == 16


async def test_lake_ranged_reads_from_any_offset(client, services):
    data = new_instance()
    assert (await post(client, [data])).status_code == 200
    path = services.layout.instance_path(InstanceKey("Microsoft.Default", *uids(data)[:3]))
    stored = preamble_zeroed(data)
    assert await services.lake.read(path, 0, 10) == stored[:10]
    assert await services.lake.read(path, 128, 4) == b"DICM"
    assert b"".join([chunk async for chunk in services.lake.stream(path, 0, 300)]) == stored[:300]


async def test_a_body_that_fails_after_a_whole_part_closes_that_part(services):
    from io import BytesIO

    from dicom_core.operations.store import ReceivedPart, StoreRequest, store_instances

    data = new_instance()
    part = ReceivedPart("application/dicom", BytesIO(data), len(data))

    async def parts():
        yield part
        raise ConnectionResetError("the client went away")  # before the store of the part could start

    with pytest.raises(ConnectionResetError):
        await store_instances(services, StoreRequest("Microsoft.Default", None, False, "http://testserver/v2"), parts())
    assert part.file.closed
