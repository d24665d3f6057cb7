"""``stdiff ingest``: any supported source -> canonical Dataset -> normalisation stats -> zarr store.

The content hash of the inputs and options is computed first, so re-ingesting the same input is
a no-op that reads nothing but the input bytes. Statistics come from the training split only:

* weather: by time (``train_period``/``test_period``; default: the first 70 % of the time steps
  train, the last 20 % test, the 10 % between them validation);
* PhysioNet: CSDI's 5-fold entity split (``fold``, seed 1); tables: first 70 % of time steps;
* images: no statistics (uint8 images are scaled to [-1, 1] by the windows, float images by
  the pixel range their loader records as ``image_mean`` / ``image_std``);
* medical: statistics over all slices of the volume (one volume has no held-out split).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr

from stdiff.datasets.errors import DataError, StdiffWarning
from stdiff.datasets.image_files import IMAGE_SUFFIXES
from stdiff.datasets.outputs import claim_store
from stdiff.datasets.raw_volumes import RAW_SUFFIXES
from stdiff.datasets.splits import (
    HAS_DATA,
    Split,
    csdi_stay_split,
    normalization_stats,
    series_split,
    split_variable,
    stays_with_data,
    time_split,
)
from stdiff.datasets.store import attach_stats, content_hash, store_hash, write_store

Kind = Literal["weather", "timeseries", "images", "medical"]
KINDS: tuple[str, ...] = ("weather", "timeseries", "images", "medical")


@dataclass(frozen=True)
class IngestOptions:
    """Options of one ingest (all part of the content hash).

    Fields: kind; variables / levels (weather selection); coarsen (weather block-mean factor);
    train_period / test_period (weather time split, ``("YYYY-MM-DD", "YYYY-MM-DD")``);
    fold (PhysioNet CSDI fold); layout / time_column / targets (CSV or Parquet tables);
    time_columns / station_column / drop_columns / categorical / freq (tables, per-station files:
    ``datasets.sites``); site_coords (per-station files: a CSV ``station, lat, lon``, stored as
    ``lat`` / ``lon`` along ``feature``, the side information of a geographic prior); train_period / test_period or test_months / valid_months (the time split
    of a table series, ``datasets.splits.series_split``);
    axis (NIfTI slicing axis); resize_images (image folders: every image to image_size x
    image_size); image_size / window (a volume ingested as ``images``: slice size
    and intensity window, ``"LO,HI"``, a preset of ``datasets.slices.WINDOWS`` or ``"auto"``);
    images_key / labels_key (NPZ arrays; ``labels_key="none"``: unlabelled images);
    split (images: ``auto`` keeps the source's split, ``train``/``test`` puts every image there).
    """

    kind: Kind
    variables: tuple[str, ...] | None = None
    levels: tuple[float, ...] | None = None
    coarsen: int = 1
    train_period: tuple[str, str] | None = None
    test_period: tuple[str, str] | None = None
    fold: int = 0
    layout: Literal["wide", "long", "stays"] = "wide"
    time_column: str = "time"
    targets: str | None = None
    time_columns: tuple[str, ...] | None = None
    station_column: str | None = None
    drop_columns: tuple[str, ...] = ()
    categorical: Literal["error", "drop", "onehot"] = "error"
    freq: str | None = None
    missing_values: tuple[float, ...] = ()
    site_coords: str | None = None
    test_months: tuple[int, ...] | None = None
    valid_months: tuple[int, ...] | None = None
    axis: Literal["axial", "coronal", "sagittal"] = "axial"
    image_size: int = 64
    window: str = "auto"
    images_key: str | None = None
    labels_key: str | None = None
    split: Literal["auto", "train", "test"] = "auto"
    fill_nan: Literal["error", "mean"] = "error"
    resize_images: bool = False
    stay_length: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r} is not valid; choose one of {list(KINDS)}")
        if not 0 <= self.fold < 5:
            raise ValueError(f"--fold {self.fold}: the CSDI folds are 0-4")
        if self.layout not in ("wide", "long", "stays"):
            raise ValueError(
                f"layout={self.layout!r} is not valid; choose one of ['wide', 'long', 'stays']"
            )
        if self.stay_length is not None and self.layout != "stays":
            raise ValueError("--stay-length applies to --layout stays (one table per stay)")
        if self.axis not in ("axial", "coronal", "sagittal"):
            raise ValueError(
                f"axis={self.axis!r} is not valid; choose one of ['axial', 'coronal', 'sagittal']"
            )
        if self.coarsen < 1:
            raise ValueError(f"coarsen must be a positive integer, got {self.coarsen}")
        if self.split not in ("auto", "train", "test"):
            raise ValueError(f"split={self.split!r} is not valid; choose one of auto, train, test")
        if self.fill_nan not in ("error", "mean"):
            raise ValueError(
                f"--fill-nan {self.fill_nan!r} is not valid; choose one of error, mean"
            )
        if self.fill_nan != "error" and self.kind != "weather":
            raise ValueError(f"--fill-nan applies to --kind weather grids, not {self.kind}")
        if self.categorical not in ("error", "drop", "onehot"):
            raise ValueError(
                f"--categorical {self.categorical!r} is not valid; choose one of error, drop, onehot"
            )
        table = ("time_columns", "station_column", "drop_columns", "freq", "test_months",
                 "valid_months", "site_coords", "missing_values")  # fmt: skip
        given = [k for k in table if getattr(self, k)]
        if given and self.kind != "timeseries":
            flag = "--" + given[0].replace("_", "-")
            raise ValueError(f"{flag} applies to --kind timeseries tables, not {self.kind}")
        from stdiff.datasets.slices import parse_window

        parse_window(self.window)  # a bad window fails before any input is read


@dataclass(frozen=True)
class IngestResult:
    store: Path
    written: bool
    seconds: float
    summary: str


# options added after stores were made: hashed only when set, so earlier stores stay current
_LATER_OPTIONS: dict[str, Any] = {"fill_nan": "error", "resize_images": False, "missing_values": (),
                                  "stay_length": None}  # fmt: skip


def _hashed(opt: IngestOptions) -> dict[str, Any]:
    """The options that go into the content hash (see ``_LATER_OPTIONS``)."""
    return {k: v for k, v in asdict(opt).items() if _LATER_OPTIONS.get(k, object()) != v}


def _fraction_split(n: int, dim: str) -> Split:
    a, b = int(0.7 * n), int(0.8 * n)
    return Split(dim, np.arange(a), np.arange(a, b), np.arange(b, n))


def _weather(source: str | list[str], opt: IngestOptions) -> tuple[xr.Dataset, Split, list[str]]:
    from stdiff.datasets.weather import coarsen, open_weather
    from stdiff.datasets.weather_ingest import grid_dims

    ds = open_weather(
        source,
        variables=list(opt.variables) if opt.variables else None,
        levels=list(opt.levels) if opt.levels else None,
    )
    ds = grid_dims(ds, ds.attrs["source"])
    if opt.coarsen > 1:
        ds = coarsen(ds, opt.coarsen)
    if opt.train_period and opt.test_period:
        split = time_split(ds, opt.train_period, opt.test_period)
    elif opt.train_period or opt.test_period:
        raise ValueError("give both --train-period and --test-period, or neither")
    else:
        split = _fraction_split(ds.sizes["time"], "time")
    names = [v for v in ds.data_vars if "time" in ds[v].dims]
    return ds, split, names


def _is_physionet(p: Path) -> bool:
    """PhysioNet 2012: a tar archive (unless it holds tables: those are unpacked and read as
    tables), or a folder whose ``.txt`` files are long ``Time,Parameter,Value`` records (a
    folder of per-station CSVs is a table series)."""
    if p.name.endswith((".tar.gz", ".tgz", ".tar")):
        return not _tar_of_tables(p)
    if not p.is_dir():
        return False
    first = next(iter(sorted(p.rglob("*.txt"))), None)
    if first is None:
        return False
    with open(first, encoding="utf-8", errors="replace") as f:
        return f.readline().strip().replace(" ", "") == "Time,Parameter,Value"


def _tar_of_tables(p: Path) -> bool:
    """Whether the tar archive's first files are tables (``.csv``, ``.psv``, ...) rather than
    PhysioNet 2012's records; an unreadable archive is left to the PhysioNet reader to report."""
    import tarfile

    from stdiff.datasets.table_files import is_table_file

    try:
        with tarfile.open(p) as tar:
            for member in tar:
                if member.isfile() and not Path(member.name).name.startswith("."):
                    return is_table_file(member.name) and not member.name.endswith(".txt")
    except (tarfile.TarError, OSError, EOFError):
        return False
    return False


def _timeseries(sources: list[str], opt: IngestOptions) -> tuple[xr.Dataset, Split, list[str]]:
    if len(sources) == 1 and _is_physionet(Path(sources[0])):
        if opt.train_period or opt.test_period or opt.test_months:
            raise ValueError(
                "PhysioNet splits by stay (CSDI's folds, --fold); train/test periods and months "
                "apply to weather and table series"
            )
        if opt.site_coords or opt.missing_values:
            flag = "--site-coords" if opt.site_coords else "--missing-values"
            raise ValueError(f"{flag} applies to tables, not PhysioNet stays")
        from stdiff.datasets.physionet import load_physionet2012

        ds = load_physionet2012(Path(sources[0]), progress=True)
        has = stays_with_data(ds["observed_mask"].values)  # stored: jobs split without a scan
        ds = ds.assign({HAS_DATA: ("stay", has.astype(np.uint8))})
        return ds, csdi_stay_split(ds, fold=opt.fold), ["values"]
    if opt.layout == "stays":
        return _stays(sources, opt)
    from stdiff.datasets.sites import load_series

    ds = load_series(
        sources,
        layout=opt.layout,
        targets=opt.targets,
        time_column=opt.time_column,
        time_columns=opt.time_columns,
        station_column=opt.station_column,
        variables=list(opt.variables) if opt.variables else None,
        drop_columns=opt.drop_columns,
        categorical=opt.categorical,
        freq=opt.freq,
    )
    if opt.site_coords:
        from stdiff.datasets.sites import attach_site_coords

        ds = attach_site_coords(ds, opt.site_coords)
    if opt.missing_values:
        ds = _mark_missing(ds, opt.missing_values)
    _warn_irregular(ds["time"].values, ", ".join(sources))
    split = series_split(ds, train_period=opt.train_period, test_period=opt.test_period,
                         test_months=opt.test_months, valid_months=opt.valid_months)  # fmt: skip
    return ds.assign(split=split_variable(split, ds.sizes["time"])), split, ["values"]


def _stays(sources: list[str], opt: IngestOptions) -> tuple[xr.Dataset, Split, list[str]]:
    """One table per stay (``datasets.stays``), split by stay into CSDI's folds (``--fold``)."""
    given = {"--train-period": opt.train_period, "--test-period": opt.test_period,
             "--test-months": opt.test_months, "--valid-months": opt.valid_months,
             "--targets": opt.targets, "--site-coords": opt.site_coords,
             "--station-column": opt.station_column, "--time-columns": opt.time_columns}  # fmt: skip
    flag = next((k for k, v in given.items() if v), None)
    if flag:
        raise ValueError(f"{flag} does not apply to --layout stays, which splits by stay (--fold)")
    from stdiff.datasets.sites import table_files
    from stdiff.datasets.stays import load_stays

    ds = load_stays(table_files(sources), time_column=opt.time_column, freq=opt.freq,
                    length=opt.stay_length, variables=opt.variables,
                    drop_columns=opt.drop_columns, categorical=opt.categorical)  # fmt: skip
    if opt.missing_values:
        ds = _mark_missing(ds, opt.missing_values)
    has = stays_with_data(ds["observed_mask"].values)
    ds = ds.assign({HAS_DATA: ("stay", has.astype(np.uint8))})
    if has.sum() < 5:
        raise DataError(ds.attrs["source"], f"{int(has.sum())} stays observe anything; the "
                        "fold split needs at least 5 (one table per stay)")  # fmt: skip
    return ds, csdi_stay_split(ds, fold=opt.fold), ["values"]


def _mark_missing(ds: xr.Dataset, sentinels: tuple[float, ...]) -> xr.Dataset:
    """Values equal to a sentinel (``-200``, ``-999``: a table's code for "no measurement")
    become missing: NaN, neither observed nor a target."""
    values = ds["values"].values
    bad = np.isin(values, np.asarray(sentinels, dtype=values.dtype))
    out = ds.assign(values=(ds["values"].dims, np.where(bad, np.nan, values), ds["values"].attrs))
    for m in ("observed_mask", "target_mask"):
        if m in ds:
            out[m] = ds[m].where(~bad, 0).astype(np.uint8)
    return out


def _warn_irregular(times: np.ndarray, where: str) -> None:
    """One ``stdiff: warning:`` line when a series' steps are irregular: its windows take rows
    as steps (``--freq`` puts it on a regular grid, with empty rows where it has none)."""
    from stdiff.datasets.windows import regular_runs

    gaps = int(regular_runs(times)[-1]) if len(times) else 0
    if gaps:
        hours = pd.Timedelta(np.median(np.diff(times))) / pd.Timedelta(hours=1)
        warnings.warn(
            StdiffWarning(
                f"{where}: the time axis has {gaps} gap(s) or irregular step(s) (median step "
                f"{hours:g} h); windows take rows as steps: pass --freq "
                "(e.g. 1h) for a regular grid"
            ),
            stacklevel=2,
        )


def _warn_untrainable(stats: xr.Dataset, names: list[str], split: Split, where: str) -> None:
    """One ``stdiff: warning:`` line when the training split leaves a variable (or some of its
    features) without statistics: ``stdiff train`` refuses such a store, though a model trained
    elsewhere can still impute or forecast it."""
    empty = []
    for name in names:
        mean = stats[f"{name}_mean"]
        if bool(mean.isnull().all()):
            empty.append(name)
        elif bool(mean.isnull().any()):
            dim = mean.dims[0]
            bad = mean[dim].values[np.asarray(mean.isnull()).reshape(-1)].tolist()
            shown = ", ".join(map(str, bad[:5])) + (
                f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            )
            empty.append(f"{name} ({dim} {shown})")
    if empty:
        warnings.warn(
            StdiffWarning(
                f"{where}: no observed training value for {'; '.join(empty)} ({split.describe()}); "
                "`stdiff train` will refuse this store: give more data, or set the split with "
                "--train-period / --test-period (a model trained elsewhere can still use it)"
            ),
            stacklevel=2,
        )


def _volume(p: Path, opt: IngestOptions) -> xr.Dataset | None:
    """The medical volume at ``p`` (NIfTI, DICOM file or series folder, a ``--kind medical``
    store), or None when ``p`` is none of these."""
    from stdiff.datasets import medical

    if p.name.lower().endswith((".nii", ".nii.gz", ".mgz", ".mgh")):
        return medical.load_nifti(p, axis=opt.axis)
    if p.suffix.lower() in _HDF5:
        from stdiff.datasets.hdf5_volume import load_hdf5_volume

        return load_hdf5_volume(p)
    if p.suffix.lower() in RAW_SUFFIXES:
        from stdiff.datasets.raw_volumes import load_raw_volume

        return load_raw_volume(p)
    if p.is_dir() and (p / "zarr.json").is_file():
        from stdiff.datasets.store import open_store

        ds = open_store(p)
        if ds.attrs.get("kind") != "medical":
            raise DataError(p, f"a {ds.attrs.get('kind', 'unknown')!r} store, not a medical volume")
        return ds
    if p.is_file():
        return medical.load_dicom(p) if _is_dicom(p) else None
    if _holds_dicom(p):
        return medical.load_dicom(p)
    series = [d.name for d in sorted(p.iterdir()) if d.is_dir() and _holds_dicom(d)]
    if series:
        shown = ", ".join(series[:3]) + (", ..." if len(series) > 3 else "")
        raise DataError(
            p, f"holds {len(series)} DICOM series folders ({shown}); ingest one series folder"
        )
    return None


def _is_dicom(path: Path) -> bool:
    """A ``.dcm`` name or the DICOM signature: "DICM" after a 128-byte preamble."""
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    with open(path, "rb") as f:
        return f.read(132)[128:] == b"DICM"


def _holds_dicom(folder: Path) -> bool:
    """Whether the folder's first file (names starting with "." and DICOMDIR aside) is DICOM."""
    files = sorted(
        q
        for q in folder.iterdir()
        if q.is_file() and not q.name.startswith(".") and q.name.upper() != "DICOMDIR"
    )
    return bool(files) and _is_dicom(files[0])


def _images(source: str, opt: IngestOptions) -> xr.Dataset:
    from stdiff.datasets import images

    p = Path(source)
    split = None if opt.split == "auto" else opt.split
    numpy = p.suffix.lower() in (".npz", ".npy")
    if p.suffix.lower() != ".npz" and (opt.images_key or opt.labels_key):
        raise DataError(p, "--images-key / --labels-key name the arrays of an .npz archive")
    volume = None if numpy else _volume(p, opt)
    if volume is not None:  # a volume's slices as images
        from stdiff.datasets.slices import parse_window, slices_as_images

        return slices_as_images(
            volume, opt.image_size, window=parse_window(opt.window), split=opt.split
        )
    if opt.window != "auto":
        raise DataError(p, "--window applies to volumes (NIfTI, DICOM, a --kind medical store)")
    if numpy:
        return images.load_npz(p, images_key=opt.images_key, labels_key=opt.labels_key,
                               split=split)  # fmt: skip
    from stdiff.datasets.cifar import is_cifar_folder, load_cifar_folder

    if is_cifar_folder(p):
        return load_cifar_folder(p, split=split)
    if p.is_dir() and any(q.name.endswith(("idx3-ubyte", "idx3-ubyte.gz")) for q in p.iterdir()):
        return images.load_mnist_folder(p, split=split)
    if p.is_dir():
        from stdiff.datasets.image_files import check_folder_fits
        from stdiff.datasets.image_splits import load_split_folders, split_folders

        size = opt.image_size if opt.resize_images else None
        check_folder_fits(p, size)
        if split_folders(p):  # train/, test/, val/ sub-folders of class folders
            return load_split_folders(p, size=size, split=split)
        return images.load_image_folder(p, size=size, split=split or "train")
    raise DataError(
        p,
        "expected an .npz or .npy file, a NIfTI, DICOM, HDF5 (fastMRI), MetaImage or NRRD "
        "volume, a DICOM series folder, a --kind medical store, an MNIST-style folder of idx "
        "files or a folder of class sub-folders",
    )


def _medical(source: str, opt: IngestOptions) -> xr.Dataset:
    p = Path(source)
    volume = None if p.is_dir() and (p / "zarr.json").is_file() else _volume(p, opt)
    if volume is None:
        raise DataError(p, "expected a NIfTI (.nii, .nii.gz, .mgz), DICOM (a file or a series "
                           "folder), HDF5 (fastMRI), MetaImage (.mha, .mhd) or NRRD volume")  # fmt: skip
    return volume


_HDF5 = (".h5", ".hdf5", ".hdf")  # fastMRI's files, or one volume array


def _sources(source: str | Path | Sequence[str | Path]) -> list[str]:
    sources = [str(source)] if isinstance(source, str | Path) else [str(s) for s in source]
    if not sources:
        raise ValueError("no input given")
    for s in sources:
        if "://" not in s and not Path(s).exists():
            raise DataError(s, "no such file or folder")
    return sources


def load_source(
    source: str | Path | Sequence[str | Path], opt: IngestOptions
) -> tuple[xr.Dataset, Split | None, list[str]]:
    """The canonical Dataset of ``source`` (several paths: per-station tables), its training split
    and the variables to normalise."""
    sources = _sources(source)
    if opt.kind == "timeseries":
        return _timeseries(sources, opt)
    if opt.kind == "weather":  # several files: combined along time
        return _weather(sources if len(sources) > 1 else sources[0], opt)
    if len(sources) > 1:
        raise ValueError(
            f"several inputs are read as weather files or per-station tables, not {opt.kind}"
        )
    source = sources[0]
    if opt.kind == "images":
        return _images(source, opt), None, []
    ds = _medical(source, opt)
    return (
        ds,
        Split("slice", np.arange(ds.sizes["slice"]), np.array([], int), np.array([], int)),
        ["image"],
    )


def _canonical(sources: list[str], where: str, opt: IngestOptions, unzipped: bool) -> xr.Dataset:
    """The store's content: the canonical dataset with its split and training statistics;
    ``where`` names the input (the archive when ``unzipped``, not its temporary folder)."""
    try:
        ds, split, names = load_source(sources, opt)
    except DataError as exc:  # the input may be another kind's: say which
        guess = _kind_of(Path(sources[0]))
        if guess is None or guess == opt.kind:
            raise
        raise DataError(exc.where, f"{exc.what}; it looks like --kind {guess} data") from None
    if split is not None and names:
        # held-out targets keep their truth in ``values``: statistics see only what is observed
        seen = (
            ds.assign(values=ds["values"].where(ds["observed_mask"] > 0))
            if "target_mask" in ds
            else ds
        )
        weather = opt.kind == "weather"
        stats = normalization_stats(seen, names, split, time_differences=weather, count_nan=weather)
        _warn_untrainable(stats, names, split, where)
        if weather:
            from stdiff.datasets.weather_ingest import fill_nan

            ds = fill_nan(ds, stats, opt.fill_nan)
        ds = attach_stats(ds, stats)
        ds.attrs["split"] = split.describe()
    if unzipped:
        ds.attrs["source"] = where
    ds.attrs.setdefault("source", where)
    ds.attrs["kind"] = opt.kind
    return ds


_KIND_SUFFIXES = {
    "images": (*IMAGE_SUFFIXES, ".npz", ".npy"),
    "medical": (".nii", ".nii.gz", ".mgz", ".mgh", ".dcm", *RAW_SUFFIXES),
    "weather": (".grib", ".grb", ".grib2", ".grb2"),
}


def _kind_of(path: Path) -> str | None:
    """The kind a file or folder (its first 200 files) looks like by its extensions, or None
    when that does not tell (netCDF, zarr, HDF5 serve several kinds)."""
    from stdiff.datasets.table_files import is_table_file

    if path.is_dir():
        files = [q for q, _ in zip(path.rglob("*"), range(200), strict=False) if q.is_file()]
    else:
        files = [path]
    votes: dict[str, int] = {}
    for f in files:
        name = f.name.lower()
        if name.endswith((".nc", ".nc4", ".h5", ".hdf5", ".zarr", ".json")):
            continue
        kind = "timeseries" if is_table_file(f) else next(
            (k for k, suffixes in _KIND_SUFFIXES.items() if name.endswith(suffixes)), None
        )  # fmt: skip
        if kind is not None:
            votes[kind] = votes.get(kind, 0) + 1
    return max(votes, key=votes.get) if votes else None


def ingest(
    source: str | Path | Sequence[str | Path],
    out: str | Path,
    opt: IngestOptions,
    *,
    progress: bool = False,
    overwrite: bool = False,
) -> IngestResult:
    """Ingest ``source`` (a path, or several per-station tables) into the zarr store ``out``
    (see module docstring). ``out`` may hold an earlier ingest of the same input and options (a
    no-op); an earlier ingest of anything else is replaced only with ``overwrite``, and no other
    path is ever replaced."""
    start = time.perf_counter()
    out = Path(out)
    claim_store(out, "ingest", [s for s in _sources(source) if "://" not in s], overwrite)
    extra = [f for f in (opt.targets, opt.site_coords) if f and Path(f).exists()]
    h = content_hash([*_sources(source), *extra], _hashed(opt))
    if store_hash(out) == h:
        return IngestResult(
            out, False, time.perf_counter() - start, f"{out}: up to date (same input, same options)"
        )
    if out.exists() and not overwrite:
        raise ValueError(
            f"--out {out}: holds an earlier ingest of other data or options; pass --overwrite "
            "to replace it, or choose a new path"
        )
    from stdiff.datasets.archives import unpacked

    given = _sources(source)
    native = [s for s in given if opt.kind == "timeseries" and _is_physionet(Path(s))]
    with unpacked(given, out, keep=native) as sources:
        ds = _canonical(sources, ", ".join(given), opt, unzipped=sources != given)
        written = write_store(ds, out, content_hash=h, progress=progress)
    dims = ", ".join(f"{d}={n}" for d, n in ds.sizes.items())
    filled = ds.attrs.get("filled_nan", {})
    note = "".join(
        f"; {v}: {f['values']} NaN set to its training mean"
        + (f" ({f['always_missing_cells']} cells missing at every time)" * bool(
            f["always_missing_cells"]))
        for v, f in filled.items()
    )  # fmt: skip
    summary = f"{out}: {opt.kind} ({dims}){note}"
    return IngestResult(out, written, time.perf_counter() - start, summary)
