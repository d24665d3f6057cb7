"""Data-layer benchmark: ingest time of the real data sets, and window throughput from the zarr
store against the same windows cut from an in-memory numpy array.

    .venv/bin/python -m benchmarks.datasets --write BENCHMARKS.md

Needs ../shared/data (PhysioNet 2012 set-a, NCEP air temperature). Each figure is the median of
``--repeats`` runs; ingests go to fresh temporary stores (the re-ingest no-op is timed separately).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from benchmarks.report import machine, write_section
from stdiff.datasets.ingest import IngestOptions, ingest
from stdiff.datasets.store import open_store
from stdiff.datasets.windows import ForecastWindows, SampleWindows

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
BEGIN, END = "<!-- BEGIN datasets -->", "<!-- END datasets -->"
BATCH = 32


def _median_seconds(fn: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


class _NumpyForecast(Dataset):
    """The same windows as ForecastWindows, cut from an in-memory normalised array."""

    def __init__(self, w: ForecastWindows) -> None:
        ds = open_store(w.arrays.path)
        v = w.variables[0]
        st = w.stats[v]
        self.a = ((ds[v].values.astype(np.float32) - st[0]) / st[1])[:, None]  # (T, 1, lat, lon)
        self.anchors, self.context, self.leads = w.anchors, w.context, w.leads

    def __len__(self) -> int:
        return len(self.anchors)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        t = int(self.anchors[i])
        idx = [t + lead for lead in self.leads]
        return {
            "context": torch.from_numpy(self.a[t - self.context + 1 : t + 1].copy()),
            "target": torch.from_numpy(self.a[idx].copy()),
        }


class _NumpySamples(Dataset):
    """The same PhysioNet samples as SampleWindows, from in-memory arrays."""

    def __init__(self, w: SampleWindows) -> None:
        ds = open_store(w.arrays.path)
        mean, std = w.stats["values"]
        self.v = np.nan_to_num((ds["values"].values - mean) / std, nan=0.0).astype(np.float32)
        self.m = ds["observed_mask"].values
        self.indices = w.indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = int(self.indices[i])
        return {"values": torch.from_numpy(self.v[j]), "observed_mask": torch.from_numpy(self.m[j])}


def _throughput(ds: Dataset, workers: int, repeats: int) -> tuple[float, float]:
    """Windows per second of the first (cold) pass and the median of ``repeats`` later (warm)
    passes over one DataLoader (batch 32, no shuffle, persistent workers)."""
    loader = DataLoader(
        ds, batch_size=BATCH, num_workers=workers, shuffle=False, persistent_workers=workers > 0
    )

    def one_pass() -> None:
        for _ in loader:
            pass

    times = _median_seconds(one_pass, repeats + 1)
    return len(ds) / times[0], len(ds) / statistics.median(times[1:])


def run(repeats: int) -> dict:
    res: dict = {"machine": machine(), "repeats": repeats, "ingest": {}, "windows": []}
    with tempfile.TemporaryDirectory() as tmp:
        jobs = {
            "PhysioNet 2012 set-a (4000 stays)": (
                DATA / "physionet2012" / "set-a.tar.gz",
                IngestOptions(kind="timeseries"),
            ),
            "NCEP air 2013-14 (2920 x 25 x 53)": (
                DATA / "ncep_air_temperature" / "air_temperature.zarr",
                IngestOptions(
                    kind="weather",
                    train_period=("2013-01-01", "2013-12-31"),
                    test_period=("2014-01-01", "2014-12-31"),
                ),
            ),
        }
        stores = {}
        for name, (src, opt) in jobs.items():

            def fresh(src: Path = src, opt: IngestOptions = opt, counter=iter(range(100))) -> None:
                ingest(src, Path(tmp) / f"{opt.kind}-{next(counter)}.zarr", opt)

            times = _median_seconds(fresh, repeats)
            stores[opt.kind] = Path(tmp) / f"{opt.kind}-0.zarr"
            noop = _median_seconds(
                lambda s=stores[opt.kind], src=src, opt=opt: ingest(src, s, opt), repeats
            )
            res["ingest"][name] = {"seconds": times, "noop_seconds": noop}
        fw = ForecastWindows(stores["weather"], ["air"], context=2, leads=[1, 4])
        sw = SampleWindows(stores["timeseries"], "stay", ["values", "observed_mask"])
        for label, zarr_ds, np_ds in (
            ("NCEP forecast windows (context 2, leads 1 and 4)", fw, _NumpyForecast(fw)),
            ("PhysioNet CSDI samples (48 x 35 + mask)", sw, _NumpySamples(sw)),
        ):
            for workers in (0, 2):
                zarr_ds.arrays.__setstate__(zarr_ds.arrays.__getstate__())  # empty the cache
                z = _throughput(zarr_ds, workers, repeats)
                n = _throughput(np_ds, workers, repeats)
                res["windows"].append((label, workers, len(zarr_ds), *z, *n))
    return res


def render(res: dict, command: str) -> str:
    lines = [
        BEGIN,
        "## Data layer: ingest and window throughput",
        "",
        f"Command: `{command}`. Machine: {res['machine']}. Medians of {res['repeats']} runs.",
        "",
        "| ingest (`stdiff ingest`, fresh store) | median s | runs (s) | re-ingest no-op (s) | goal |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in res["ingest"].items():
        goal = "< 30 s" if "PhysioNet" in name else "-"
        runs = ", ".join(f"{s:.1f}" for s in r["seconds"])
        lines.append(
            f"| {name} | {statistics.median(r['seconds']):.1f} | {runs} | "
            f"{statistics.median(r['noop_seconds']):.2f} | {goal} |"
        )
    lines += [
        "",
        f"Windows per second through a `DataLoader` (batch {BATCH}, no shuffle, full passes,",
        "persistent workers), from the zarr store and from the same normalised data held in a numpy",
        "array. Cold: the first pass, chunk caches empty (every chunk read and decoded once); warm:",
        f"median of the next {res['repeats']} passes (decoded chunks cached in each process, at most",
        "512 MB). Goal: the store at least half as fast as memory.",
        "",
        "| windows | workers | n | zarr cold | zarr warm | numpy cold | numpy warm | zarr / numpy (warm) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, workers, n, zc, zw, nc, nw in res["windows"]:
        lines.append(
            f"| {label} | {workers} | {n} | {zc:.0f} | {zw:.0f} | {nc:.0f} | {nw:.0f} | {zw / nw:.2f} |"
        )
    lines.append(END)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--write", type=Path, help="markdown file whose datasets section to replace")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        sys.exit(
            f"benchmarks.datasets: {DATA} is absent; this benchmark needs the shared real data"
        )
    torch.set_num_threads(2)
    res = run(args.repeats)
    section = render(
        res, " ".join([".venv/bin/python -m benchmarks.datasets", *(argv or sys.argv[1:])])
    )
    print(section)
    if args.write:
        write_section(args.write, section, BEGIN, END)


if __name__ == "__main__":
    main()
