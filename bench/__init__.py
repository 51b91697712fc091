"""Benchmark of this DICOMweb service against Orthanc, a real DICOMweb peer.

Run it from the repository root with ``python -m bench`` (see docs/benchmark.md).
"""
