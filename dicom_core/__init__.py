"""A DICOMweb service (STOW-RS, QIDO-RS, WADO-RS) over an Azure Data Lake, indexed in Azure Table Storage.

Layers, each a subpackage, each importing only the ones below it:

``http``        Starlette handlers, content negotiation, multipart, the route table.
``operations``  store, retrieve, search, delete: no HTTP, no web framework.
``storage``     the lake adapter (files) and the index adapter (Table Storage).
``dicom``       parsing, validation and DICOM JSON helpers on top of pydicom.
"""
