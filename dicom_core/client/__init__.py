"""Clients of the service's HTTP API (the bulk-upload CLI).

Nothing here imports the server's operations or storage: these modules speak
DICOMweb over HTTP only, so they work against any deployment of the service
(or any STOW-RS server).
"""
