"""QIDO-RS against a real Azurite: resources, matching, results, errors, and what the index reads."""

from __future__ import annotations

import io
import urllib.parse

import pydicom
import pytest

from dicom_core.dicom.levels import Level
from dicom_core.dicom.query import MAX_LIMIT
from tests.dicom_files import minimal_instance, multipart, new_instance, stow_headers

CT = "1.2.840.10008.5.1.4.1.1.2"


async def store(client, instances: list[bytes], url: str = "/v2/studies", method: str = "POST") -> None:
    for start in range(0, len(instances), 50):
        body, boundary = multipart(instances[start : start + 50])
        response = await client.request(method, url, content=body, headers=stow_headers(boundary))
        assert response.status_code == 200, response.text


def uids_of(data: bytes) -> tuple[str, str, str]:
    dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID), str(dataset.SOPInstanceUID)


def values(match: dict, tag: str) -> list:
    return match.get(tag, {}).get("Value", [])


async def found(client, url: str, tag: str, **params) -> list:
    response = await client.get(url, params=params)
    assert response.status_code == 200, f"{url} {params}: {response.text}"
    assert response.headers["content-type"] == "application/dicom+json"
    return sorted(value for match in response.json() for value in values(match, tag))


# -- a small corpus whose every answer is known ----------------------------------------------------

PEOPLE = {
    # name: (PatientID, PatientName, StudyDate, StudyTime, Modality, extra attributes)
    "muller": ("P-1", "Müller^Jürgen", "20040105", "083000", "CT", {"AccessionNumber": "ACC1", "PatientSex": "M"}),
    "dupont": ("P-2", "Dupont^Jean-Loup^^Dr.", "20100611", "143015.25", "MR", {"AccessionNumber": "ACC2", "PatientSex": "M"}),
    "astrom": ("P-3", "Åström^Åsa", "20100612", "235959", "PT", {"AccessionNumber": "XYZ", "PatientSex": "F"}),
    "yamada": ("P-4", "Yamada^Tarou=山田^太郎=やまだ^たろう", "19991231", "0700", "CT", {"PatientSex": "M"}),
    "odata": ("x' or PartitionKey ne 'y", "Odata^Test", "20200101", "120000", "CT", {"AccessionNumber": "A/B#D%F|G"}),
}


@pytest.fixture
async def corpus(client) -> dict[str, tuple[str, str, str]]:
    """One study per person, one series, one instance; returns each person's UIDs."""
    made, instances = {}, []
    for person, (patient_id, name, date, time, modality, extra) in PEOPLE.items():
        data = new_instance(
            patient_id=patient_id,
            modality=modality,
            PatientName=name,
            StudyDate=date,
            StudyTime=time,
            StudyDescription=f"{modality} of {person}",
            SeriesDescription=f"series of {person}",
            ReferringPhysicianName="Welby^Marcus",
            SpecificCharacterSet="ISO_IR 192",
            AcquisitionDateTime=f"{date}{time[:4]}",
            **extra,
        )
        made[person] = uids_of(data)
        instances.append(data)
    await store(client, instances)
    return made


