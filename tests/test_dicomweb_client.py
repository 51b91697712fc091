"""dicomweb-client end to end: the server started as the README starts it, used only through the client.

A corpus of four patients' studies (pydicom's CT and MR with new UIDs, the multi-frame Enhanced MR
``emri_small`` as stored and in JPEG 2000, pydicom's JPEG 2000 NM and RLE colour files) is stored once with
``store_instances``; every search, retrieve, metadata, frame, rendered and bulk data method of the client is
then checked against the datasets that were sent. Delete runs on its own partition.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid
from requests import HTTPError

from tests.environments import isolated_settings
from tests.server import running_server

AS_STORED = (("application/dicom", "*"),)


@dataclass(frozen=True)
class Instance:
    """One instance of the corpus: the dataset sent, and where it sits."""

    dataset: Dataset

    @property
    def study(self) -> str:
        """Its StudyInstanceUID."""
        return self.dataset.StudyInstanceUID

    @property
    def series(self) -> str:
        """Its SeriesInstanceUID."""
        return self.dataset.SeriesInstanceUID

    @property
    def sop(self) -> str:
        """Its SOPInstanceUID."""
        return self.dataset.SOPInstanceUID


def relabel(template: str, study: str, series: str, number: int, **attributes) -> Instance:
    """A pydicom test file with new SOP, series and study UIDs and the given attributes."""
    dataset = pydicom.dcmread(get_testdata_file(template))
    dataset.StudyInstanceUID = study
    dataset.SeriesInstanceUID = series
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.InstanceNumber = number
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    return Instance(dataset)


def patient(name: str, patient_id: str, date: str, description: str, accession: str) -> dict[str, str]:
    """The patient and study attributes of one study."""
    return {
        "PatientName": name,
        "PatientID": patient_id,
        "StudyDate": date,
        "StudyDescription": description,
        "AccessionNumber": accession,
    }


def build_corpus() -> list[Instance]:
    """Four patients, four studies, eight series, 16 instances: single and multi-frame, native, JPEG 2000 and RLE."""
    corpus: list[Instance] = []
    chest = patient("Müller^Jürgen", "E2E-MUL", "20240105", "Chest CT", "ACC-101")
    study = generate_uid()
    for series_number, count in ((1, 3), (2, 2)):
        series = generate_uid()
        corpus += [
            relabel(
                "CT_small.dcm",
                study,
                series,
                n + 1,
                SeriesNumber=series_number,
                SeriesDescription=f"axial {series_number}",
                **chest,
            )
            for n in range(count)
        ]
    head = patient("Dupont^Jean-Loup", "E2E-DUP", "20240210", "Head MR", "ACC-202")
    study, series = generate_uid(), generate_uid()
    corpus += [relabel("MR_small.dcm", study, series, n + 1, SeriesNumber=1, SeriesDescription="T1", **head) for n in range(3)]
    enhanced = patient("Smith^Anna", "E2E-SMI", "20240315", "Enhanced MR", "ACC-303")
    study = generate_uid()
    corpus.append(relabel("emri_small.dcm", study, generate_uid(), 1, SeriesNumber=1, SeriesDescription="native", **enhanced))
    corpus.append(
        relabel("emri_small_jpeg_2k_lossless.dcm", study, generate_uid(), 1, SeriesNumber=2, SeriesDescription="j2k", **enhanced)
    )
    corpus.append(relabel("JPEG2000.dcm", study, generate_uid(), 1, SeriesNumber=3, SeriesDescription="nm", **enhanced))
    colour = patient("Lestrade^G", "E2E-LES", "20231224", "Colour", "ACC-404")
    study = generate_uid()
    for series_number in (1, 2):
        series = generate_uid()
        corpus += [
            relabel("SC_rgb_rle_2frame.dcm", study, series, n + 1, SeriesNumber=series_number, SeriesDescription="rle", **colour)
            for n in range(3 if series_number == 1 else 2)
        ]
    return corpus


@dataclass
class Archive:
    """The running server, its client, and what was stored in it."""

    url: str
    client: DICOMwebClient
    corpus: list[Instance]

    def by_sop(self, sop: str) -> Instance:
        """The instance sent with this SOPInstanceUID."""
        return next(instance for instance in self.corpus if instance.sop == sop)

    def first(self, transfer_syntax: str, frames: int | None = None) -> Instance:
        """The first instance sent in this transfer syntax (and with this many frames)."""
        return next(
            instance
            for instance in self.corpus
            if instance.dataset.file_meta.TransferSyntaxUID == transfer_syntax
            and (frames is None or int(instance.dataset.get("NumberOfFrames", 1)) == frames)
        )


@pytest.fixture(scope="module")
def archive(azurite_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """One server (``python -m dicom_core serve``) for the module, with the corpus stored through the client."""
    settings = isolated_settings(azurite_server.connection_string, workspace="e2e", service="dicomweb-client")
    log = tmp_path_factory.mktemp("dicomweb-client") / "server.log"
    with running_server(settings, log) as (url, _):
        corpus = build_corpus()
        client = DICOMwebClient(url)
        half = len(corpus) // 2
        for batch in (corpus[:half], corpus[half:]):
            response = client.store_instances([instance.dataset for instance in batch])
            stored = {item.ReferencedSOPInstanceUID for item in response.ReferencedSOPSequence}
            assert stored == {instance.sop for instance in batch}
            assert "FailedSOPSequence" not in response
        yield Archive(url, client, corpus)


def values(matches: list[dict], tag: str) -> set[str]:
    """The first value of ``tag`` in each match of a search."""
    return {match[tag]["Value"][0] for match in matches}


def first_value(match: dict, tag: str) -> Any:
    """The first value of ``tag`` in one DICOM JSON object."""
    return match[tag]["Value"][0]


# -- search ------------------------------------------------------------------------------------


def test_study_search_answers_match_the_corpus(archive: Archive) -> None:
    client, corpus = archive.client, archive.corpus
    studies = client.search_for_studies(get_remaining=True)
    assert values(studies, "0020000D") == {instance.study for instance in corpus}
    for match in studies:
        members = [instance for instance in corpus if instance.study == first_value(match, "0020000D")]
        sent = members[0].dataset
        assert first_value(match, "00100020") == sent.PatientID
        assert first_value(match, "00100010")["Alphabetic"] == str(sent.PatientName)
        assert first_value(match, "00080020") == sent.StudyDate
        assert first_value(match, "00080050") == sent.AccessionNumber
        assert first_value(match, "00201208") == len(members)
        assert first_value(match, "00201206") == len({instance.series for instance in members})
        assert set(match["00080061"]["Value"]) == {instance.dataset.Modality for instance in members}


@pytest.mark.parametrize(
    ("filters", "fuzzy", "patient_ids"),
    [
        ({"PatientID": "E2E-DUP"}, None, {"E2E-DUP"}),
        ({"PatientName": "mül*"}, None, {"E2E-MUL"}),
        ({"PatientName": "*an*"}, None, {"E2E-DUP", "E2E-SMI"}),
        ({"PatientName": "jean"}, True, {"E2E-DUP"}),
        ({"PatientName": "jur mu"}, True, {"E2E-MUL"}),
        ({"StudyDate": "20240101-20240228"}, None, {"E2E-MUL", "E2E-DUP"}),
        ({"StudyDate": "-20231231"}, None, {"E2E-LES"}),
        ({"ModalitiesInStudy": "MR"}, None, {"E2E-DUP", "E2E-SMI"}),
        ({"AccessionNumber": "ACC-?0?"}, None, {"E2E-MUL", "E2E-DUP", "E2E-SMI", "E2E-LES"}),
        ({"StudyDescription": "*MR"}, None, {"E2E-DUP", "E2E-SMI"}),
        ({"PatientID": "nobody"}, None, set()),
    ],
)
def test_study_search_filters(archive: Archive, filters: dict[str, str], fuzzy: bool | None, patient_ids: set[str]) -> None:
    studies = archive.client.search_for_studies(search_filters=filters, fuzzymatching=fuzzy, get_remaining=True)
    assert values(studies, "00100020") == patient_ids


def test_includefield_adds_attributes(archive: Archive) -> None:
    client = archive.client
    [study] = client.search_for_studies(search_filters={"PatientID": "E2E-MUL"}, fields=["StudyDescription", "00100040"])
    assert first_value(study, "00081030") == "Chest CT"
    assert "00100040" in study  # PatientSex, empty or not, is returned when asked for
    series = client.search_for_series(search_filters={"Modality": "CT"}, fields=["SeriesDescription"])
    assert {first_value(match, "0008103E") for match in series} == {"axial 1", "axial 2"}
    enhanced = archive.first(ExplicitVRLittleEndian, frames=10)
    [instance] = client.search_for_instances(
        enhanced.study, enhanced.series, fields=["NumberOfFrames", "Rows", "Columns"], search_filters={"InstanceNumber": "1"}
    )
    assert first_value(instance, "00280008") == 10
    assert (first_value(instance, "00280010"), first_value(instance, "00280011")) == (64, 64)


def test_series_search_at_every_level(archive: Archive) -> None:
    client, corpus = archive.client, archive.corpus
    every = client.search_for_series(limit=3, get_remaining=True)
    assert values(every, "0020000E") == {instance.series for instance in corpus}
    assert len(every) == len({instance.series for instance in corpus})  # paging sees each series once
    for match in every:
        members = [instance for instance in corpus if instance.series == first_value(match, "0020000E")]
        assert first_value(match, "00080060") == members[0].dataset.Modality
        assert first_value(match, "00201209") == len(members)
        assert first_value(match, "0020000D") == members[0].study
    study = archive.first(ExplicitVRLittleEndian, frames=10).study
    in_study = client.search_for_series(study_instance_uid=study, get_remaining=True)
    assert values(in_study, "0020000E") == {instance.series for instance in corpus if instance.study == study}
    numbered = client.search_for_series(study_instance_uid=study, search_filters={"SeriesNumber": "002"})
    assert values(numbered, "0008103E") == {"j2k"}
    mr = client.search_for_series(search_filters={"Modality": "MR", "PatientName": "smith*"}, get_remaining=True)
    assert values(mr, "0008103E") == {"native", "j2k"}


def test_instance_search_at_every_level_with_paging(archive: Archive) -> None:
    client, corpus = archive.client, archive.corpus
    every = client.search_for_instances(limit=4, get_remaining=True)
    assert sorted(first_value(match, "00080018") for match in every) == sorted(instance.sop for instance in corpus)
    page = client.search_for_instances(limit=5, offset=5)
    assert len(page) == 5 and values(page, "00080018") < values(every, "00080018")
    first_page = client.search_for_instances(limit=5)
    assert not values(first_page, "00080018") & values(page, "00080018")
    ct = corpus[0]
    in_study = client.search_for_instances(study_instance_uid=ct.study, limit=2, get_remaining=True)
    assert values(in_study, "00080018") == {instance.sop for instance in corpus if instance.study == ct.study}
    in_series = client.search_for_instances(ct.study, ct.series, get_remaining=True)
    assert values(in_series, "00080018") == {instance.sop for instance in corpus if instance.series == ct.series}
    for match in in_series:
        sent = archive.by_sop(first_value(match, "00080018")).dataset
        assert first_value(match, "00080016") == sent.SOPClassUID
        assert first_value(match, "00200013") == sent.InstanceNumber
    enhanced_mr = "1.2.840.10008.5.1.4.1.1.4.1"
    by_class = client.search_for_instances(search_filters={"SOPClassUID": enhanced_mr}, get_remaining=True)
    assert values(by_class, "00080018") == {instance.sop for instance in corpus if instance.dataset.SOPClassUID == enhanced_mr}
    third = client.search_for_instances(search_filters={"InstanceNumber": "3"}, get_remaining=True)
    assert values(third, "00080018") == {instance.sop for instance in corpus if instance.dataset.InstanceNumber == 3}


# -- retrieve ----------------------------------------------------------------------------------


def assert_same_instance(received: Dataset, sent: Dataset, *, as_stored: bool) -> None:
    """Every attribute as sent; pixel data byte for byte as stored, or the same pixels once decoded."""
    for element in sent:
        if element.tag == 0x7FE00010:
            continue
        assert received[element.tag].value == element.value, f"{element.keyword or element.tag} differs"
    if as_stored:
        assert received.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
        assert received.PixelData == sent.PixelData
    else:
        assert received.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert numpy.array_equal(received.pixel_array, sent.pixel_array)


def test_retrieve_study_series_and_instance(archive: Archive) -> None:
    client, corpus = archive.client, archive.corpus
    study = archive.first(JPEG2000Lossless, frames=10).study
    members = {instance.sop: instance for instance in corpus if instance.study == study}
    received = client.retrieve_study(study)  # transcoded to Explicit VR Little Endian by default
    assert {dataset.SOPInstanceUID for dataset in received} == set(members)
    for dataset in received:
        assert_same_instance(dataset, members[dataset.SOPInstanceUID].dataset, as_stored=False)
    assert {dataset.SOPInstanceUID for dataset in client.iter_study(study, media_types=AS_STORED)} == set(members)
    rle = next(instance for instance in corpus if instance.dataset.SeriesDescription == "rle")
    series = client.retrieve_series(rle.study, rle.series, media_types=AS_STORED)
    in_series = {instance.sop: instance for instance in corpus if instance.series == rle.series}
    assert {dataset.SOPInstanceUID for dataset in series} == set(in_series)
    for dataset in series:
        assert_same_instance(dataset, in_series[dataset.SOPInstanceUID].dataset, as_stored=True)
    for instance in (archive.first(JPEG2000Lossless, frames=10), corpus[0]):
        stored = client.retrieve_instance(instance.study, instance.series, instance.sop, media_types=AS_STORED)
        assert_same_instance(stored, instance.dataset, as_stored=True)
    j2k = archive.first(JPEG2000Lossless, frames=10)
    # retrieve_instance asks for the file as stored unless told otherwise.
    decoded = client.retrieve_instance(
        j2k.study, j2k.series, j2k.sop, media_types=(("application/dicom", ExplicitVRLittleEndian),)
    )
    assert_same_instance(decoded, j2k.dataset, as_stored=False)
    with pytest.raises(HTTPError) as missing:
        client.retrieve_instance(j2k.study, j2k.series, generate_uid())
    assert missing.value.response.status_code == 404


def assert_metadata_matches(model: dict, sent: Dataset) -> None:
    """A DICOM JSON model describes the dataset sent: every value, and a BulkDataURI for the pixels."""
    received = Dataset.from_json(model, bulk_data_uri_handler=lambda *_: b"")
    for element in sent:
        if element.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            continue
        assert element.tag in received, f"{element.keyword or element.tag} is missing from the metadata"
        assert received[element.tag].value == element.value, f"{element.keyword or element.tag} differs"
    assert model["7FE00010"]["BulkDataURI"]


def test_metadata_at_every_level(archive: Archive) -> None:
    client, corpus = archive.client, archive.corpus
    study = corpus[0].study
    models = client.retrieve_study_metadata(study)
    assert len(models) == sum(instance.study == study for instance in corpus)
    for model in models:
        assert_metadata_matches(model, archive.by_sop(first_value(model, "00080018")).dataset)
    enhanced = archive.first(ExplicitVRLittleEndian, frames=10)
    [model] = client.retrieve_series_metadata(enhanced.study, enhanced.series)
    assert_metadata_matches(model, enhanced.dataset)
    assert first_value(model, "00280008") == 10
    model = client.retrieve_instance_metadata(corpus[5].study, corpus[5].series, corpus[5].sop)
    assert_metadata_matches(model, corpus[5].dataset)


# -- frames, rendered, bulk data ---------------------------------------------------------------


def native_frames(dataset: Dataset) -> list[bytes]:
    """The frames of native (uncompressed) pixel data."""
    count = int(dataset.get("NumberOfFrames", 1))
    size = len(dataset.PixelData) // count
    return [dataset.PixelData[index * size : (index + 1) * size] for index in range(count)]


def test_frames_in_each_media_type(archive: Archive) -> None:
    client = archive.client
    native = archive.first(ExplicitVRLittleEndian, frames=10)
    expected = native_frames(native.dataset)
    frames = client.retrieve_instance_frames(native.study, native.series, native.sop, [1, 5, 10])
    assert frames == [expected[0], expected[4], expected[9]]
    octets = client.retrieve_instance_frames(
        native.study, native.series, native.sop, [2], media_types=("application/octet-stream",)
    )
    assert octets == [expected[1]]
    assert list(client.iter_instance_frames(native.study, native.series, native.sop, [3, 4])) == expected[2:4]

    j2k = archive.first(JPEG2000Lossless, frames=10)
    encapsulated = list(pydicom.encaps.generate_frames(j2k.dataset.PixelData, number_of_frames=10))
    as_stored = client.retrieve_instance_frames(
        j2k.study, j2k.series, j2k.sop, [7], media_types=(("image/jp2", JPEG2000Lossless),)
    )
    assert as_stored == [encapsulated[6]]
    decoded = client.retrieve_instance_frames(
        j2k.study, j2k.series, j2k.sop, [7], media_types=(("application/octet-stream", ExplicitVRLittleEndian),)
    )
    assert decoded == [j2k.dataset.pixel_array[6].astype(j2k.dataset.pixel_array.dtype).tobytes()]
    with pytest.raises(HTTPError) as beyond:
        client.retrieve_instance_frames(native.study, native.series, native.sop, [11])
    assert beyond.value.response.status_code == 404


def correlation(image: bytes, pixels: numpy.ndarray) -> float:
    """How closely a rendered image follows the stored pixel values (Pearson correlation)."""
    rendered = numpy.asarray(Image.open(io.BytesIO(image)).convert("L"), dtype=numpy.float64)
    assert rendered.shape == pixels.shape[:2]
    return float(numpy.corrcoef(rendered.ravel(), pixels.astype(numpy.float64).ravel())[0, 1])


def test_rendered_instance_and_frames(archive: Archive) -> None:
    client = archive.client
    ct = archive.corpus[0]
    png = client.retrieve_instance_rendered(ct.study, ct.series, ct.sop, media_types=("image/png",))
    assert Image.open(io.BytesIO(png)).format == "PNG"
    assert correlation(png, ct.dataset.pixel_array) > 0.9
    jpeg = client.retrieve_instance_rendered(ct.study, ct.series, ct.sop)
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
    j2k = archive.first(JPEG2000Lossless, frames=10)
    frame = client.retrieve_instance_frames_rendered(j2k.study, j2k.series, j2k.sop, [4], media_types=("image/png",))
    assert correlation(frame, j2k.dataset.pixel_array[3]) > 0.9


def test_bulk_data_from_the_metadata(archive: Archive) -> None:
    client = archive.client
    ct = archive.corpus[0]
    model = client.retrieve_instance_metadata(ct.study, ct.series, ct.sop)
    uri = model["7FE00010"]["BulkDataURI"]
    assert client.retrieve_bulkdata(uri) == [ct.dataset.PixelData]
    assert client.retrieve_bulkdata(uri, byte_range=(100, 199)) == [ct.dataset.PixelData[100:200]]
    assert b"".join(client.iter_bulkdata(uri)) == ct.dataset.PixelData


# -- delete ------------------------------------------------------------------------------------


def test_delete_instance_series_and_study(archive: Archive) -> None:
    """On a partition of its own, so the other tests' corpus is untouched."""
    client = DICOMwebClient(f"{archive.url}/partitions/e2e-delete")
    study, first, second = generate_uid(), generate_uid(), generate_uid()
    who = patient("Gone^Soon", "E2E-DEL", "20240401", "Deleted", "ACC-505")
    instances = [relabel("CT_small.dcm", study, series, n + 1, **who) for series in (first, second) for n in range(2)]
    client.store_instances([instance.dataset for instance in instances])
    assert archive.client.search_for_studies(search_filters={"PatientID": "E2E-DEL"}) == []  # other partition

    client.delete_instance(study, first, instances[0].sop)
    assert values(client.search_for_instances(study, first), "00080018") == {instances[1].sop}
    with pytest.raises(HTTPError) as gone:
        client.retrieve_instance(study, first, instances[0].sop)
    assert gone.value.response.status_code == 404
    client.delete_series(study, second)
    assert values(client.search_for_series(study), "0020000E") == {first}
    [match] = client.search_for_studies(search_filters={"PatientID": "E2E-DEL"})
    assert (first_value(match, "00201206"), first_value(match, "00201208")) == (1, 1)
    client.delete_study(study)
    assert client.search_for_studies(search_filters={"PatientID": "E2E-DEL"}) == []
    with pytest.raises(HTTPError) as deleted:
        client.delete_study(study)
    assert deleted.value.response.status_code == 404
