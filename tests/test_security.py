"""Roles on every route of the route table, and the audit log."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace

import pytest

from dicom_core.http.auth import Access, encode_principal, sign_principal
from dicom_core.http.routes import route_table
from dicom_core.settings import Security
from tests.dicom_files import multipart, new_instance, stow_headers

SECRET = "test-secret-not-used-anywhere-else"
ROLE_BELOW = {Access.READ: None, Access.WRITE: "DicomReader", Access.DELETE: "DicomWriter"}
ROLE_NEEDED = {Access.READ: "DicomReader", Access.WRITE: "DicomWriter", Access.DELETE: "DicomOwner"}
SAMPLE_PARAMETERS = {
    "partition": "Microsoft.Default",
    "study": "1.2.3",
    "series": "1.2.4",
    "instance": "1.2.5",
    "frames": "1",
    "path": "7FE00010",
}


@pytest.fixture
def signed_mode(services):
    services.settings = replace(services.settings, security=Security(auth_mode="signed", test_secret=SECRET))


def principal_headers(*roles: str, secret: str = SECRET, object_id: str = "user-oid-1") -> dict[str, str]:
    claims = {"oid": object_id, "name": "Dr. Operator"}
    if roles:
        claims["roles"] = list(roles)
    value = encode_principal(claims)
    return {"X-MS-CLIENT-PRINCIPAL": value, "X-MS-CLIENT-PRINCIPAL-SIGNATURE": sign_principal(value, secret)}


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda match: SAMPLE_PARAMETERS.get(match.group(1), "1"), path)


PROTECTED = [
    (route, method)
    for route in route_table()
    if route.access is not Access.PUBLIC
    for method in route.methods
    if method != "OPTIONS"  # CORS preflights carry no identity (tests/test_cors.py)
]


@pytest.mark.parametrize("route, method", PROTECTED, ids=lambda value: getattr(value, "name", value))
async def test_each_protected_route_refuses_missing_and_insufficient_identities(client, signed_mode, route, method):
    url = concrete(route.path)
    response = await client.request(method, url)
    assert response.status_code == 401, (url, response.text)
    response = await client.request(method, url, headers=principal_headers("DicomOwner", secret="forged"))
    assert response.status_code == 401
    below = ROLE_BELOW[route.access]
    headers = principal_headers(*([below] if below else []))
    response = await client.request(method, url, headers=headers)
    assert response.status_code == 403, (url, response.text)
    assert ROLE_NEEDED[route.access] in response.json()["message"]


@pytest.mark.parametrize("route, method", PROTECTED, ids=lambda value: getattr(value, "name", value))
async def test_each_protected_route_lets_the_right_role_through(client, signed_mode, route, method):
    for role in ("DicomReader", "DicomWriter", "DicomOwner"):
        allowed = list(ROLE_NEEDED).index(route.access) <= ["DicomReader", "DicomWriter", "DicomOwner"].index(role)
        response = await client.request(method, concrete(route.path), headers=principal_headers(role))
        assert (response.status_code not in (401, 403)) == allowed, (role, route.path, response.status_code)


def test_every_route_declares_an_access_level():
    accesses = {route.name: route.access for route in route_table()}
    assert accesses["store_instances"] is Access.WRITE
    assert all(isinstance(access, Access) for access in accesses.values())


async def test_stores_with_the_writer_role_and_audits_without_patient_data(client, signed_mode, caplog):
    data = new_instance(patient_id="PATIENT-ID-SECRET", PatientName="Doe^Jane")
    body, boundary = multipart([data])
    with caplog.at_level(logging.INFO, logger="dicom_core.audit"):
        response = await client.post(
            "/v2/studies?PatientName=Doe", content=body, headers=stow_headers(boundary) | principal_headers("DicomWriter")
        )
    assert response.status_code == 200
    events = [json.loads(record.getMessage()[len("AUDIT ") :]) for record in caplog.records if record.name == "dicom_core.audit"]
    assert len(events) == 1
    event = events[0]
    assert event["operation"] == "store_instances"
    assert event["who"] == "user-oid-1"
    assert event["status"] == 200 and event["outcome"] == "success"
    assert event["queryKeys"] == ["PatientName"]
    text = caplog.text
    assert "PATIENT-ID-SECRET" not in text and "Doe" not in text and "Jane" not in text


async def test_refused_requests_are_audited_too(client, signed_mode, caplog):
    with caplog.at_level(logging.INFO, logger="dicom_core.audit"):
        response = await client.post("/v2/studies/1.2.3", content=b"x", headers={"Content-Type": "application/dicom"})
    assert response.status_code == 401
    event = json.loads(caplog.records[-1].getMessage()[len("AUDIT ") :])
    assert event == event | {"who": "unauthenticated", "status": 401, "outcome": "failure", "study": "1.2.3"}


async def test_unsigned_mode_none_needs_no_identity(client):
    body, boundary = multipart([new_instance()])
    assert (await client.post("/v2/studies", content=body, headers=stow_headers(boundary))).status_code == 200


def test_appservice_mode_reads_the_platform_principal_without_a_signature():
    from starlette.datastructures import Headers

    from dicom_core.http.auth import authenticate

    security = Security(auth_mode="appservice")
    value = encode_principal({"oid": "abc", "roles": ["DicomReader", "Other"]})
    principal = authenticate(Headers({"x-ms-client-principal": value}), security)
    assert principal.id == "abc" and principal.roles == {"DicomReader", "Other"}
    custom = Security(auth_mode="appservice", role_claim="groups", reader_role="g-1")
    principal = authenticate(Headers({"x-ms-client-principal": encode_principal({"groups": "g-1"})}), custom)
    assert principal.roles == {"g-1"}