# (resource, query, persons whose study matches): PS3.4 C.2.2.2 rules, one row each.
MATCHING = [
    ("/v2/studies", {}, {"muller", "dupont", "astrom", "yamada", "odata"}),
    ("/v2/studies", {"PatientID": "P-1"}, {"muller"}),
    ("/v2/studies", {"00100020": "P-2"}, {"dupont"}),
    ("/v2/studies", {"PatientID": "P-*"}, {"muller", "dupont", "astrom", "yamada"}),
    ("/v2/studies", {"PatientID": "P-?"}, {"muller", "dupont", "astrom", "yamada"}),
    ("/v2/studies", {"PatientID": "*-3"}, {"astrom"}),
    ("/v2/studies", {"PatientID": "p-1"}, set()),  # text other than names is case-sensitive
    ("/v2/studies", {"PatientID": "x' or PartitionKey ne 'y"}, {"odata"}),  # OData syntax is matched literally
    ("/v2/studies", {"PatientID": "' or PartitionKey ne '"}, set()),
    ("/v2/studies", {"AccessionNumber": "A/B#D%F|G"}, {"odata"}),  # key-unsafe characters
    ("/v2/studies", {"AccessionNumber": "A/B*"}, {"odata"}),
    ("/v2/studies", {"AccessionNumber": "ACC*"}, {"muller", "dupont"}),
    ("/v2/studies", {"PatientName": "muller^jurgen"}, {"muller"}),  # case and accents do not matter
    ("/v2/studies", {"PatientName": "MÜLLER^JÜRGEN"}, {"muller"}),
    ("/v2/studies", {"PatientName": "mul*"}, {"muller"}),
    ("/v2/studies", {"PatientName": "*jean*"}, {"dupont"}),
    ("/v2/studies", {"PatientName": "d?pont*"}, {"dupont"}),
    ("/v2/studies", {"PatientName": "Dupont"}, set()),  # single value matching is the whole name
    ("/v2/studies", {"PatientName": "astrom^asa"}, {"astrom"}),
    ("/v2/studies", {"PatientName": "山田*"}, {"yamada"}),  # ideographic group
    ("/v2/studies", {"PatientName": "やまだ^たろう"}, {"yamada"}),  # phonetic group
    ("/v2/studies", {"PatientName": "yamada^tarou=山田*"}, {"yamada"}),
    ("/v2/studies", {"PatientName": "jean", "fuzzymatching": "true"}, {"dupont"}),  # prefix of any component
    ("/v2/studies", {"PatientName": "lou", "fuzzymatching": "true"}, {"dupont"}),  # words of a component
    ("/v2/studies", {"PatientName": "jur mu", "fuzzymatching": "true"}, {"muller"}),
    ("/v2/studies", {"PatientName": "asa", "fuzzymatching": "true"}, {"astrom"}),
    ("/v2/studies", {"PatientName": "jean", "fuzzymatching": "false"}, set()),
    ("/v2/studies", {"ReferringPhysicianName": "WELBY*"}, {"muller", "dupont", "astrom", "yamada", "odata"}),
    ("/v2/studies", {"StudyDate": "20100611"}, {"dupont"}),
    ("/v2/studies", {"StudyDate": "20100101-20101231"}, {"dupont", "astrom"}),
    ("/v2/studies", {"StudyDate": "20100612-"}, {"astrom", "odata"}),
    ("/v2/studies", {"StudyDate": "-20040105"}, {"muller", "yamada"}),
    ("/v2/studies", {"StudyTime": "14"}, {"dupont"}),  # a partial time is the hour it names
    ("/v2/studies", {"StudyTime": "0700-0830"}, {"muller", "yamada"}),
    ("/v2/studies", {"StudyTime": "143015.2-143015.3"}, {"dupont"}),
    ("/v2/studies", {"StudyTime": "2359-"}, {"astrom"}),
    ("/v2/studies", {"ModalitiesInStudy": "CT"}, {"muller", "yamada", "odata"}),
    ("/v2/studies", {"ModalitiesInStudy": "MR\\PT"}, {"dupont", "astrom"}),
    ("/v2/studies", {"ModalitiesInStudy": "MR,PT"}, {"dupont", "astrom"}),
    ("/v2/studies", {"PatientSex": "F"}, {"astrom"}),
    ("/v2/studies", {"StudyDescription": "CT of *"}, {"muller", "yamada", "odata"}),
    ("/v2/studies", {"StudyDescription": "*of mull*"}, {"muller"}),
    ("/v2/studies", {"PatientID": "P-*", "PatientSex": "M", "StudyDate": "20000101-"}, {"muller", "dupont"}),
    ("/v2/studies", {"PatientID": ""}, {"muller", "dupont", "astrom", "yamada", "odata"}),  # return, don't match
    ("/v2/studies", {"PatientName": "*"}, {"muller", "dupont", "astrom", "yamada", "odata"}),
    ("/v2/series", {"Modality": "MR"}, {"dupont"}),
    ("/v2/series", {"Modality": "C?"}, {"muller", "yamada", "odata"}),
    ("/v2/series", {"SeriesDescription": "series of a*"}, {"astrom"}),
    ("/v2/series", {"PatientName": "d*", "Modality": "MR"}, {"dupont"}),
    ("/v2/series", {"PatientName": "d*", "Modality": "CT"}, set()),
    ("/v2/instances", {"PatientID": "P-4"}, {"yamada"}),
    ("/v2/instances", {"SOPClassUID": CT, "PatientSex": "F"}, {"astrom"}),
    ("/v2/instances", {"AcquisitionDateTime": "2010"}, {"dupont", "astrom"}),
    ("/v2/instances", {"AcquisitionDateTime": "201006111430-20100612"}, {"dupont", "astrom"}),
    ("/v2/instances", {"AcquisitionDateTime": "201006111431-20100612"}, {"astrom"}),
    ("/v2/instances", {"InstanceNumber": "1"}, {"muller", "dupont", "astrom", "yamada", "odata"}),
    ("/v2/instances", {"InstanceNumber": "0001", "Modality": "PT"}, {"astrom"}),
]


