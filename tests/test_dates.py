"""Date and time columns as a kind of their own (#28): found from ISO 8601 strings (or a configured format),
fitted as days since 1970 with cyclic encodings of the week and the year (and the day, with times), the same in
both preprocess paths, learned from, served from strings, and exported with parity."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from .conftest import bm, read_json

# under `make test` (pytest -n 2 --dist loadgroup) one worker runs this module, so its module fixtures are made once
pytestmark = pytest.mark.xdist_group("dates")


def _days_table(n: int = 420, seed: int = 0) -> pd.DataFrame:
    """A busy/quiet label that only the day of the week decides (weekends are quiet), with a little noise column."""
    rng = np.random.default_rng(seed)
    day = pd.Timestamp("2022-01-03") + pd.to_timedelta(rng.permutation(n), unit="D")
    return pd.DataFrame({"day": day.strftime("%Y-%m-%d"), "noise": rng.normal(size=n).round(3),
                         "busy": np.where(day.day_of_week >= 5, "quiet", "busy")})


@pytest.fixture(scope="module")
def dated(tmp_path_factory):
    root = tmp_path_factory.mktemp("dates")
    df = _days_table()
    df.loc[7, "day"] = ""  # one missing date: imputed with the median date
    df.to_csv(root / "days.csv", index=False)
    fast = ["--set", "train.epochs=40", "--set", "train.batch_size=32", "--set", "model.ensemble=2"]
    bm("preprocess", root / "days.csv", "--target", "busy", "--out", root / "prep", *fast)
    bm("train", root / "prep", "--out", root / "run")
    return root


def test_an_iso_date_column_is_a_date(dated):
    schema = read_json(dated / "prep" / "schema.json")
    day = next(f for f in schema["features"] if f["name"] == "day")
    assert day["kind"] == "date" and day["periods"] == [7.0, 365.2425] and day["format"] is None
    first = (pd.Timestamp("2022-01-03") - pd.Timestamp("1970-01-01")).days
    assert first <= day["min"] < first + 10 and first + 409 < day["max"] <= first + 419  # days since 1970, of train
    report = read_json(dated / "prep" / "report.json")["columns"]["day"]
    assert report["kind"] == "date" and report["missing"] == 1
    assert report["imputed_with"] == str(pd.Timestamp(day["fill"], unit="D").date())  # a date, not a number


def test_the_streamed_path_fits_the_same_date(dated, tmp_path):
    bm("preprocess", dated / "days.csv", "--target", "busy", "--out", tmp_path / "prep",
       "--set", "data.streaming=true", "--set", "data.chunk_rows=50")
    assert read_json(tmp_path / "prep" / "schema.json")["features"] == \
        read_json(dated / "prep" / "schema.json")["features"]


def test_the_cycles_are_the_weekday_and_the_day_of_the_year(dated):
    from bigmodel_cli import features
    from bigmodel_cli.schema import Schema, to_inputs

    schema = Schema.load(dated / "prep")
    encoder = features.preprocessing_model(schema)
    days = ["1970-01-01", "1970-01-08", "1971-01-01", "2024-06-15", "2024-06-22"]  # Thu, Thu; a year later; Sat, Sat
    x = features.apply(encoder, to_inputs(pd.DataFrame({"day": days, "noise": 0.0}), schema, "rows"))
    date = x[:, :features.widths(schema)[0]]  # the date's block comes first: scaled days, bins, then the cycles
    week, year = date[:, -4:-2], date[:, -2:]
    np.testing.assert_allclose(week[0], [0.0, 1.0], atol=1e-6)  # day 0: the start of the week's circle
    np.testing.assert_allclose(week[1], week[0], atol=1e-5)  # a week later: the same point
    np.testing.assert_allclose(week[3], week[4], atol=1e-4)
    assert np.abs(week[3] - week[0]).max() > 0.5  # another weekday: another point
    np.testing.assert_allclose(year[2], [np.sin(2 * np.pi * 365 / 365.2425), np.cos(2 * np.pi * 365 / 365.2425)],
                               atol=1e-4)


def test_the_network_learns_the_weekday_from_the_date(dated, tmp_path):
    """Weekends are quiet: a date the network never saw is still a Saturday. Read as a category (the old
    behaviour, a date per row), the unseen test dates say nothing and accuracy falls to the weekday share."""
    doc = json.loads(bm("evaluate", dated / "run", "--json").stdout)
    assert doc["metrics"]["accuracy"] >= 0.9, doc["metrics"]
    bm("preprocess", dated / "days.csv", "--target", "busy", "--out", tmp_path / "prep",
       "--set", "data.columns={day: categorical}", "--set", "train.epochs=40", "--set", "train.batch_size=32",
       "--set", "model.ensemble=2")
    bm("train", tmp_path / "prep", "--out", tmp_path / "run")
    as_category = json.loads(bm("evaluate", tmp_path / "run", "--json").stdout)["metrics"]["accuracy"]
    assert as_category < doc["metrics"]["accuracy"] - 0.1


def test_dates_export_to_onnx_and_tflite_with_parity(dated):
    for fmt in ("onnx", "tflite"):
        doc = json.loads(bm("export", dated / "run", "--format", fmt, "--out", dated / fmt, "--json").stdout)
        assert doc["passed"], doc
        assert max(doc["max_abs_diff"].values()) <= 1e-5
    inputs = read_json(dated / "onnx" / "manifest.json")["inputs"]
    assert inputs["day"] == {"column": "day", "dtype": "float32", "unit": "days since 1970-01-01 UTC"}


def test_predict_and_serve_take_the_date_as_written(dated, tmp_path):
    from bigmodel_cli.schema import Schema
    from bigmodel_cli.serving.requests import BadRequest, parse

    rows = pd.DataFrame({"day": [" 2022-06-04", "2022-06-06 "], "noise": [0.0, 0.0]})  # a Saturday, a Monday
    rows.to_csv(tmp_path / "new.csv", index=False)
    bm("predict", dated / "run", tmp_path / "new.csv", "--out", tmp_path / "p.csv")
    assert pd.read_csv(tmp_path / "p.csv")["predicted_busy"].tolist() == ["quiet", "busy"]
    schema = Schema.load(dated / "prep")
    x, _ = parse(json.dumps({"instances": [{"day": "2030-01-05T00:00:00Z", "noise": 1}]}).encode(), schema)
    assert x["day"][0, 0] == (pd.Timestamp("2030-01-05") - pd.Timestamp("1970-01-01")).days
    with pytest.raises(BadRequest, match="column 'day' holds dates"):
        parse(json.dumps({"instances": [{"day": "next tuesday", "noise": 1}]}).encode(), schema)


def test_times_of_day_offsets_and_formats():
    from bigmodel_cli.schema import date_column

    days = date_column(pd.Series(["1970-01-02T12:00:00", "1970-01-02T12:00:00+02:00", None, " "]), "t", "f")
    np.testing.assert_allclose(days[:2], [1.5, 1.5 - 2 / 24])  # an offset is converted to UTC
    assert np.isnan(days[2:]).all()
    assert date_column(pd.Series(["02/01/1970"]), "t", "f", "%d/%m/%Y")[0] == 1.0
    assert date_column(pd.Series(pd.to_datetime(["1970-01-03"]).tz_localize("Europe/Paris")), "t", "f")[0] == \
        pytest.approx(2 - 1 / 24)


@pytest.mark.parametrize("streaming", ["false", "true"])
def test_a_configured_format_and_a_bad_date(tmp_path, streaming):
    df = _days_table(60)
    df["day"] = pd.to_datetime(df["day"]).dt.strftime("%d/%m/%Y %H:%M")
    df.loc[:29, "day"] = pd.to_datetime(df.loc[:29, "day"], format="%d/%m/%Y %H:%M").dt.strftime("%d/%m/%Y 06:%M")
    df.to_csv(tmp_path / "eu.csv", index=False)
    common = ["--target", "busy", "--set", f"data.streaming={streaming}", "--set", "data.chunk_rows=20"]
    bm("preprocess", tmp_path / "eu.csv", "--out", tmp_path / "prep", *common,
       "--set", "data.date_formats={day: '%d/%m/%Y %H:%M'}")
    day = read_json(tmp_path / "prep" / "schema.json")["features"][0]
    assert day["kind"] == "date" and day["format"] == "%d/%m/%Y %H:%M"
    assert day["periods"] == [1.0, 7.0, 365.2425]  # times of day: the day's cycle too
    df.loc[45, "day"] = "45/13/2022 10:00"
    df.to_csv(tmp_path / "bad.csv", index=False)
    r = bm("preprocess", tmp_path / "bad.csv", "--out", tmp_path / "bad", *common,
           "--set", "data.date_formats={day: '%d/%m/%Y %H:%M'}", code=2)
    assert "column 'day' holds dates (%d/%m/%Y %H:%M) but data row 46 holds '45/13/2022 10:00'" in r.stderr
    assert "Traceback" not in r.stderr


def test_dates_far_from_1970_and_a_bad_format():
    """Dates beyond nanoseconds' 1677-2262 (kept by pandas in seconds or microseconds) are days like any other;
    a format pandas cannot use is a one-line error naming data.date_formats (it was exit 3)."""
    from bigmodel_cli.errors import DataError
    from bigmodel_cli.schema import date_column

    dates = ["0001-01-01", "2262-05-01", "9999-12-31"]
    want = [(np.datetime64(d) - np.datetime64("1970-01-01")).astype(int) for d in dates]
    assert date_column(pd.Series(dates), "d", "f").tolist() == want == [-719162, 106771, 2932896]
    stored = pd.Series(pd.array(["9999-12-31"], dtype="datetime64[s]"))  # a Parquet timestamp
    assert date_column(stored, "d", "f")[0] == 2932896
    for fmt in ("%Q", "%Y %Y"):
        with pytest.raises(DataError, match=r"data.date_formats: '.*' for column 'd' is not a strftime format"):
            date_column(pd.Series(["2020"]), "d", "f.csv", fmt)
