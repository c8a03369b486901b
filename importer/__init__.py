"""Imports DICOM objects from folders, zip files and DICOMDIR media into the
archive, as an internal service would: through the IngestService gRPC API.

    python -m importer import PATH... [--workers N] [--tenant T]

Modules, one step each: sources (what the paths hold), meta (a file's Part 10
header, enough to name its SOP instance), run (skip what is stored, send the
rest in batches), report (the progress bar and the summary table)."""