async def test_matching_rules(client, corpus):
    study_of = {uids[0]: person for person, uids in corpus.items()}
    for url, params, expected in MATCHING:
        matched = {study_of[uid] for uid in await found(client, url, "0020000D", includefield="0020000D", **params)}
        assert matched == expected, f"{url}?{urllib.parse.urlencode(params)}"


async def test_uid_keys_and_lists_and_every_resource(client, corpus):
    study, series, sop = corpus["dupont"]
    other = corpus["astrom"]
    assert await found(client, "/v2/studies", "0020000D", StudyInstanceUID=study) == [study]
    both = sorted([study, other[0]])
    assert await found(client, "/v2/studies", "0020000D", StudyInstanceUID=f"{study}\\{other[0]}") == both
    assert await found(client, "/v2/studies", "0020000D", StudyInstanceUID=f"{study},{other[0]}") == both
    assert await found(client, "/v2/series", "0020000E", SeriesInstanceUID=series) == [series]
    assert await found(client, "/v2/instances", "00080018", SOPInstanceUID=sop) == [sop]
    assert await found(client, f"/v2/studies/{study}/series", "0020000E") == [series]
    assert await found(client, f"/v2/studies/{study}/instances", "00080018") == [sop]
    assert await found(client, f"/v2/studies/{study}/series/{series}/instances", "00080018") == [sop]
    assert await found(client, f"/v2/studies/{study}/instances", "00080018", SOPInstanceUID=other[2]) == []
    assert await found(client, f"/v2/studies/{study}/series", "0020000E", Modality="CT") == []
    assert await found(client, f"/v2/studies/{other[0]}/series/{series}/instances", "00080018") == []
    # Partitions: nothing stored in one is visible through another.
    assert await found(client, "/v2/partitions/other/studies", "0020000D") == []
    await store(client, [new_instance(patient_id="P-1")], url="/v2/partitions/other/studies")
    assert len(await found(client, "/v2/partitions/other/studies", "0020000D", PatientID="P-1")) == 1
    assert len(await found(client, "/v2/partitions/other/instances", "00080018")) == 1
    assert await found(client, "/v2/studies", "0020000D", PatientID="P-1") == [corpus["muller"][0]]


