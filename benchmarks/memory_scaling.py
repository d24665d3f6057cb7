"""Peak memory of training and imputation against the size of the store (issue 19).

Synthetic PhysioNet-shaped stores ``(stay, time 48, feature 35)`` whose arrays hold 0.1x, 1x
and 10x this machine's RAM (uncompressed ``values`` float32 + ``observed_mask`` uint8), chunked
as ``stdiff ingest`` chunks (2 MB along ``stay``). The stores are written lazily: only the
metadata is written, and every chunk reads as the array's fill value (zarr's rule for a chunk
never written; the fill values are patched to observed = 1, value = 1.0, so every stay counts
as observed data). A job decodes such a chunk into the same numpy array as a written one, so its
memory is what it would be on a real store of that size; its disk time is not (there is no 240
GB disk here). A 0.01x store written in full with random data checks that the two agree.

Each job runs in its own process; its peak RSS is that process's ``VmHWM`` (the high-water mark
of its own address space after ``exec``; ``ru_maxrss`` would also count the parent's pages,
which a ``vfork``-spawned child shares until it execs):

* ``train``: ``stdiff train`` of the shipped CSDI config for a few steps (the stay split reads
  the per-stay flags ingest writes, ``stay_has_data``; the loader and the clip range read 512
  items spread over every stay).
* ``impute``: ``stdiff impute`` of the first 32 test stays with CSDI's 10 % hidden points (the
  split's flags, and CSDI's hidden-point stream, which visits every stay up to the last selected
  one: the scan a scored benchmark cannot avoid; a job filling real gaps, ``eval_ratio=0``, reads
  only the flags and its stays).

``--kind weather``: one variable on a 0.5-degree global grid (361 x 720, about 1 MB a step,
6-hourly from 1900, one step per chunk, stored like ``stdiff ingest --kind weather``):

* ``train``: ``stdiff train`` of a small DiT (patch 8) forecaster over the whole period,
* ``forecast``: ``stdiff forecast`` of 2 members, 12 h, from one initial time near the end.

``--code DIR`` runs the jobs with another checkout's code (e.g. a worktree of the commit before
the lazy reads) to show what the change bought.

    python -m benchmarks.memory_scaling --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

L, K = 48, 35
ROW_BYTES = L * K * (4 + 1)  # values float32 + observed_mask uint8, per stay
ROOT = Path(__file__).resolve().parents[1]
FEATURES = [f"f{k}" for k in range(K)]


def ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def make_store(path: Path, stays: int, written: bool, seed: int = 0, flags: bool = True) -> None:
    """A timeseries store of ``stays`` stays: metadata only (chunks read as the patched fill
    values), or with every chunk written (random values, 60 % observed); ``flags``: with the
    per-stay ``stay_has_data`` that ingest writes (without: as a store from before them)."""
    import dask.array as da
    import xarray as xr

    from stdiff.datasets.store import CHUNK_BYTES

    chunk = max(1, CHUNK_BYTES // (L * K * 4))
    if written:
        rs = da.random.RandomState(seed)
        values = rs.standard_normal((stays, L, K), chunks=(chunk, L, K)).astype(np.float32)
        observed = (rs.random_sample((stays, L, K), chunks=(chunk, L, K)) < 0.6).astype(np.uint8)
    else:
        values = da.ones((stays, L, K), chunks=(chunk, L, K), dtype=np.float32)
        observed = da.ones((stays, L, K), chunks=(chunk, L, K), dtype=np.uint8)
    # numpy when not written: written now, not left to a fill value
    has = observed.any(axis=(1, 2)).astype(np.uint8) if written else np.ones(stays, np.uint8)
    ds = xr.Dataset(
        {
            "values": (("stay", "time", "feature"), values),
            "observed_mask": (("stay", "time", "feature"), observed),
            "values_mean": (("feature",), np.zeros(K, np.float32)),
            "values_std": (("feature",), np.ones(K, np.float32)),
        },
        coords={"stay": np.arange(stays), "time": np.arange(L), "feature": FEATURES},
        attrs={"kind": "timeseries", "source": "benchmarks.memory_scaling", "store_format": 1},
    )
    if flags:  # the per-stay flags `stdiff ingest` writes (the split reads them, not the mask)
        ds["stay_has_data"] = ("stay", has)
    enc = {v: {"chunks": (chunk, L, K)} for v in ("values", "observed_mask")}
    ds.to_zarr(path, mode="w", encoding=enc, compute=written, consolidated=True)
    if not written:
        _patch_fill(path, {"values": 1.0, "observed_mask": 1})


GRID = (361, 720)
STEP_BYTES = GRID[0] * GRID[1] * 4


def make_weather(path: Path, steps: int) -> None:
    """A weather store of ``steps`` 6-hourly states of ``air`` (metadata only; every chunk
    reads as 280.0), with the statistics ``stdiff ingest`` attaches."""
    import dask.array as da
    import pandas as pd
    import xarray as xr

    air = da.full((steps, *GRID), 280.0, chunks=(1, *GRID), dtype=np.float32)
    ds = xr.Dataset(
        {
            "air": (("time", "lat", "lon"), air, {"units": "K"}),
            "air_mean": ((), np.float32(280.0)),
            "air_std": ((), np.float32(10.0)),
            "air_diff_std": ((), np.float32(1.0)),
        },
        coords={
            "time": pd.date_range("1900-01-01", periods=steps, freq="6h"),
            "lat": np.linspace(90, -90, GRID[0]),
            "lon": np.arange(GRID[1]) * 0.5,
        },
        attrs={"kind": "weather", "source": "benchmarks.memory_scaling", "store_format": 1},
    )
    ds.to_zarr(path, mode="w", encoding={"air": {"chunks": (1, *GRID)}}, compute=False,
               consolidated=True)  # fmt: skip
    _patch_fill(path, {"air": 280.0})


def weather_jobs(store: Path, work: Path, steps: int, n: int) -> dict[str, list[str]]:
    import pandas as pd

    run = work / "run"
    times = pd.date_range("1900-01-01", periods=n, freq="6h")
    cut = times[int(0.9 * n)]
    train = f"[1900-01-01, {(cut - pd.Timedelta(days=1)).date()}]"
    init = times[n - 8].strftime("%Y-%m-%dT%H")
    return {
        "train": ["train", "--config", str(ROOT / "configs/train_ncep_dit.yaml"), "--set",
                  f"data.store={store}", "--set", f"out={run}", "--set", f"loop.steps={steps}",
                  "--set", f"data.train_period={train}", "--set", "data.valid_period=null",
                  "--set", "model.params.patch_size=8", "--set", "loop.batch_size=2",
                  "--set", "loop.val_every=0", "--set", "loop.sample_every=0", "--set",
                  f"loop.checkpoint_every={steps}", "--set", "loop.progress=false"],
        "forecast": ["forecast", "--checkpoint", str(run), "--data", str(store), "--out",
                     str(work / "fc.zarr"), "--init", init, "--lead", "12h", "--members", "2",
                     "--set", "steps=4", "--set", "clip_x0=false"],
    }  # fmt: skip


def _patch_fill(path: Path, fills: dict[str, float]) -> None:
    """Set the zarr fill value of ``fills``' arrays (and in the consolidated metadata)."""
    for name, fill in fills.items():
        meta = path / name / "zarr.json"
        doc = json.loads(meta.read_text())
        doc["fill_value"] = fill
        meta.write_text(json.dumps(doc))
    root = path / "zarr.json"
    doc = json.loads(root.read_text())
    cons = doc.get("consolidated_metadata", {}).get("metadata", {})
    for name, fill in fills.items():
        if name in cons:
            cons[name]["fill_value"] = fill
    root.write_text(json.dumps(doc))


