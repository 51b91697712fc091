"""A deterministic synthetic corpus of small CT-like instances, cached on disk.

Every instance is pydicom's ``CT_small.dcm`` (128x128, 16-bit, ~39 KB, Explicit VR
Little Endian) with new UIDs and varied patient, study and series attributes. The
same parameters always give the same files, byte for byte, so both servers and every
run store the same data. UIDs are derived from the position in the corpus, not from
its size, so a larger corpus extends a smaller one.

Shape: series of ``series_size`` instances (the last one may be shorter); studies of
1, 2, 3, 1, 2, 3... series; two studies per patient, so the answer to a search by
patient has the same size whatever the size of the archive. ``big_series`` adds one
more study holding a single series of that many instances (for series-level
retrieval), not counted in ``instances``.

``load_or_generate_volume`` makes the viewer scenario's series: one CT series of slices
whose image is CT_small's scaled up by whole pixels (512x512, about 513 KB a file).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from tqdm import tqdm

GENERATOR_VERSION = 2
"""Bump when the generated files change, so that cached corpora are not reused."""

CACHE = Path(__file__).resolve().parent / ".cache"
TEMPLATE = "CT_small.dcm"
TEMPLATE_SIZE = 128  # its rows and columns
VOLUME_STUDY = 1_000_000
"""The study (and patient) number of a volume: beyond any corpus, and a CT study (MODALITY_CYCLE)."""
STUDIES_PER_PATIENT = 2
SERIES_PER_STUDY = (1, 2, 3)
FIRST_STUDY_DATE = datetime.date(2004, 1, 5)

# The first patients get hand-written names: accents, several components (family^given^
# middle^prefix^suffix) and one with ideographic and phonetic groups. Later patients
# combine the family names below with further given names.
NAMED_PATIENTS = (
    "Müller^Jürgen",
    "Núñez^María^José",
    "O'Brien^Seán",
    "Dupont^Jean-Loup^^Dr.",
    "Smith^John^Q^^Jr",
    "Åström^Åsa",
    "Nguyễn^Thị^Minh",
    "Kowalski^Zbigniew",
    "García Márquez^Gabriel",
    "Yamada^Tarou=山田^太郎=やまだ^たろう",
)
FAMILY_NAMES = tuple(name.split("^")[0] for name in NAMED_PATIENTS)
GIVEN_NAMES = (
    "Anna",
    "Björn",
    "Chloé",
    "Dmitri",
    "Élodie",
    "Fatima",
    "Gustav",
    "Hélène",
    "Ingrid",
    "José",
    "Kai",
    "Léa",
    "Marta",
    "Noël",
    "Olga",
    "Pål",
    "Quentin",
    "Renée",
    "Søren",
    "Zoë",
)
MODALITIES = {
    # modality: (SOP Class UID, study descriptions)
    "CT": (
        "1.2.840.10008.5.1.4.1.1.2",
        ("CT CHEST W/O CONTRAST", "CT ABDOMEN PELVIS", "CT HEAD"),
    ),
    "MR": ("1.2.840.10008.5.1.4.1.1.4", ("MR BRAIN W/WO CONTRAST", "MR KNEE LEFT")),
    "PT": ("1.2.840.10008.5.1.4.1.1.128", ("PET WHOLE BODY FDG",)),
}
MODALITY_CYCLE = ("CT", "MR", "CT", "PT")


@dataclass(frozen=True)
class Instance:
    """One stored file of the corpus."""

    sop_instance_uid: str
    path: str
    """Relative to the corpus root."""
    size: int


@dataclass(frozen=True)
class Series:
    """One series; one STOW request stores it."""

    series_instance_uid: str
    modality: str
    series_number: int
    instances: tuple[Instance, ...]


@dataclass(frozen=True)
class Study:
    """One study and the attributes that QIDO searches match."""

    study_instance_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    accession_number: str
    study_description: str
    series: tuple[Series, ...]


@dataclass(frozen=True)
class Corpus:
    """A generated corpus: its files under ``root`` and what they contain."""

    root: Path
    studies: tuple[Study, ...]
    big_series_study: Study | None

    @property
    def all_studies(self) -> tuple[Study, ...]:
        """The studies, then the big-series study if there is one."""
        return self.studies + ((self.big_series_study,) if self.big_series_study else ())

    def series(self) -> Iterator[tuple[Study, Series]]:
        """Every series with its study, big series last."""
        for study in self.all_studies:
            for series in study.series:
                yield study, series

    @property
    def instance_count(self) -> int:
        return sum(len(series.instances) for _, series in self.series())

    @property
    def size(self) -> int:
        """Total bytes of all files."""
        return sum(instance.size for _, series in self.series() for instance in series.instances)

    def path(self, instance: Instance) -> Path:
        return self.root / instance.path

    def warm(self) -> None:
        """Read every file once so that the page cache holds them before a measurement."""
        for _, series in self.series():
            for instance in series.instances:
                self.path(instance).read_bytes()

    def summary(self) -> dict[str, int]:
        return {
            "instances": self.instance_count,
            "series": sum(1 for _ in self.series()),
            "studies": len(self.all_studies),
            "patients": len({study.patient_id for study in self.all_studies}),
            "big_series_instances": len(self.big_series_study.series[0].instances) if self.big_series_study else 0,
            "bytes": self.size,
        }


def load_or_generate(instances: int, series_size: int = 50, big_series: int = 0) -> Corpus:
    """The corpus for these parameters, from the cache or generated into it."""
    if instances < 1 or series_size < 1 or big_series < 0:
        raise ValueError("instances and series size must be positive, big series zero or more")
    root = CACHE / f"v{GENERATOR_VERSION}-i{instances}-s{series_size}-b{big_series}"
    manifest = root / "manifest.json"
    if not manifest.exists():
        plan = _plan(instances, series_size)
        big = (len(plan), math.ceil(len(plan) / STUDIES_PER_PATIENT), big_series) if big_series else None
        _generate(root, _template(TEMPLATE_SIZE), plan, big)
    return _load(root, json.loads(manifest.read_text()))


def load_or_generate_volume(slices: int, size: int) -> Corpus:
    """One CT study of one series of ``slices`` images of ``size`` x ``size`` pixels (a multiple of 128),
    as its ``big_series_study``; its UIDs are apart from every corpus's, so it can be stored beside one."""
    if slices < 1 or size < TEMPLATE_SIZE or size % TEMPLATE_SIZE:
        raise ValueError(f"a volume needs slices and a size that is a multiple of {TEMPLATE_SIZE}")
    root = CACHE / f"v{GENERATOR_VERSION}-volume{slices}-{size}"
    manifest = root / "manifest.json"
    if not manifest.exists():
        _generate(root, _template(size), [], (VOLUME_STUDY, VOLUME_STUDY, slices))
    return _load(root, json.loads(manifest.read_text()))