ERRORS = [
    ("/v2/studies", {"Manufacturer": "X"}, "Manufacturer (00080070) is not a supported matching key"),
    ("/v2/studies", {"NoSuchKeyword": "X"}, "'NoSuchKeyword' is neither a DICOM keyword nor a tag"),
    ("/v2/studies", {"Modality": "CT"}, "Modality is a series-level key"),
    ("/v2/series", {"SOPClassUID": CT}, "SOPClassUID is an instance-level key"),
    ("/v2/studies", {"StudyDate": "2010"}, "'2010' is not a valid DA value"),
    ("/v2/studies", {"StudyDate": "20100231"}, "not a calendar date"),
    ("/v2/studies", {"StudyDate": "20100101-20000101"}, "starts after it ends"),
    ("/v2/studies", {"StudyDate": "2010*"}, "is not a valid DA value"),
    ("/v2/studies", {"StudyTime": "2500"}, "not a valid time of day"),
    ("/v2/instances", {"AcquisitionDateTime": "2010+0100"}, "time zone offset"),
    ("/v2/studies", {"StudyInstanceUID": "1.2.abc"}, "is not a valid UID"),
    ("/v2/studies", {"StudyInstanceUID": "1.2.*"}, "UIDs cannot hold wildcards"),
    ("/v2/series", {"SeriesNumber": "1*"}, "is not an integer"),
    ("/v2/studies", {"PatientID": "a", "00100020": "b"}, "PatientID is given more than once"),
    ("/v2/studies", {"limit": "-1"}, "limit='-1' is not a non-negative integer"),
    ("/v2/studies", {"limit": "0"}, "limit=0"),
    ("/v2/studies", {"offset": "x"}, "offset='x'"),
    ("/v2/studies", {"offset": "100001"}, "larger than the maximum 100000"),
    ("/v2/studies", {"fuzzymatching": "yes"}, "fuzzymatching='yes'"),
    ("/v2/studies", {"includefield": "NoSuchKeyword"}, "includefield 'NoSuchKeyword'"),
    ("/v2/studies", {"00400275.00401001": "X"}, "attributes inside sequences are not supported"),
    ("/v2/studies/1.2.x/series", {}, "is not a valid UID"),
]


async def test_bad_queries_are_400_saying_why(client):
    for url, params, message in ERRORS:
        response = await client.get(url, params=params)
        assert response.status_code == 400, f"{url} {params}: {response.status_code}"
        assert message in response.json()["message"], response.json()["message"]
    response = await client.get("/v2/studies", headers={"Accept": "application/dicom+xml"})
    assert response.status_code == 406


async def test_default_attributes_counts_and_includefield(client):
    study = "1.2.826.0.1.3680043.8.498.1"
    first = [new_instance(study=study, series="1.2.3.1", modality="CT", BodyPartExamined="HEAD") for _ in range(3)]
    second = [new_instance(study=study, series="1.2.3.2", modality="MR", SeriesNumber=2) for _ in range(2)]
    await store(client, first + second)
    [match] = (await client.get("/v2/studies", params={"StudyInstanceUID": study})).json()
    assert values(match, "00201206") == [2]  # NumberOfStudyRelatedSeries
    assert values(match, "00201208") == [5]  # NumberOfStudyRelatedInstances
    assert values(match, "00080061") == ["CT", "MR"]  # ModalitiesInStudy
    assert values(match, "00081190") == [f"http://testserver/v2/studies/{study}"]
    assert values(match, "00080056") == ["ONLINE"]
    assert "00081030" not in match  # StudyDescription is no default study attribute
    assert set(match) >= {"00080020", "00080030", "00080050", "00100010", "00100020", "00100030", "00100040", "00200010"}

    series = (await client.get(f"/v2/studies/{study}/series", params={"Modality": "CT"})).json()
    assert [values(s, "00201209") for s in series] == [[3]]  # NumberOfSeriesRelatedInstances
    assert values(series[0], "00081190") == [f"http://testserver/v2/studies/{study}/series/1.2.3.1"]
    assert "00100020" not in series[0]  # a search within a study leaves study attributes out
    assert "00180015" not in series[0]
    everywhere = (await client.get("/v2/series", params={"StudyInstanceUID": study})).json()
    assert all("00100020" in s and "00201206" in s for s in everywhere)  # /series includes the study's
    with_include = (
        await client.get(f"/v2/studies/{study}/series?includefield=BodyPartExamined&includefield=00100020,StudyDescription")
    ).json()
    assert values(with_include[0], "00180015") == ["HEAD"]
    assert "00100020" in with_include[0] and "00081030" in with_include[0]

    instances = (await client.get(f"/v2/studies/{study}/series/1.2.3.2/instances")).json()
    assert len(instances) == 2
    for instance in instances:
        assert set(instance) >= {"00080016", "00080018", "00080056", "00081190", "00200013", "00280010", "00280011"}
        assert "0020000E" not in instance and "00080060" not in instance
    [one] = (
        await client.get(
            f"/v2/studies/{study}/instances",
            params={"SOPInstanceUID": values(instances[0], "00080018")[0], "includefield": "00200032"},
        )
    ).json()
    assert len(values(one, "00200032")) == 3  # ImagePositionPatient, from the instance's metadata
    assert values(one, "00080060") == ["MR"]  # /studies/{study}/instances includes series attributes
    everything = (await client.get("/v2/instances", params={"StudyInstanceUID": study, "includefield": "all", "limit": 1})).json()
    assert {"00100020", "00201206", "00080060", "00201209", "00200032", "00280030"} <= set(everything[0])
    assert "7FE00010" not in everything[0]  # no bulk data


