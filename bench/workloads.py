"""The workloads, run on every server in the same run, alternating which
server goes first from one sample to the next."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import clients
from bench.clients import DicomWeb, NotAvailable
from bench.corpus import BASE_VARIANT, FAMILY, rewrite_variant, uid
from bench.report import Figure
from bench.servers import Server, StoreSCP

WADO_ACCEPT = 'multipart/related; type="application/dicom"'
FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
PARALLEL = 4


@dataclass(frozen=True)
class Plan:
    reps: int  # samples of each throughput figure
    latency_samples: int  # samples of each latency figure
    index_chunks: int  # the index-scale corpus is ingested in this many timed chunks
    store_reps: int  # samples of each CT store figure (each stores the whole CT corpus anew)
    stow_batch: int = 10  # instances per STOW-RS request


def _split(items: list[Any], n: int) -> list[list[Any]]:
    return [items[k::n] for k in range(n)]


class Bench:
    def __init__(
        self,
        servers: dict[str, Server],
        corpus_root: Path,
        manifest: dict[str, Any],
        plan: Plan,
        work_dir: Path,
        dest: StoreSCP | None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.servers = servers
        self.sides = list(servers)
        self.root = corpus_root
        self.plan = plan
        self.work_dir = work_dir
        self.dest = dest
        self.log = log
        self.figures: list[Figure] = []
        self.web = {name: DicomWeb(s.dicomweb) for name, s in servers.items()}
        self.pool_web = {name: [DicomWeb(s.dicomweb) for _ in range(PARALLEL)] for name, s in servers.items()}
        self.variant = BASE_VARIANT
        self.ct_copies = dict.fromkeys(servers, 0)

        self.ct = manifest["ct"]["studies"]
        self.ct_series = [(st["uid"], se["uid"], se["files"]) for st in self.ct for se in st["series"]]
        self.ct_files = [f["path"] for _, _, files in self.ct_series for f in files]
        self.ct_data: list[bytes] | None = None
        self.ct_bytes = sum((self.root / p).stat().st_size for p in self.ct_files)
        self.index = manifest["index"]["studies"]
        self.index_files = [f["path"] for st in self.index for se in st["series"] for f in se["files"]]
        # Studies of the index corpus, and of one copy of the CT corpus (a server holds one per stored copy).
        self.index_studies = [
            {
                "patient_id": st["patient_id"],
                "patient_name": st.get("patient_name", ""),
                "date": st.get("date", ""),
                "modalities": {se.get("modality", "CT") for se in st["series"]},
            }
            for st in self.index
        ]
        self.ct_studies = [
            {
                "patient_id": st["patient_id"],
                "patient_name": st["patient_name"],
                "date": st["date"],
                "modalities": {"CT"},
            }
            for st in self.ct
        ]

    def close(self) -> None:
        for c in self.web.values():
            c.close()
        for cs in self.pool_web.values():
            for c in cs:
                c.close()

    # -- the runner ----------------------------------------------------------

    def run(
        self,
        name: str,
        unit: str,
        higher_is_better: bool,
        samples: int,
        fn: Callable[[Server, int, Any, Figure], float],
        prepare: Callable[[int], Any] | None = None,
        cleanup: Callable[[Any], None] | None = None,
    ) -> Figure:
        fig = Figure(name, unit, higher_is_better)
        self.figures.append(fig)
        t0 = time.monotonic()
        for i in range(samples):
            ctx = prepare(i) if prepare else None
            try:
                for side in self.sides if i % 2 == 0 else self.sides[::-1]:
                    s = fig.side(side)
                    if s.na is not None:
                        continue
                    srv = self.servers[side]
                    cpu0 = srv.sampler.cpu_seconds() if srv.sampler else 0.0
                    try:
                        s.samples.append(fn(srv, i, ctx, fig))
                    except NotAvailable as exc:
                        s.na = str(exc)
                    except httpx.HTTPError as exc:
                        s.na = type(exc).__name__
                    finally:
                        if srv.sampler:
                            s.cpu_s += srv.sampler.cpu_seconds() - cpu0
            finally:
                if cleanup:
                    cleanup(ctx)
        from bench.report import cell

        self.log(
            f"  {name:<44} "
            + "  ".join(f"{side}: {cell(fig.sides.get(side))}" for side in self.sides)
            + f"  ({time.monotonic() - t0:.0f} s)"
        )
        return fig

    def mismatch(self, fig: Figure, srv: Server, text: str) -> None:
        fig.side(srv.name).mismatches.append(text)

    def _next_variant(self) -> int:
        v = self.variant
        self.variant += 1
        if self.variant > 99:
            raise RuntimeError("out of UID variants: fewer repetitions please")
        return v

    # -- ingest of the CT corpus -----------------------------------------------

    def _cstore_prepare(self, n_assoc: int) -> Callable[[int], Any]:
        def prepare(i: int) -> tuple[int, Path, list[list[str]]]:
            v = self._next_variant()
            out = self.work_dir / f"variant{v}"
            out.mkdir()
            paths = []
            for p in self.ct_files:
                dst = out / Path(p).name
                dst.write_bytes(rewrite_variant((self.root / p).read_bytes(), v))
                paths.append(str(dst))
            return v, out, _split(paths, n_assoc)

        return prepare

    def _stow_prepare(self, i: int) -> tuple[int, list[bytes]]:
        if self.ct_data is None:
            self.ct_data = [(self.root / p).read_bytes() for p in self.ct_files]
        v = self._next_variant()
        return v, [rewrite_variant(d, v) for d in self.ct_data]

    def _batches(self, objects: list[bytes]) -> list[list[bytes]]:
        b = self.plan.stow_batch
        return [objects[k : k + b] for k in range(0, len(objects), b)]

    def _stow_seq(self, srv: Server, i: int, ctx: Any, fig: Figure) -> float:
        v, objects = ctx
        web = self.web[srv.name]
        t0 = time.perf_counter()
        for batch in self._batches(objects):
            web.stow(batch)
        return sum(map(len, objects)) / 1e6 / (time.perf_counter() - t0)

    def _stow_par(self, srv: Server, i: int, ctx: Any, fig: Figure) -> float:
        v, objects = ctx
        lanes = _split(self._batches(objects), PARALLEL)

        def lane(k: int) -> None:
            for batch in lanes[k]:
                self.pool_web[srv.name][k].stow(batch)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(PARALLEL) as pool:
            list(pool.map(lane, range(PARALLEL)))
        return sum(map(len, objects)) / 1e6 / (time.perf_counter() - t0)

    def ingest_ct(self) -> None:
        self.log(f"CT corpus: {len(self.ct_files)} instances, {self.ct_bytes / 1e6:.0f} MB per store")
        record: list[tuple[int, str]] = []  # (copy, figure key)

        def remember(prepare: Callable[[int], Any], fig_name: str) -> Callable[[int], Any]:
            def wrapped(i: int) -> Any:
                ctx = prepare(i)
                record.append((ctx[0], fig_name))
                return ctx

            return wrapped

        def rm(ctx: Any) -> None:
            shutil.rmtree(ctx[1], ignore_errors=True)

        reps = self.plan.store_reps
        for n in (1, PARALLEL):
            self.run(
                f"C-STORE CT, {n} association{'s' if n > 1 else ''}",
                "MB/s",
                True,
                reps,
                lambda srv, i, ctx, fig: self.ct_bytes / 1e6 / clients.cstore(srv, ctx[2]),
                remember(self._cstore_prepare(n), f"cstore{n}"),
                rm,
            )
        self.run("STOW-RS CT, sequential", "MB/s", True, reps, self._stow_seq, remember(self._stow_prepare, "stow1"))
        self.run(
            f"STOW-RS CT, {PARALLEL} in parallel",
            "MB/s",
            True,
            reps,
            self._stow_par,
            remember(self._stow_prepare, "stow4"),
        )
        self.ct_data = None
        # Every stored copy must be complete on every server that took it.
        per_study = len(self.ct[0]["series"]) * len(self.ct[0]["series"][0]["files"])
        by_key = dict(
            zip(["cstore1", f"cstore{PARALLEL}", "stow1", f"stow{PARALLEL}"], self.figures[-4:], strict=False)
        )
        for v, key in record:
            fig = by_key[key]
            for side in self.sides:
                s = fig.side(side)
                if s.na is not None:
                    continue
                srv = self.servers[side]
                self.ct_copies[side] += 1
                for st in range(len(self.ct)):
                    try:
                        n = self.web[side].get_json(f"/studies/{uid(v, 1, st)}/instances")
                    except NotAvailable as exc:
                        n = f"{exc}"  # type: ignore[assignment]
                    if n != per_study:
                        self.mismatch(fig, srv, f"study {st} of copy {v}: {n} instances, expected {per_study}")

    # -- ingest at index scale ---------------------------------------------------

    def ingest_index(self) -> None:
        chunks = _split(self.index_files, 1)[0]
        n = self.plan.index_chunks
        size = -(-len(chunks) // n)
        parts = [chunks[k : k + size] for k in range(0, len(chunks), size)]
        self.log(f"index corpus: {len(self.index_files)} instances in {len(self.index)} studies, {len(parts)} chunks")

        def fn(srv: Server, i: int, ctx: Any, fig: Figure) -> float:
            files = [str(self.root / p) for p in parts[i]]
            return len(files) / clients.cstore(srv, _split(files, PARALLEL))

        self.run(f"index ingest, C-STORE {PARALLEL} associations", "inst/s", True, len(parts), fn)

    # -- retrieval ---------------------------------------------------------------

    def retrieve(self) -> None:
        n_lat, reps = self.plan.latency_samples, self.plan.reps
        series = self.ct_series
        sops = [(st, se, f["sop"]) for st, se, files in series for f in files]

        def metadata(srv: Server, i: int, ctx: Any, fig: Figure) -> float:
            st, se, files = series[i % len(series)]
            t0 = time.perf_counter()
            n = self.web[srv.name].get_json(f"/studies/{st}/series/{se}/metadata")
            dt = time.perf_counter() - t0
            if n != len(files):
                self.mismatch(fig, srv, f"{n} instances, expected {len(files)}")
            return dt * 1e3

        def wado(srv: Server, i: int, ctx: Any, fig: Figure) -> float:
            st, se, files = series[i % len(series)]
            t0 = time.perf_counter()
            n = self.web[srv.name].get_bytes(f"/studies/{st}/series/{se}", WADO_ACCEPT)
            dt = time.perf_counter() - t0
            if n < len(files) * 512 * 512 * 2:
                self.mismatch(fig, srv, f"{n} bytes for {len(files)} instances")
            return n / 1e6 / dt

        def frame(srv: Server, i: int, ctx: Any, fig: Figure) -> float:
            st, se, sop = sops[(i * 7) % len(sops)]
            t0 = time.perf_counter()
            n = self.web[srv.name].get_bytes(f"/studies/{st}/series/{se}/instances/{sop}/frames/1", FRAME_ACCEPT)
            dt = time.perf_counter() - t0
            if n < 512 * 512 * 2:
                self.mismatch(fig, srv, f"{n} bytes for one frame")
            return dt * 1e3

        self.run("series /metadata (CT series)", "ms", False, n_lat, metadata)
        self.run("WADO-RS series (CT series)", "MB/s", True, reps, wado)
        self.run("WADO-RS single frame (512x512x16)", "ms", False, n_lat, frame)
        self.run("C-GET series (CT series)", "MB/s", True, reps, self.cget_sample)
        if self.dest is not None:
            self.run("C-MOVE series to storescp (CT series)", "MB/s", True, reps, self.cmove_sample)

    # -- queries at index scale ----------------------------------------------------

    def queries(self) -> None:
        n = self.plan.latency_samples
        idx = self.index
        side_of: dict[str, str] = {}  # the side being measured, for the expected counts

        def count(pred: Callable[..., bool]) -> int:  # lambdas that bind values as defaults
            return self.studies_held(side_of["now"], pred)

        pt_series = sum(1 for st in idx for se in st["series"] if se["modality"] == "PT")

        def pick(i: int) -> dict[str, Any]:
            return idx[(i * 37 + 11) % len(idx)]

        limit = 100
        cases: list[tuple[str, Callable[[int], tuple[str, dict[str, str], int]]]] = [
            (
                "studies, PatientID exact",
                lambda i: (
                    "/studies",
                    {"PatientID": pick(i)["patient_id"]},
                    count(lambda s, p=pick(i)["patient_id"]: s["patient_id"] == p),  # noqa: B008 (bound per query)
                ),
            ),
            (
                "studies, PatientName wildcard (non-ASCII)",
                lambda i: (
                    "/studies",
                    {"PatientName": FAMILY[i % len(FAMILY)][:3] + "*"},
                    count(lambda s, f=FAMILY[i % len(FAMILY)][:3]: s["patient_name"].startswith(f)),  # noqa: B008 (bound per query)
                ),
            ),
            (
                "studies, StudyDate range (6 months)",
                lambda i: (
                    "/studies",
                    {"StudyDate": f"{2000 + i % 25}0101-{2000 + i % 25}0630"},
                    count(lambda s, y=f"{2000 + i % 25}": f"{y}0101" <= s["date"] <= f"{y}0630"),
                ),
            ),
            (
                "studies, AccessionNumber exact",
                lambda i: ("/studies", {"AccessionNumber": f"ACC{(i * 37 + 11) % len(idx):06d}"}, 1),
            ),
            (
                f"studies, limit={limit}",
                lambda i: ("/studies", {"limit": str(limit)}, min(limit, count(lambda s: True))),
            ),
            (
                "studies, ModalitiesInStudy + date range (1 year)",
                lambda i: (
                    "/studies",
                    {"ModalitiesInStudy": "MR", "StudyDate": f"{2000 + i % 25}0101-{2000 + i % 25}1231"},
                    count(lambda s, y=f"{2000 + i % 25}": "MR" in s["modalities"] and s["date"][:4] == y),
                ),
            ),
            ("series of one study", lambda i: (f"/studies/{pick(i)['uid']}/series", {}, len(pick(i)["series"]))),
            (
                "series, Modality exact + limit=50",
                lambda i: ("/series", {"Modality": "PT", "limit": "50"}, min(50, pt_series)),
            ),
            (
                "instances of one series",
                lambda i: (
                    f"/studies/{pick(i)['uid']}/series/{pick(i)['series'][0]['uid']}/instances",
                    {},
                    len(pick(i)["series"][0]["files"]),
                ),
            ),
            (
                "instances, SOPInstanceUID exact",
                lambda i: ("/instances", {"SOPInstanceUID": pick(i)["series"][-1]["files"][-1]["sop"]}, 1),
            ),
        ]
        for label, make in cases:

            def fn(
                srv: Server,
                i: int,
                ctx: Any,
                fig: Figure,
                make: Callable[[int], tuple[str, dict[str, str], int]] = make,
            ) -> float:
                side_of["now"] = srv.name
                path, params, expected = make(i)
                t0 = time.perf_counter()
                got = self.web[srv.name].query(path, params)
                dt = time.perf_counter() - t0
                if got != expected:
                    self.mismatch(fig, srv, f"{path}?{params}: {got} results, expected {expected}")
                return dt * 1e3

            self.run(f"QIDO {label}", "ms", False, n, fn)

        self.run("C-FIND studies, PatientID exact (findscu)", "ms", False, n, self.cfind_pid_sample)
        self.run("C-FIND studies, StudyDate range (findscu)", "ms", False, n, self.cfind_date_sample)

    # ---- DIMSE samples (python -m bench and python -m bench.dimse_qr) ----

    def studies_held(self, side: str, pred: Callable[..., bool]) -> int:
        """Studies matching `pred` that `side` holds: the index corpus and its copies of the CT corpus."""
        return sum(map(pred, self.index_studies)) + self.ct_copies[side] * sum(map(pred, self.ct_studies))

    def cfind_pid_sample(self, srv: Server, i: int, ctx: Any, fig: Figure) -> float:
        p = self.index[(i * 37 + 11) % len(self.index)]["patient_id"]
        t0 = time.perf_counter()
        got = clients.cfind_studies(srv, {"PatientID": p})
        dt = time.perf_counter() - t0
        if got != self.studies_held(srv.name, lambda s: s["patient_id"] == p):
            self.mismatch(fig, srv, f"PatientID={p}: {got} results")
        return dt * 1e3

    def cfind_date_sample(self, srv: Server, i: int, ctx: Any, fig: Figure) -> float:
        y = f"{2000 + i % 25}"
        t0 = time.perf_counter()
        got = clients.cfind_studies(srv, {"StudyDate": f"{y}0101-{y}0630"})
        dt = time.perf_counter() - t0
        if got != self.studies_held(srv.name, lambda s: f"{y}0101" <= s["date"] <= f"{y}0630"):
            self.mismatch(fig, srv, f"StudyDate {y}: {got} results")
        return dt * 1e3

    def cget_sample(self, srv: Server, i: int, ctx: Any, fig: Figure) -> float:
        st, se, files = self.ct_series[i % len(self.ct_series)]
        t0 = time.perf_counter()
        n, size = clients.cget_series(srv, st, se)
        dt = time.perf_counter() - t0
        if n != len(files):
            self.mismatch(fig, srv, f"{n} files, expected {len(files)}")
        return size / 1e6 / dt

    def cmove_sample(self, srv: Server, i: int, ctx: Any, fig: Figure) -> float:
        assert self.dest is not None
        st, se, files = self.ct_series[i % len(self.ct_series)]
        self.dest.take()
        t0 = time.perf_counter()
        clients.cmove_series(srv, self.dest.aet, st, se)
        dt = time.perf_counter() - t0
        n, size = self.dest.take()
        if n != len(files):
            self.mismatch(fig, srv, f"{n} files at the destination, expected {len(files)}")
        if n == 0:
            raise NotAvailable("nothing arrived at the destination")
        return size / 1e6 / dt
