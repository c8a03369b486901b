"""The benchmark runs end to end in --quick mode against this server alone.

A smoke test, not a benchmark: it checks that every workload ran or says why
not, that the answers the benchmark checks were right, and that nothing is
left behind. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# What this server already serves: these must be measured, with right answers.
MEASURED = [
    "C-STORE CT, 1 association",
    "C-STORE CT, 4 associations",
    "STOW-RS CT, sequential",
    "STOW-RS CT, 4 in parallel",
    "index ingest, C-STORE 4 associations",
    "series /metadata (CT series)",
    "WADO-RS series (CT series)",
    "QIDO studies, PatientID exact",
    "QIDO studies, StudyDate range (6 months)",
    "QIDO series of one study",
    "QIDO instances of one series",
]


def test_quick_run_against_ours_only(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    work = tmp_path / "work"
    work.mkdir()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--only",
            "ours",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--work-dir",
            str(work),
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["mode"] == "quick"
    assert result["totals"]["ours"]["exit_status"] == 0
    assert result["totals"]["ours"]["peak_rss_mb"] > 0
    assert result["totals"]["ours"]["cpu_s"] > 0
    figures = {f["name"]: f["sides"] for f in result["figures"]}
    assert set(MEASURED) <= set(figures)
    for name in MEASURED:
        ours = figures[name]["ours"]
        assert "na" not in ours and ours["median"] > 0, (name, ours)
        assert "mismatches" not in ours, (name, ours)
    # Everything else was measured or says why not (e.g. "HTTP 404"), in the JSON and the table.
    for name, sides in figures.items():
        assert set(sides) == {"ours"}
        assert "median" in sides["ours"] or sides["ours"]["na"], (name, sides)
    assert "| C-STORE CT, 1 association" in res.stdout and "peak RSS" in res.stdout
    # The servers' temp folders are gone, and the launcher was stopped cleanly.
    assert list(work.iterdir()) == []
