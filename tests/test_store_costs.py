"""What a STOW costs in storage requests and entity writes: asserted as counts, never as times."""

from __future__ import annotations

from pydicom.uid import generate_uid

from tests.dicom_files import multipart, new_instance, stow_headers

SERIES_SIZE = 50


async def stow_costs(client, services, instances: list[bytes]) -> tuple[int, int, int]:
    """(Table Storage requests, entities written, lake requests) of one STOW-RS request of ``instances``."""
    body, boundary = multipart(instances)
    services.statistics.reset()
    response = await client.post("/v2/studies", content=body, headers=stow_headers(boundary))
    assert response.status_code == 200, response.text
    statistics = services.statistics
    return statistics.requests, statistics.entities_written, statistics.lake_requests


async def test_a_new_series_of_fifty_instances_in_one_request(client, services):
    study, series = generate_uid(), generate_uid()
    instances = [new_instance(study=study, series=series, InstanceNumber=n) for n in range(1, SERIES_SIZE + 1)]
    requests, written, lake = await stow_costs(client, services, instances)
    # Lake: one create-only upload per file.
    assert lake == SERIES_SIZE
    # Table requests: the delete marker twice; the instances' lookup entries in 3 transactions
    # (SOPInstanceUID, SOPClassUID, InstanceNumber) and their entities in 1; the change feed's counter
    # read once and 2 transactions (49 new instances fit one with the counter, whose ETag the second
    # reuses); 13 for the study's and series' 14 lookup entries (one PartitionKey each, the two
    # PatientName words together); the series and the study recounted (read, range, write each); the
    # extended query tags registry, read before the first file and once everything is written.
    assert requests == 2 + 3 + 1 + 3 + 13 + 6 + 2
    # Entities: 150 instance lookup entries and 50 instance entities; 50 feed entries, 50 pointers and
    # the counter twice; 14 study and series lookup entries; the series and the study.
    assert written == 150 + 50 + 102 + 14 + 2


async def test_a_hundred_instances_announce_in_three_feed_transactions(client, services):
    study, series = generate_uid(), generate_uid()
    instances = [new_instance(study=study, series=series, InstanceNumber=n) for n in range(1, 2 * SERIES_SIZE + 1)]
    requests, written, lake = await stow_costs(client, services, instances)
    assert lake == 2 * SERIES_SIZE
    # As above, but the change feed takes 49 + 49 + 2 instances (it took 33 + 33 + 33 + 1, each with
    # its own counter read); the lookup and instance transactions still hold all 100.
    assert requests == 2 + 3 + 1 + (1 + 3) + 13 + 6 + 2
    assert written == 300 + 100 + (200 + 3) + 14 + 2


async def test_a_study_stored_series_by_series_writes_its_study_lookup_entries_once(client, services):
    study, series, other_series = generate_uid(), generate_uid(), generate_uid()
    first = [new_instance(study=study, series=series, InstanceNumber=n) for n in range(1, 4)]
    await stow_costs(client, services, first)
    second = [new_instance(study=study, series=other_series, InstanceNumber=n) for n in range(1, 4)]
    requests, written, _ = await stow_costs(client, services, second)
    # The delete marker twice, 3 instance lookup transactions, 1 of entities, the feed's counter read
    # and 1 transaction (3 entries, 3 pointers, the counter), the recounts, the tag registry twice. The
    # study's entity says a store wrote its lookup entries for these attributes and this modality:
    # only the new series' 4 are written.
    assert requests == 2 + 3 + 1 + 2 + 4 + 6 + 2
    assert written == 9 + 3 + 7 + 4 + 2
    # A third request into the first series writes no study or series lookup entry at all.
    third = [new_instance(study=study, series=series, InstanceNumber=n) for n in range(4, 7)]
    requests, written, _ = await stow_costs(client, services, third)
    assert requests == 2 + 3 + 1 + 2 + 0 + 6 + 2
    assert written == 9 + 3 + 7 + 0 + 2
