"""WADO-RS: retrieve instances, metadata, frames, bulk data, rendered images and thumbnails (PS3.18 10.4).

One module per resource; what they share is planning from the index (``finding``),
reading the lake with its failures translated (``reading``) and ordered concurrent
streams (``streams``):

- Every retrieve is planned from the index: one point read for an instance, one
  key-range query for a series or study.
- Instances stream as they are read. Up to ``streams.RETRIEVE_CONCURRENCY`` files
  ahead of the one being sent are opened concurrently, each holding at most its first
  download block, so memory does not grow with the size of a study.
- Frames and pixel bulk data are ranged reads of the byte ranges the index keeps for
  each frame; the whole file is read only when the index has none (deflated,
  bit-packed, or fragments without an offset table).
- Metadata comes from the DICOM JSON kept in the index at store time; only an
  instance whose JSON was too large for the index has its file read.
- Every read of a file is conditional on the ETag recorded at store time: a file
  removed or rewritten in the lake outside the API is reported as such, and its
  index entry flagged for reconciliation.

The HTTP layer negotiates the representation once and passes it in; nothing here
knows media-type negotiation beyond what the representation says.
"""