def child(argv: list[str]) -> None:
    """Run the CLI in this process and print its peak RSS (GiB) as the last line."""
    from stdiff.cli import entry

    sys.argv = ["stdiff", *argv]
    code = 0
    try:
        entry()
    except SystemExit as e:
        code = int(e.code or 0)
    print(json.dumps({"rc": code, "peak_rss_gib": peak_rss_gib()}))


def peak_rss_gib() -> float:
    """This process's peak resident memory since its ``exec`` (Linux ``VmHWM``), in GiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_job(argv: list[str], code: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(code)}
    t0 = time.perf_counter()
    # run as a script from ``code`` (not ``-m`` from here, whose sys.path would put this
    # checkout's ``stdiff`` first)
    res = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True,
                         text=True, env=env, cwd=code)  # fmt: skip
    lines = res.stdout.strip().splitlines()
    out = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {"rc": res.returncode}
    if out.get("rc") != 0 or res.returncode != 0:
        out["error"] = (res.stderr.strip().splitlines() or ["killed"])[-1][:200]
    return {**out, "seconds": time.perf_counter() - t0}


def jobs(store: Path, work: Path, steps: int, eval_ratio: float = 0.1) -> dict[str, list[str]]:
    run = work / "run"
    return {
        "train": ["train", "--config", str(ROOT / "configs/train_physionet_csdi.yaml"), "--set",
                  f"data.store={store}", "--set", f"out={run}", "--set", f"loop.steps={steps}",
                  "--set", "loop.val_every=0", "--set", "loop.sample_every=0", "--set",
                  f"loop.checkpoint_every={steps}", "--set", "loop.progress=false"],
        "impute": ["impute", "--checkpoint", str(run), "--data", str(store), "--out",
                   str(work / "imputed.zarr"), "--steps", "5", "--members", "4", "--set",
                   "max_stays=32", "--set", f"eval_ratio={eval_ratio:g}", "--set", "split=test",
                   "--set", "clip_x0=false"],
    }  # fmt: skip


def measure(fraction: float, written: bool, code: Path, base: Path, steps: int,
            kind: str = "stays", eval_ratio: float = 0.1) -> dict:  # fmt: skip
    work = base / f"{kind}-{fraction:g}{'-written' if written else ''}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    store = work / "store.zarr"
    if kind == "weather":
        n = max(400, int(fraction * ram_bytes() / STEP_BYTES))
        make_weather(store, n)
        todo, size = weather_jobs(store, work, steps, n), n * STEP_BYTES
    else:
        n = max(64, int(fraction * ram_bytes() / ROW_BYTES))
        make_store(store, n, written)
        todo, size = jobs(store, work, steps, eval_ratio), n * ROW_BYTES
    row = {"kind": kind, "fraction": fraction, "written": written, "items": n,
           "store_gib": size / 2**30}  # fmt: skip
    for name, argv in todo.items():
        row[name] = run_job(argv, code)
        print(json.dumps({**row, "job": name}), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return row


def table(rows: list[dict], label: str) -> list[str]:
    out = []
    for r in rows:
        cells = []
        for j in ("train", "forecast" if r.get("kind") == "weather" else "impute"):
            m = r[j]
            cells.append(f"{m['peak_rss_gib']:.2f} GiB, {m['seconds']:.0f} s"
                         if "error" not in m else f"failed: {m['error']}")  # fmt: skip
        how = "written" if r["written"] else "fill-value chunks"
        what = "steps" if r.get("kind") == "weather" else "stays"
        n = r.get("items", r.get("stays"))
        out.append(f"| {label} | {r['fraction']:g}x ({how}) | {n:,} {what} | "
                   f"{r['store_gib']:.1f} | {cells[0]} | {cells[1]} |")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0, 10.0])
    ap.add_argument("--written", type=float, default=0.01, help="fraction written in full")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--code", type=Path, action="append", default=[],
                    help="another checkout to run too (e.g. the commit before)")  # fmt: skip
    ap.add_argument("--code-fractions", type=float, nargs="+", default=[0.1, 1.0])
    ap.add_argument("--work", type=Path, default=ROOT / "outputs" / "memory_scaling")
    ap.add_argument("--kind", choices=["stays", "weather"], default="stays")
    ap.add_argument("--eval-ratio", type=float, default=0.1,
                    help="imputation's hidden points; 0: fill real gaps only (rows kept apart)")  # fmt: skip
    ap.add_argument("--render", action="store_true", help="write the section from rows.json")
    ap.add_argument("--write", type=Path)
    ap.add_argument("--child", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    if args.child is not None:
        child(args.child)
        return 0
    rows_file = args.work / "rows.json"
    done = json.loads(rows_file.read_text()) if rows_file.exists() else {}
    if args.render:
        pass  # only write the section from the rows measured before
    elif args.kind == "weather":
        done["weather"] = [measure(f, False, ROOT, args.work, args.steps, "weather")
                           for f in args.fractions]  # fmt: skip
    elif args.eval_ratio == 0:  # filling real gaps: no CSDI hidden-point stream to replay
        done["gaps"] = [measure(f, False, ROOT, args.work, args.steps, "stays", 0.0)
                        for f in args.fractions]  # fmt: skip
    else:
        rows = [measure(args.written, True, ROOT, args.work, args.steps)]
        done["stays"] = rows + [
            measure(f, False, ROOT, args.work, args.steps) for f in args.fractions
        ]
        done["before"] = {str(c): [measure(f, False, c, args.work, args.steps)
                                   for f in args.code_fractions] for c in args.code}  # fmt: skip
    rows_file.write_text(json.dumps(done, indent=1))
    lines = ["| code | store (x RAM) | size | GiB | train: peak RSS, time | impute or forecast: "
             "peak RSS, time |", "|---|---|---|---|---|---|"]  # fmt: skip
    lines += table(done.get("stays", []), "`eval_ratio=0.1` (at 61a65b1)")
    for code, old in done.get("before", {}).items():
        lines += table(old, f"`{Path(code).name}` (before)")
    lines += table(done.get("gaps", []), "`eval_ratio=0`, stored flags")
    lines += table(done.get("weather", []), "this commit, weather")
    from benchmarks.report import emit_section

    ram = ram_bytes() / 2**30
    body = (
        f"RAM {ram:.1f} GiB. Stays: train 4 steps of `configs/train_physionet_csdi.yaml`; "
        "impute 32 test stays x 4 members, 5 steps, 10 % hidden. Weather (one variable, "
        "361 x 720, 6-hourly from 1900): train 2 steps of a patch-8 `configs/train_ncep_dit.yaml`"
        " at batch 2; forecast 2 members, 12 h, 4 steps. Times are wall seconds on a CPU shared "
        "with other benchmarks (indicative only). The `eval_ratio=0.1` rows (CSDI's scored "
        "protocol) were measured at 61a65b1, before ingest stored the per-stay flags: their "
        "impute time includes a scan of the mask for the split and the replay of CSDI's "
        "hidden-point stream, which still visits every stay before the last one imputed. The "
        "`eval_ratio=0` rows fill real gaps from stores carrying the flags "
        "(`--eval-ratio 0`): no scan at all.\n\n" + "\n".join(lines)
    )
    cmd = ("`python -m benchmarks.memory_scaling --code WORKTREE_OF_5f4f2b4 --write BENCHMARKS.md`"
           " then `... --kind weather --steps 2 --write BENCHMARKS.md`, `... --eval-ratio 0 "
           "--fractions 1 10 --write BENCHMARKS.md`")  # fmt: skip
    emit_section("memory-scaling", "Peak memory against store size", cmd, body, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
