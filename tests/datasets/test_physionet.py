"""PhysioNet 2012 on CSDI's hourly grid: hand-computed synthetic stays, error cases, real set-a."""

from __future__ import annotations

import functools
import io
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stdiff.datasets.errors import DataError
from stdiff.datasets.physionet import ATTRIBUTES, load_physionet2012

F = {name: k for k, name in enumerate(ATTRIBUTES)}
DESCRIPTORS = "00:00,RecordID,{rid}\n00:00,Age,54\n00:00,Gender,0\n00:00,Height,-1\n00:00,ICUType,4\n00:00,Weight,-1\n"

STAYS = {
    140003: "Time,Parameter,Value\n" + DESCRIPTORS.format(rid=140003),  # descriptors only
    140001: "Time,Parameter,Value\n"
    + DESCRIPTORS.format(rid=140001)
    + "00:07,HR,73\n"
    + "00:20,HR,75\n"
    + "00:35,HR,71\n"  # three HR values in hour 0: the last (71) wins
    + "00:35,Glucose,-1\n"  # -1 is kept as an observed value, as in CSDI
    + "01:10,Temp,36.5\n"
    + "01:50,SpO2,98\n"  # not among the 35: ignored
    + "01:55,Weight,80\n"  # time-varying Weight: not among the 35 either
    + "47:59,HR,88\n"  # hour 47
    + "48:00,HR,90\n",  # hour 48: no CSDI bin, dropped
    140002: "Time,Parameter,Value\n"
    + DESCRIPTORS.format(rid=140002)
    + "02:00,NIMAP,80\n"
    + "02:30,NIMAP,\n"  # an empty last value hides the earlier one (CSDI's dict keeps the last)
    + "10:15,pH,7.35\n"
    + "10:45,pH,7.4\n"
    + "10:45,Urine,120\n",
}
OUTCOMES = (
    "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n"
    "140001,6,1,5,-1,0\n140002,16,8,8,-1,1\n140003,21,11,19,-1,0\n140009,1,1,1,-1,1\n"
)


def _expected() -> np.ndarray:
    x = np.full((3, 48, 35), np.nan, dtype=np.float32)
    x[0, 0, F["HR"]] = 71
    x[0, 0, F["Glucose"]] = -1
    x[0, 1, F["Temp"]] = 36.5
    x[0, 47, F["HR"]] = 88
    x[1, 10, F["pH"]] = 7.4
    x[1, 10, F["Urine"]] = 120
    return x  # stay 140003 (index 2) has nothing


def _tarball(path: Path, members: dict[str, str | bytes], folder: str = "set-a") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(folder)
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for name, text in members.items():
            data = text.encode() if isinstance(text, str) else text
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def synthetic(tmp_path: Path) -> tuple[Path, Path]:
    """The same three stays as ``set-a.tar.gz`` (with Outcomes-a.txt beside it) and as a folder."""
    tarball = _tarball(tmp_path / "set-a.tar.gz", {f"{r}.txt": t for r, t in STAYS.items()})
    (tmp_path / "Outcomes-a.txt").write_text(OUTCOMES)
    folder = tmp_path / "copy" / "set-a"
    folder.mkdir(parents=True)
    for rid, text in STAYS.items():
        (folder / f"{rid}.txt").write_text(text)
    return tarball, folder


def _csdi_reference(text: str) -> np.ndarray:
    """CSDI's parse_id/parse_data logic, re-expressed (per-hour filter, dict keeps the last value)."""
    data = pd.read_csv(io.StringIO(text))
    data["Time"] = data["Time"].apply(lambda x: int(x.split(":")[0]))
    rows = []
    for h in range(48):
        last = data[data["Time"] == h].set_index("Parameter").to_dict()["Value"]
        rows.append([last.get(a, np.nan) for a in ATTRIBUTES])
    return np.array(rows, dtype=np.float64)


