"""GRIB ingest (``pip install stdiff[grib]``): small GRIB 2 files written in the test by ecCodes'
Python bindings (they ship ecCodes itself as a wheel, so nothing is fetched at run time), read
back in the canonical form. Values are packed to 16 bits by GRIB: compared to 1e-3 K."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stdiff.datasets.errors import DataError
from stdiff.datasets.weather import open_weather

HAVE_GRIB = importlib.util.find_spec("cfgrib") is not None and (
    importlib.util.find_spec("eccodes") is not None
)
pytestmark = pytest.mark.skipif(
    not HAVE_GRIB,
    reason="cfgrib/eccodes not installed: pip install -c constraints.txt -e '.[grib]'",
)
TIMES = pd.date_range("2013-01-01", periods=3, freq="6h")


def _field(lat: np.ndarray, lon_signed: np.ndarray, k: int) -> np.ndarray:
    return 280 + lat[:, None] / 10 + lon_signed[None, :] / 4 + k


def _write_grib(path: Path, lat_desc: np.ndarray, lon_signed: np.ndarray) -> None:
    """One ``2t`` message per time on a regular lat/lon grid scanned north to south, west to
    east; longitudes encoded in [0, 360) as GRIB 2 requires."""
    import eccodes

    step_lon, step_lat = lon_signed[1] - lon_signed[0], lat_desc[0] - lat_desc[1]
    with path.open("wb") as f:
        for k, t in enumerate(TIMES):
            h = eccodes.codes_grib_new_from_samples("regular_ll_sfc_grib2")
            try:
                for key, value in (("Ni", lon_signed.size), ("Nj", lat_desc.size),
                                   ("dataDate", int(t.strftime("%Y%m%d"))),
                                   ("dataTime", t.hour * 100)):  # fmt: skip
                    eccodes.codes_set_long(h, key, int(value))
                for key, value in (
                    ("latitudeOfFirstGridPointInDegrees", lat_desc[0]),
                    ("latitudeOfLastGridPointInDegrees", lat_desc[-1]),
                    ("longitudeOfFirstGridPointInDegrees", lon_signed[0] % 360),
                    ("longitudeOfLastGridPointInDegrees", lon_signed[-1] % 360),
                    ("iDirectionIncrementInDegrees", step_lon),
                    ("jDirectionIncrementInDegrees", step_lat),
                ):
                    eccodes.codes_set(h, key, float(value))
                eccodes.codes_set(h, "shortName", "2t")
                eccodes.codes_set_values(h, _field(lat_desc, lon_signed, k).ravel())
                eccodes.codes_write(h, f)
            finally:
                eccodes.codes_release(h)


@pytest.mark.parametrize(
    "lon_signed",
    [np.arange(200.0, 230.1, 5.0), np.arange(-10.0, 2.1, 2.0)],
    ids=["regional 200..230E", "crossing 0 (-10..2)"],
)
def test_grib_ingests_in_canonical_form(tmp_path: Path, lon_signed: np.ndarray) -> None:
    lat_desc = np.arange(60.0, 29.9, -10.0)
    path = tmp_path / "t2m.grib2"
    _write_grib(path, lat_desc, lon_signed)
    ds = open_weather(path)
    assert list(ds.data_vars) == ["t2m"] and ds["t2m"].dims == ("time", "lat", "lon")
    assert ds["t2m"].attrs["units"] == "K" and ds["t2m"].dtype == np.float32
    np.testing.assert_array_equal(ds["time"].values, TIMES.values)
    np.testing.assert_allclose(ds["lat"], lat_desc[::-1])
    np.testing.assert_allclose(ds["lon"], lon_signed)
    expected = np.stack([_field(lat_desc[::-1], lon_signed, k) for k in range(len(TIMES))])
    np.testing.assert_allclose(ds["t2m"].values, expected, atol=1e-3)


def test_truncated_grib_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.grib2"
    _write_grib(path, np.arange(60.0, 29.9, -10.0), np.arange(200.0, 230.1, 5.0))
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DataError, match=r"broken\.grib2"):
        open_weather(path)
