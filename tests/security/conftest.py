"""Hypothesis profiles for the property tests: deterministic and without an
example database by default (CI; nothing is written into the tree);
HYPOTHESIS_PROFILE=explore searches more, randomly, for local bug hunts."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

# Hypothesis keeps caches (not examples) in .hypothesis/; keep them out of the tree.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "dicomserver-hypothesis")

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "explore",
    derandomize=False,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
