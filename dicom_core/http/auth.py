"""Who may do what: roles from the authenticated principal (docs/security.md).

In Azure, App Service Authentication (Microsoft Entra ID) signs the user in and
passes the principal to the app in ``X-MS-CLIENT-PRINCIPAL`` (base64 JSON with the
token's claims); the platform removes that header from incoming requests, so a
client cannot forge it. Roles come from one claim (``roles`` by default, the app
roles of the Entra app registration). A reader may search and retrieve, a writer
may also store, an owner may also delete.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from enum import Enum

from starlette.datastructures import Headers

from dicom_core.errors import Forbidden, Unauthorized
from dicom_core.settings import Security

PRINCIPAL_HEADER = "x-ms-client-principal"
SIGNATURE_HEADER = "x-ms-client-principal-signature"
_OBJECT_ID_CLAIMS = ("http://schemas.microsoft.com/identity/claims/objectidentifier", "oid")
_NAME_CLAIMS = ("name", "preferred_username", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name")


class Access(Enum):
    """What a route needs: nothing, or the reader, writer or owner role."""

    PUBLIC = "public"
    READ = "read"
    WRITE = "write"
    DELETE = "delete"

    @classmethod
    def for_methods(cls, methods: tuple[str, ...]) -> Access:
        if "DELETE" in methods:
            return cls.DELETE
        if {"POST", "PUT", "PATCH"} & set(methods):
            return cls.WRITE
        return cls.READ


@dataclass(frozen=True)
class Principal:
    id: str
    roles: frozenset[str]

    @property
    def audit_name(self) -> str:
        return self.id


ANONYMOUS = Principal("anonymous", frozenset())


def sign_principal(header_value: str, secret: str) -> str:
    """The signature the ``signed`` test mode expects for a principal header."""
    return hmac.new(secret.encode(), header_value.encode(), hashlib.sha256).hexdigest()


def encode_principal(claims: dict[str, list[str] | str], auth_type: str = "aad") -> str:
    """An ``X-MS-CLIENT-PRINCIPAL`` value with these claims (for tests and local tools)."""
    entries = []
    for claim_type, values in claims.items():
        for value in [values] if isinstance(values, str) else values:
            entries.append({"typ": claim_type, "val": value})
    document = {"auth_typ": auth_type, "claims": entries, "name_typ": "name", "role_typ": "roles"}
    return base64.b64encode(json.dumps(document).encode()).decode()


def authenticate(headers: Headers, security: Security) -> Principal:
    """The caller's principal; ANONYMOUS when identity checks are off."""
    if security.auth_mode == "none":
        return ANONYMOUS
    raw = headers.get(PRINCIPAL_HEADER)
    if not raw:
        raise Unauthorized("this request has no authenticated identity: sign in (Microsoft Entra ID) and send the token")
    if security.auth_mode == "signed":
        signature = headers.get(SIGNATURE_HEADER, "")
        if not hmac.compare_digest(signature, sign_principal(raw, security.test_secret or "")):
            raise Unauthorized("the principal header's signature is not valid")
    try:
        document = json.loads(base64.b64decode(raw, validate=True))
        claims = [(str(claim["typ"]), str(claim["val"])) for claim in document.get("claims", [])]
    except (ValueError, binascii.Error, KeyError, TypeError, AttributeError):
        raise Unauthorized("the principal header cannot be read") from None
    roles = frozenset(value for claim_type, value in claims if claim_type == security.role_claim)
    by_type = dict(claims)
    identifier = next((by_type[name] for name in _OBJECT_ID_CLAIMS if name in by_type), None)
    identifier = identifier or next((by_type[name] for name in _NAME_CLAIMS if name in by_type), "unknown")
    return Principal(identifier, roles)


def authorize(principal: Principal, access: Access, security: Security) -> None:
    """Raise Forbidden unless the principal holds a role that grants ``access``."""
    if access is Access.PUBLIC or security.auth_mode == "none":
        return
    granted = {
        Access.READ: {security.reader_role, security.writer_role, security.owner_role},
        Access.WRITE: {security.writer_role, security.owner_role},
        Access.DELETE: {security.owner_role},
    }[access]
    if not principal.roles & granted:
        needed = {Access.READ: security.reader_role, Access.WRITE: security.writer_role, Access.DELETE: security.owner_role}
        raise Forbidden(f"this operation needs the {needed[access]} role (or a higher one); the caller does not have it")
