"""Raw data into the canonical lake: Home Depot files, or a seeded synthetic stand-in with known truth.

Both write the same tables (pipelines.lake) keyed by pipelines.text, so every later stage works the
same on either source.
"""

from pipelines.ingest.errors import IngestError, Rejects, RowError
from pipelines.ingest.homedepot import FileReport, IngestReport, ingest_homedepot
from pipelines.ingest.synthetic import SyntheticReport, generate_synthetic

__all__ = [
    "FileReport",
    "IngestError",
    "IngestReport",
    "Rejects",
    "RowError",
    "SyntheticReport",
    "generate_synthetic",
    "ingest_homedepot",
]