def _uid(*parts: object) -> str:
    """A deterministic UID (pydicom root + hash of ``parts``).

    The parts are joined with a separator: pydicom hashes its entropy sources concatenated, so
    ("instance", 1, 12, 3) and ("instance", 11, 2, 3) gave one UID (390 duplicates in the corpus of
    20,000 of generator version 1, where Orthanc kept the first of each and answered 404 for the other).
    """
    return generate_uid(entropy_srcs=["dicom-bench|" + "|".join(map(str, parts))])


def _patient_name(patient: int) -> str:
    if patient < len(NAMED_PATIENTS):
        return NAMED_PATIENTS[patient]
    family = FAMILY_NAMES[patient % len(FAMILY_NAMES)]
    given = GIVEN_NAMES[(patient // len(FAMILY_NAMES)) % len(GIVEN_NAMES)]
    return f"{family}^{given}"


def _plan(instances: int, series_size: int) -> list[list[int]]:
    """Instance counts per series, grouped by study."""
    sizes = [min(series_size, instances - start) for start in range(0, instances, series_size)]
    studies: list[list[int]] = []
    while sizes:
        count = SERIES_PER_STUDY[len(studies) % len(SERIES_PER_STUDY)]
        studies.append(sizes[:count])
        sizes = sizes[count:]
    return studies


def _template(size: int) -> Dataset:
    """CT_small as the template of every file; its 128x128 image scaled up by whole pixels to ``size``."""
    template = pydicom.dcmread(get_testdata_file(TEMPLATE))
    template.preamble = b"\0" * 128
    template.SpecificCharacterSet = "ISO_IR 192"
    del template.OtherPatientIDsSequence
    factor = size // int(template.Rows)
    if factor > 1:
        pixels = template.pixel_array
        template.PixelData = numpy.kron(pixels, numpy.ones((factor, factor), dtype=pixels.dtype)).tobytes()
        template.Rows = template.Columns = size
        template.PixelSpacing = [float(spacing) / factor for spacing in template.PixelSpacing]
    return template


def _generate(root: Path, template: Dataset, plan: list[list[int]], big: tuple[int, int, int] | None) -> None:
    """Write the studies of ``plan`` and the ``big`` one (number, patient, instances) with ``manifest.json``
    into ``root``, atomically: via a temporary folder."""
    partial = root.with_name(root.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    studies: list[Study] = []
    with tqdm(total=sum(map(sum, plan)) + (big[2] if big else 0), unit="inst", desc="generating corpus") as progress:
        for number, series_sizes in enumerate(plan):
            studies.append(_write_study(template, partial, number, number // STUDIES_PER_PATIENT, series_sizes, progress))
        big_study = _write_study(template, partial, big[0], big[1], [big[2]], progress) if big else None
    sops = [instance.sop_instance_uid for study in studies for series in study.series for instance in series.instances]
    if len(set(sops)) != len(sops):
        raise RuntimeError(f"the corpus has {len(sops) - len(set(sops))} duplicate SOP Instance UIDs (PS3.5 9 wants them unique)")
    document = {
        "studies": [asdict(study) for study in studies],
        "big_series_study": asdict(big_study) if big_study else None,
    }
    (partial / "manifest.json").write_text(json.dumps(document, ensure_ascii=False))
    partial.rename(root)


def _write_study(
    dataset: Dataset,
    root: Path,
    number: int,
    patient: int,
    series_sizes: list[int],
    progress: tqdm,
) -> Study:
    """Write one study's files, modifying ``dataset`` (the template) in place for each instance."""
    modality = MODALITY_CYCLE[number % len(MODALITY_CYCLE)]
    sop_class, descriptions = MODALITIES[modality]
    study = Study(
        study_instance_uid=_uid("study", number),
        patient_id=f"BENCH{patient:06d}",
        patient_name=_patient_name(patient),
        study_date=(FIRST_STUDY_DATE + datetime.timedelta(days=number * 97 % 7300)).strftime("%Y%m%d"),
        accession_number=f"ACC{number:07d}",
        study_description=descriptions[number % len(descriptions)],
        series=(),
    )
    dataset.PatientID = study.patient_id
    dataset.PatientName = study.patient_name
    dataset.PatientSex = "FM"[patient % 2]
    dataset.PatientBirthDate = f"{1930 + patient % 80}{1 + patient % 12:02d}{1 + patient % 28:02d}"
    dataset.StudyInstanceUID = study.study_instance_uid
    dataset.StudyDate = dataset.SeriesDate = dataset.ContentDate = dataset.AcquisitionDate = study.study_date
    dataset.StudyTime = f"{8 + number % 10:02d}{number % 60:02d}00"
    dataset.StudyID = str(number + 1)
    dataset.AccessionNumber = study.accession_number
    dataset.StudyDescription = study.study_description
    dataset.Modality = modality
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = sop_class
    series_list = []
    for series_index, size in enumerate(series_sizes):
        series_uid = _uid("series", number, series_index)
        dataset.SeriesInstanceUID = series_uid
        dataset.SeriesNumber = series_index + 1
        dataset.SeriesDescription = f"{modality} series {series_index + 1}"
        dataset.FrameOfReferenceUID = _uid("frame-of-reference", number, series_index)
        folder = root / study.study_instance_uid / series_uid
        folder.mkdir(parents=True)
        instances = []
        for index in range(size):
            sop_uid = _uid("instance", number, series_index, index)
            dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = sop_uid
            dataset.InstanceNumber = index + 1
            dataset.ImagePositionPatient = [-50.0, -50.0, -2.5 * index]
            dataset.SliceLocation = -2.5 * index
            path = folder / f"{sop_uid}.dcm"
            dataset.save_as(path, enforce_file_format=True)
            instances.append(Instance(sop_uid, str(path.relative_to(root)), path.stat().st_size))
            progress.update()
        series_list.append(Series(series_uid, modality, series_index + 1, tuple(instances)))
    return replace(study, series=tuple(series_list))


def _load(root: Path, document: dict) -> Corpus:
    def study(entry: dict) -> Study:
        series = tuple(
            Series(
                s["series_instance_uid"],
                s["modality"],
                s["series_number"],
                tuple(Instance(**i) for i in s["instances"]),
            )
            for s in entry["series"]
        )
        return Study(**{**entry, "series": series})

    big = document["big_series_study"]
    return Corpus(root, tuple(study(s) for s in document["studies"]), study(big) if big else None)
