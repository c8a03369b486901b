"""Mutation score of the modules where a silent bug costs data or exposes it:

    python -m bench.mutation                 every target (about 30-60 minutes on 2 cores)
    python -m bench.mutation --only auth     the targets whose name contains "auth"
    python -m bench.mutation --survivors     also print each surviving mutant's diff

Each target runs mutmut (PyPI) in a scratch copy of the tree under
~/.cache/dicomserver-mutation/<target>, with only the tests that exercise it
in process (tests that drive separate processes cannot kill a mutant: mutmut
switches mutants on inside the pytest process). Select whole test folders:
mutmut maps each function to the tests that run it, and a narrower
selection leaves functions with "no tests". Prints, per module, the
mutants killed, survived and not covered, and the score (killed / all). Not
part of the test command: too slow for CI."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path.home() / ".cache" / "dicomserver-mutation"
MUTMUT = Path(sys.executable).with_name("mutmut")
PACKAGES = [
    "auth_svc",
    "bench",
    "common",
    "dicomcore",
    "dicomweb_gateway",
    "deidentify",
    "eventbus",
    "ingest_svc",
    "metadata_svc",
    "storage_svc",
    "launcher",
    "importer",
    "testbed",
    "tests",
    "pytest.ini",
]

# target -> (modules mutated, tests run against them)
TARGETS: dict[str, tuple[list[str], list[str]]] = {
    "ingest-pipeline": (
        ["common/ingest.py"],
        # Not tests/common/test_ingest.py: under mutmut's workers its tests time
        # out (about 40 s per mutant, mutants they kill when run directly
        # included), which made a run take hours and counted nothing.
        [
            "tests/dicomweb_gateway/",
            "tests/dicomcore/",
            "tests/ingest_svc/test_ingest_metrics.py",
            "tests/security/test_input_properties.py",
        ],
    ),
    "query-matching": (
        ["dicomcore/matching.py", "metadata_svc/query.py"],
        ["tests/dicomcore/test_matching.py", "tests/metadata_svc/", "tests/security/test_input_properties.py"],
    ),
    "auth-policy": (["auth_svc/policy.py"], ["tests/auth_svc/", "tests/dicomweb_gateway/test_auth_enforcement.py"]),
    "multipart-parser": (
        ["dicomweb_gateway/multipart.py"],
        ["tests/dicomweb_gateway/", "tests/security/test_input_properties.py"],
    ),
    "storage-backends": (["storage_svc/filesystem.py", "storage_svc/s3.py"], ["tests/storage_svc/"]),
}


def _scratch(name: str, modules: list[str], tests: list[str]) -> Path:
    """A copy of the tracked tree with a mutmut configuration for one target."""
    work = CACHE / name
    shutil.rmtree(work, ignore_errors=True)
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / rel)

    def quoted(items: list[str]) -> str:
        return "[" + ", ".join(f'"{i}"' for i in items) + "]"

    with open(work / "pyproject.toml", "a") as f:
        f.write(
            f"\n[tool.mutmut]\nsource_paths = {quoted(modules)}\n"
            f"pytest_add_cli_args_test_selection = {quoted(tests)}\n"
            f"also_copy = {quoted(PACKAGES)}\n"
        )
    return work


def _results(work: Path) -> dict[str, str]:
    out = subprocess.run([str(MUTMUT), "results", "--all", "true"], cwd=work, capture_output=True, text=True).stdout
    return {m[1]: m[2] for m in re.finditer(r"^\s+(\S+): (\w[\w ]*)$", out, re.M)}


def _module_of(mutant: str, modules: list[str]) -> str:
    for module in modules:
        dotted = module.removesuffix(".py").replace("/", ".")
        if mutant.startswith(dotted + "."):
            return module
    return "?"


def run(name: str, max_children: int, survivors: bool) -> list[tuple[str, Counter[str]]]:
    modules, tests = TARGETS[name]
    work = _scratch(name, modules, tests)
    log = work / "mutmut.log"
    print(f"== {name}: mutating {', '.join(modules)} (log: {log})", flush=True)
    with open(log, "w") as f:
        subprocess.run(
            [str(MUTMUT), "run", "--max-children", str(max_children)],
            cwd=work,
            stdout=f,
            stderr=subprocess.STDOUT,
            check=False,
        )
    results = _results(work)
    if not results or all(status == "not checked" for status in results.values()):
        print(f"   mutmut could not test {name} (its clean run failed?); see {log}", flush=True)
    rows = []
    for module in modules:
        counts = Counter(status for mutant, status in results.items() if _module_of(mutant, modules) == module)
        rows.append((module, counts))
    if survivors:
        for mutant, status in sorted(results.items()):
            if status == "survived":
                diff = subprocess.run([str(MUTMUT), "show", mutant], cwd=work, capture_output=True, text=True).stdout
                print(f"-- {mutant}\n{diff.strip()}\n")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mutation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="run the targets whose name contains this")
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested at once")
    parser.add_argument("--survivors", action="store_true", help="print every surviving mutant's diff")
    args = parser.parse_args(argv)
    if not MUTMUT.exists():
        print("mutmut is not installed: .venv/bin/pip install -r requirements.txt", file=sys.stderr)
        return 2
    chosen = [n for n in TARGETS if args.only in n]
    table = [
        (name, module, counts) for name in chosen for module, counts in run(name, args.max_children, args.survivors)
    ]
    print(f"\n{'target':<18} {'module':<32} {'killed':>7} {'survived':>9} {'no tests':>9} {'other':>6} {'score':>7}")
    for name, module, c in table:
        total = sum(c.values())
        other = total - c["killed"] - c["survived"] - c["no tests"]
        score = f"{100 * c['killed'] / total:.1f}%" if total else "-"
        print(f"{name:<18} {module:<32} {c['killed']:>7} {c['survived']:>9} {c['no tests']:>9} {other:>6} {score:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