def test_synthetic_tarball_matches_hand_computed(synthetic):
    tarball, _ = synthetic
    ds = load_physionet2012(tarball)
    assert ds.sizes == {"stay": 3, "time": 48, "feature": 35}
    assert ds.stay.values.tolist() == [140001, 140002, 140003]
    assert ds.stay.dtype == np.int64
    assert ds.time.values.tolist() == list(range(48)) and ds.time.attrs["units"] == "h"
    assert tuple(ds.feature.values) == ATTRIBUTES and len(ATTRIBUTES) == 35
    assert ds["values"].dtype == np.float32 and ds["observed_mask"].dtype == np.uint8
    assert ds.attrs["kind"] == "timeseries" and ds.attrs["source"] == str(tarball)
    np.testing.assert_array_equal(ds["values"].values, _expected())
    np.testing.assert_array_equal(ds["observed_mask"].values, ~np.isnan(_expected()))
    assert int(ds["observed_mask"].sum()) == 6
    # outcomes found beside the tarball; an extra RecordID in the outcomes is ignored
    assert ds["in_hospital_death"].dtype == np.int8
    assert ds["in_hospital_death"].values.tolist() == [0, 1, 0]


def test_synthetic_agrees_with_csdi_reference(synthetic):
    ds = load_physionet2012(synthetic[0])
    for k, rid in enumerate(ds.stay.values):
        ref = _csdi_reference(STAYS[int(rid)])
        np.testing.assert_array_equal(ds["values"].values[k], ref.astype(np.float32))


def test_folder_equals_tarball(synthetic):
    tarball, folder = synthetic
    a = load_physionet2012(tarball, progress=True)
    b = load_physionet2012(folder)
    np.testing.assert_array_equal(a["values"].values, b["values"].values)
    np.testing.assert_array_equal(a["observed_mask"].values, b["observed_mask"].values)
    assert b.stay.values.tolist() == a.stay.values.tolist()
    # the folder's Outcomes-a.txt is looked for in and beside the folder: here neither
    assert "in_hospital_death" not in b
    (folder.parent / "Outcomes-a.txt").write_text(OUTCOMES)
    assert load_physionet2012(folder)["in_hospital_death"].values.tolist() == [0, 1, 0]


def test_explicit_outcomes_and_missing_stay(synthetic, tmp_path):
    tarball, folder = synthetic
    other = tmp_path / "elsewhere.csv"
    other.write_text(OUTCOMES.replace("140002,16,8,8,-1,1", "140002,16,8,8,-1,0"))
    assert load_physionet2012(folder, outcomes=other)["in_hospital_death"].values.tolist() == [
        0,
        0,
        0,
    ]
    short = tmp_path / "short.txt"
    short.write_text("RecordID,In-hospital_death\n140001,0\n")
    with pytest.raises(DataError, match=r"short\.txt: 2 stays have no outcome"):
        load_physionet2012(tarball, outcomes=short)
    bad = tmp_path / "bad.txt"
    bad.write_text("RecordID,Survival\n140001,0\n")
    with pytest.raises(DataError, match=r"bad\.txt: no column 'In-hospital_death'"):
        load_physionet2012(tarball, outcomes=bad)


def test_windows_line_endings_and_blank_lines(tmp_path):
    text = STAYS[140001].replace("\n", "\r\n") + "\r\n\r\n"
    tarball = _tarball(tmp_path / "set-a.tar.gz", {"140001.txt": text})
    ds = load_physionet2012(tarball)
    np.testing.assert_array_equal(ds["values"].values[0], _expected()[0])


# --------------------------------------------------------------------------- malformed input


def _one_line(err: pytest.ExceptionInfo[DataError]) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_truncated_gzip(synthetic, tmp_path):
    data = synthetic[0].read_bytes()
    cut = tmp_path / "set-a.tar.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"set-a\.tar\.gz: corrupt or truncated") as err:
        load_physionet2012(cut)
    _one_line(err)


def test_corrupt_gzip(synthetic, tmp_path):
    data = bytearray(synthetic[0].read_bytes())
    for k in range(20, len(data) - 10, 7):
        data[k] ^= 0x5A
    bad = tmp_path / "broken.tar.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"broken\.tar\.gz: corrupt or truncated"):
        load_physionet2012(bad)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not an archive at all\n" * 10)
    with pytest.raises(DataError, match=r"junk\.tar\.gz: corrupt or truncated"):
        load_physionet2012(junk)


def test_empty_archive_and_folder(tmp_path):
    empty = _tarball(tmp_path / "empty.tar.gz", {})
    with pytest.raises(DataError, match=r"empty\.tar\.gz: archive holds no <RecordID>\.txt"):
        load_physionet2012(empty)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match=r"nothing: folder holds no"):
        load_physionet2012(tmp_path / "nothing")
    with pytest.raises(DataError, match=r"absent: no such file or folder"):
        load_physionet2012(tmp_path / "absent")