async def test_paging_order_and_warning(client):
    study = "1.2.826.0.1.3680043.8.498.2"
    instances = [new_instance(study=study, series="1.2.4.1", sop=f"1.2.4.1.{n}", InstanceNumber=n) for n in range(1, 8)]
    await store(client, instances)
    url = f"/v2/studies/{study}/series/1.2.4.1/instances"
    everything = [values(m, "00080018")[0] for m in (await client.get(url)).json()]
    assert everything == sorted(everything)  # instances in UID order
    pages, offset = [], 0
    while True:
        response = await client.get(url, params={"limit": 3, "offset": offset})
        page = [values(m, "00080018")[0] for m in response.json()]
        if not page:
            break
        assert ("warning" in response.headers) == (offset + 3 < 7), (offset, response.headers.get("warning"))
        pages += page
        offset += 3
    assert pages == everything
    response = await client.get(url, params={"limit": 3, "offset": 3})
    assert response.headers["warning"].startswith('299 dicomweb-lake "') and "offset=6" in response.headers["warning"]
    response = await client.get(url, params={"limit": MAX_LIMIT + 1})
    assert len(response.json()) == 7 and "warning" not in response.headers
    assert (await client.get(url, params={"offset": 7})).json() == []
    by_date = [values(m, "00080020")[0] for m in (await client.get("/v2/studies", params={"StudyDate": "19000101-"})).json()]
    assert by_date == sorted(by_date)  # a range-driven search comes in the order of the range


async def test_stale_lookup_entries_are_verified_away(client, services):
    study, series, sop = "1.2.826.0.1.3680043.8.498.3", "1.2.5.1", "1.2.5.1.1"
    await store(client, [new_instance(study=study, series=series, sop=sop, patient_id="OLD", PatientName="Old^Name")])
    assert await found(client, "/v2/studies", "0020000D", PatientID="OLD") == [study]
    # PUT replaces the instance with other attributes: the entries of the old values stay, stale.
    await store(
        client, [new_instance(study=study, series=series, sop=sop, patient_id="NEW", PatientName="New^Name")], method="PUT"
    )
    assert await found(client, "/v2/studies", "0020000D", PatientID="OLD") == []
    assert await found(client, "/v2/studies", "0020000D", PatientName="old*") == []
    assert await found(client, "/v2/studies", "0020000D", PatientID="NEW") == [study]
    # A delete removes primary entities only (issue 5): the lookup entries must not resurrect them.
    await services.index.delete_entry(Level.STUDY, "Microsoft.Default", (study,))
    await services.index.delete_entry(Level.SERIES, "Microsoft.Default", (study, series))
    await services.index.delete_entry(Level.INSTANCE, "Microsoft.Default", (study, series, sop))
    for url, key, params in [
        ("/v2/studies", "0020000D", {"PatientID": "NEW"}),
        ("/v2/series", "0020000E", {"SeriesInstanceUID": series}),
        ("/v2/instances", "00080018", {"SOPInstanceUID": sop}),
        ("/v2/instances", "00080018", {"PatientID": "NEW"}),
    ]:
        assert await found(client, url, key, **params) == [], (url, params)