def test_member_without_header(tmp_path):
    members = {"140001.txt": STAYS[140001], "140002.txt": "00:00,RecordID,140002\n00:07,HR,73\n"}
    tarball = _tarball(tmp_path / "set-a.tar.gz", members)
    with pytest.raises(
        DataError, match=r"set-a\.tar\.gz:set-a/140002\.txt: first line is .*expected the header"
    ) as err:
        load_physionet2012(tarball)
    _one_line(err)
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "140003.txt").write_text("")
    with pytest.raises(DataError, match=r"140003\.txt: first line is 'empty'"):
        load_physionet2012(folder)


@pytest.mark.parametrize("bad", ["7h30", "ab:cd", "12:75", "12", ":30"])
def test_bad_time_string(tmp_path, bad):
    text = STAYS[140002] + f"{bad},HR,80\n"
    tarball = _tarball(tmp_path / "set-a.tar.gz", {"140001.txt": STAYS[140001], "140002.txt": text})
    with pytest.raises(DataError, match=r"set-a/140002\.txt: line 13: bad time") as err:
        load_physionet2012(tarball)
    _one_line(err)


def test_bad_rows(tmp_path):
    extra = _tarball(tmp_path / "a.tar.gz", {"140001.txt": STAYS[140001] + "03:00,HR,80,1\n"})
    with pytest.raises(DataError, match=r"140001\.txt: line 17: expected 3 fields, found 4"):
        load_physionet2012(extra)
    word = _tarball(tmp_path / "b.tar.gz", {"140002.txt": STAYS[140002] + "03:00,HR,high\n"})
    with pytest.raises(DataError, match=r"140002\.txt: line 13: value 'high' is not a number"):
        load_physionet2012(word)
    other = _tarball(tmp_path / "c.tar.gz", {"140005.txt": STAYS[140001]})
    with pytest.raises(DataError, match=r"140005\.txt: line 2: RecordID 140001 disagrees"):
        load_physionet2012(other)


# --------------------------------------------------------------------------- the real set-a


@functools.cache
def _parse_real(path: Path) -> tuple[object, float]:
    start = time.perf_counter()
    ds = load_physionet2012(path)
    return ds, time.perf_counter() - start


@pytest.fixture
def set_a(shared_data: Path):
    """The real set-a, parsed once per test session (cached) however many tests use it."""
    tarball = shared_data / "physionet2012" / "set-a.tar.gz"
    if not tarball.is_file():
        pytest.skip(f"{tarball} is absent")
    return _parse_real(tarball)


@pytest.mark.realdata
def test_real_set_a_shape_and_missing_ratio(set_a):
    ds, seconds = set_a
    print(f"\nparsed real set-a in {seconds:.2f} s")
    assert seconds < 30
    assert ds.sizes == {"stay": 4000, "time": 48, "feature": 35}
    assert np.all(np.diff(ds.stay.values) > 0)
    missing = 1.0 - float(ds["observed_mask"].mean())
    print(f"missing ratio {missing:.4f}")
    assert 0.75 < missing < 0.85
    np.testing.assert_array_equal(ds["observed_mask"].values, ~np.isnan(ds["values"].values))
    assert ds["in_hospital_death"].sizes == {"stay": 4000}
    assert set(np.unique(ds["in_hospital_death"].values)) == {0, 1}


@pytest.mark.realdata
def test_real_set_a_agrees_with_csdi_reference(set_a, shared_data):
    """Forty stays re-parsed with CSDI's own per-hour logic give identical grids."""
    ds, _ = set_a
    wanted = set(ds.stay.values[::100].tolist())
    seen = 0
    with tarfile.open(shared_data / "physionet2012" / "set-a.tar.gz") as tar:
        for member in tar:
            rid = Path(member.name).stem
            if member.isfile() and rid.isdigit() and int(rid) in wanted:
                text = tar.extractfile(member).read().decode()
                ref = _csdi_reference(text).astype(np.float32)
                np.testing.assert_array_equal(ds["values"].sel(stay=int(rid)).values, ref)
                seen += 1
    assert seen == len(wanted) == 40