# -- what the index reads ----------------------------------------------------------------------------

TARGET = {"patient_id": "TARGET-1", "PatientName": "Zweistein^Albrecht", "StudyDate": "20150315", "StudyTime": "101500",
          "AccessionNumber": "TGT-ACC", "modality": "XA", "SeriesDescription": "target series", "InstanceNumber": 4242,
          "AcquisitionDateTime": "20150315101500"}  # fmt: skip


def filler(number: int) -> bytes:
    """One study of one instance that no selective query below matches."""
    return minimal_instance(
        PatientID=f"FILL-{number}", PatientName=f"Filler^Number{number}", StudyDate=f"19{number % 90 + 10:02d}0101",
        StudyTime="090000", AccessionNumber=f"F{number}", Modality="CT", SeriesDescription=f"filler {number}",
        InstanceNumber=number % 7 + 1, PatientSex="O", AcquisitionDateTime="19900101",
    )  # fmt: skip


def selective_queries(study: str, series: str, sop: str) -> list[tuple[str, dict]]:
    return [
        ("/v2/studies", {"PatientID": "TARGET-1"}),
        ("/v2/studies", {"PatientName": "zwei*"}),
        ("/v2/studies", {"PatientName": "albr", "fuzzymatching": "true"}),
        ("/v2/studies", {"StudyDate": "20150301-20150331"}),
        ("/v2/studies", {"StudyTime": "1015"}),
        ("/v2/studies", {"AccessionNumber": "TGT-ACC"}),
        ("/v2/studies", {"ModalitiesInStudy": "XA"}),
        ("/v2/studies", {"StudyInstanceUID": study}),
        ("/v2/series", {"Modality": "XA"}),
        ("/v2/series", {"SeriesDescription": "target*"}),
        ("/v2/series", {"SeriesInstanceUID": series}),
        ("/v2/series", {"PatientID": "TARGET-1"}),
        ("/v2/instances", {"SOPInstanceUID": sop}),
        ("/v2/instances", {"InstanceNumber": "4242"}),
        ("/v2/instances", {"AcquisitionDateTime": "2015"}),
        ("/v2/instances", {"PatientID": "TARGET-1"}),
        (f"/v2/studies/{study}/series", {}),
        (f"/v2/studies/{study}/instances", {}),
        (f"/v2/studies/{study}/series/{series}/instances", {}),
        ("/v2/studies", {"limit": "5"}),  # no key: the first page of the studies table
    ]


async def reads(client, services, url: str, params: dict) -> tuple[int, int, int]:
    services.statistics.reset()
    response = await client.get(url, params=params)
    assert response.status_code == 200, response.text
    return len(response.json()), services.statistics.requests, services.statistics.entities_read


async def test_selective_queries_read_the_same_at_ten_times_the_archive(client, services):
    target = new_instance(**TARGET)
    study, series, sop = uids_of(target)
    await store(client, [target, *(filler(n) for n in range(10))])
    queries = selective_queries(study, series, sop)
    small = [await reads(client, services, url, params) for url, params in queries]
    assert all(matches >= 1 for matches, _, _ in small), small
    await store(client, [filler(n) for n in range(10, 110)])  # 10 times the studies, series and instances
    large = [await reads(client, services, url, params) for url, params in queries]
    for (url, params), before, after in zip(queries, small, large, strict=True):
        assert before == after, f"{url} {params}: (matches, requests, entities) {before} at 11 studies, {after} at 111"
        assert after[2] <= 4 * max(after[0], 1) + 2, f"{url} {params} reads {after[2]} entities for {after[0]} matches"


async def test_a_leading_wildcard_reads_one_lookup_entry_per_name_and_verifies_only_matches(client, services):
    await store(client, [new_instance(**TARGET), *(filler(n) for n in range(20))])
    matches, requests, entities = await reads(client, services, "/v2/studies", {"PatientName": "*stein^alb*"})
    # 21 studies, one name each: 21 lookup entries in one page, then one study entity for the one match.
    assert (matches, requests, entities) == (1, 2, 22)
