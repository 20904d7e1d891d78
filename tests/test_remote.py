"""DATA and --out at URLs: s3:// against moto's S3 server process on loopback (credentials enforced), https?://
against a local HTTP server; the lifecycle end to end through the CLI, bounded memory, and one-line failures."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from types import SimpleNamespace

import pandas as pd
import pytest

from .conftest import PENGUINS, bm, free_port, read_json

s3fs = pytest.importorskip("s3fs", reason="the dev extras (s3fs, moto) are not installed")
pytest.importorskip("moto", reason="the dev extras (moto) are not installed")
pytestmark = pytest.mark.xdist_group("remote")


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> SimpleNamespace:
    """moto's standalone S3 server with authentication on: its first four calls (unauthenticated) make a user, its
    key, the user's policy and the bucket; every later call needs that key."""
    import boto3

    root = tmp_path_factory.mktemp("moto")
    port = free_port()
    log = open(root / "server.log", "w")  # noqa: SIM115  (open while the server runs)
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"})
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # (a TCP connect, not a request: requests count against the four)
            assert proc.poll() is None, (root / "server.log").read_text()[-2000:]
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.monotonic() < deadline, "moto server did not start in 60 s"
            time.sleep(0.2)
        admin = {"aws_access_key_id": "bootstrap", "aws_secret_access_key": "bootstrap", "region_name": "us-east-1",
                 "endpoint_url": endpoint}
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="bigmodel")
        key = iam.create_access_key(UserName="bigmodel")["AccessKey"]
        iam.put_user_policy(UserName="bigmodel", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        boto3.client("s3", **admin).create_bucket(Bucket="data")
        env = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
        yield SimpleNamespace(endpoint=endpoint, env=env, proc=proc)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture()
def aws(s3, monkeypatch):
    """The S3 server's credentials in the environment (as s3fs reads them), and a fresh filesystem to check with."""
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    s3fs.S3FileSystem.clear_instance_cache()  # (this process made one with other credentials before)
    yield s3fs.S3FileSystem()
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def web(tmp_path_factory) -> SimpleNamespace:
    """A local HTTP server over a folder holding penguins.csv (no range requests, as many servers)."""
    root = tmp_path_factory.mktemp("www")
    (root / "penguins.csv").write_bytes(PENGUINS.read_bytes())

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield SimpleNamespace(root=root, url=f"http://127.0.0.1:{server.server_port}")
    server.shutdown()


def _keys(fs, prefix: str) -> set[str]:
    return {k[len(prefix) + 1:] for k in fs.find(prefix)}


def test_the_lifecycle_reads_and_writes_s3(aws, tmp_path):
    """preprocess, train, evaluate and predict with every location on S3: the same prep as from the local file,
    manifests that name the URLs, evaluate's metrics written back into the run, no upload leftovers."""
    fs = aws
    fs.put_file(str(PENGUINS), "data/in/penguins.csv")
    bm("preprocess", "s3://data/in/penguins.csv", "--target", "species", "--out", "s3://data/prep")
    bm("preprocess", PENGUINS, "--target", "species", "--out", tmp_path / "prep")
    remote_prep = json.loads(fs.cat("data/prep/manifest.json"))
    assert remote_prep["data"]["path"] == "s3://data/in/penguins.csv"
    assert remote_prep["splits"] == read_json(tmp_path / "prep" / "manifest.json")["splits"]  # the same bytes
    assert remote_prep["data"]["sha256"] == read_json(tmp_path / "prep" / "manifest.json")["data"]["sha256"]

    train = bm("train", "s3://data/prep", "--out", "s3://data/run", "--set", "train.epochs=2", "--json")
    assert json.loads(train.stdout)["out"] == "s3://data/run"  # (not the local copy it was written to)
    run = json.loads(fs.cat("data/run/manifest.json"))
    assert run["prep_dir"] == "s3://data/prep" and {"model.keras", "model.onnx", "history.csv"} <= _keys(fs, "data/run")

    # no --out: the run's metrics go back into the run (its prep's test split read from S3 by the run's manifest),
    # and only what evaluate wrote: the model is not uploaded again
    model_written = fs.info("data/run/model.keras")["LastModified"]
    time.sleep(1.1)  # (S3's LastModified counts seconds)
    ev = json.loads(bm("evaluate", "s3://data/run", "--json").stdout)
    assert ev["data"]["source"] == "s3://data/prep/test.parquet" and ev["data"]["split"] == "test"
    fs.invalidate_cache()
    assert json.loads(fs.cat("data/run/metrics.json"))["metrics"] == ev["metrics"]
    assert fs.info("data/run/model.keras")["LastModified"] == model_written and fs.exists("data/run/eval/roc.png")

    bm("predict", "s3://data/run", "s3://data/in/penguins.csv", "--out", "s3://data/out/predictions.csv")
    predictions = pd.read_csv(io.BytesIO(fs.cat("data/out/predictions.csv")))
    assert len(predictions) == 344 and "predicted_species" in predictions.columns
    assert not [k for k in fs.find("data") if ".tmp-" in k]  # every upload aside was copied into place and removed


def test_a_failed_command_leaves_the_remote_folder_as_it_was(aws):
    """A preprocess that fails (a wrong target) into an existing S3 prep folder uploads nothing; writing a folder
    again replaces its objects (a file it no longer has is removed) and the manifest is the new one."""
    fs = aws
    fs.put_file(str(PENGUINS), "data/keep/penguins.csv")
    bm("preprocess", "s3://data/keep/penguins.csv", "--target", "species", "--out", "s3://data/keep/prep")
    before = {k: fs.info(k)["ETag"] for k in fs.find("data/keep/prep")}
    bad = bm("preprocess", "s3://data/keep/penguins.csv", "--target", "nope", "--out", "s3://data/keep/prep", code=2)
    assert bad.stderr.startswith("error: s3://data/keep/penguins.csv: target column 'nope'"), bad.stderr
    assert {k: fs.info(k)["ETag"] for k in fs.find("data/keep/prep")} == before

    fs.pipe("data/keep/prep/stale.txt", b"from an older version")
    bm("preprocess", "s3://data/keep/penguins.csv", "--target", "island", "--out", "s3://data/keep/prep")
    assert "stale.txt" not in _keys(fs, "data/keep/prep")
    assert json.loads(fs.cat("data/keep/prep/manifest.json"))["splits"]  # (a whole, new manifest)
    assert json.loads(fs.cat("data/keep/prep/schema.json"))["target"] == "island"


def test_https_reads_and_streaming_from_a_url(web, tmp_path):
    """An https?:// DATA gives the prep the local file gives, in memory and on the streaming path."""
    url = f"{web.url}/penguins.csv"
    for streaming in ("false", "true"):
        sets = ["--set", f"data.streaming={streaming}", "--set", "data.chunk_rows=100"]
        bm("preprocess", url, "--target", "species", "--out", tmp_path / f"web-{streaming}", *sets)
        bm("preprocess", PENGUINS, "--target", "species", "--out", tmp_path / f"local-{streaming}", *sets)
        got, want = (read_json(tmp_path / f"{w}-{streaming}" / "manifest.json") for w in ("web", "local"))
        assert got["data"]["path"] == url and got["splits"] == want["splits"], streaming
        assert got["data"]["sha256"] == want["data"]["sha256"]


def test_downloads_hold_one_block_in_memory(web, aws, monkeypatch, tmp_path):
    """A 36 MB object is copied with a bounded few MB in memory (blocks, and the clients' buffers: measured flat
    from 24 to 48 MB), from S3 (ranged reads of BLOCK bytes) and over HTTP (one streamed GET): the streaming
    path's promise for a file of any size."""
    from bigmodel_cli import remote

    body = b"a,b,c\n" + b"1.5,2.25,text\n" * 2_600_000
    (web.root / "big.csv").write_bytes(body)
    aws.pipe("data/big/big.csv", body)
    monkeypatch.setattr(remote, "BLOCK", 1 << 20)
    import fsspec.implementations.http  # noqa: F401  (imported before counting: not the copy's memory)

    for url in (f"{web.url}/big.csv", "s3://data/big/big.csv"):
        dest = tmp_path / url.rpartition("://")[0] / "big.csv"
        tracemalloc.start()
        try:
            remote.download(url, dest)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert dest.read_bytes() == body, url
        assert peak < len(body) / 3, (url, peak)


def test_failures_are_one_line_naming_the_url(web, aws, monkeypatch, tmp_path):
    """A missing object, a wrong credential, an unreachable endpoint, a missing package and a read-only scheme:
    exit 2 and one line naming the URL, before any stage work."""
    monkeypatch.chdir(tmp_path)  # (--out p: nothing is written, but not into the checkout if it were)
    aws.put_file(str(PENGUINS), "data/in/penguins.csv")

    def fails(*args: str) -> str:
        r = bm("preprocess", *args, "--target", "species", code=2)
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
        return r.stderr

    assert fails("s3://data/in/nope.csv", "--out", "p") == "error: s3://data/in/nope.csv: no such object\n"
    assert fails(f"{web.url}/nope.csv", "--out", "p") == f"error: {web.url}/nope.csv: no such object\n"
    assert "https:// is for reading" in fails(f"{web.url}/penguins.csv", "--out", "https://example.org/prep")

    s3fs.S3FileSystem.clear_instance_cache()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    assert fails("s3://data/in/penguins.csv", "--out", "p").startswith(
        "error: s3://data/in/penguins.csv: access denied; check the credentials (AWS_ACCESS_KEY_ID")

    s3fs.S3FileSystem.clear_instance_cache()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    assert fails("s3://data/in/penguins.csv", "--out", "p").startswith(
        "error: s3://data/in/penguins.csv: cannot reach the server (Could not connect to the endpoint URL")
    s3fs.S3FileSystem.clear_instance_cache()

    port = free_port()
    assert fails(f"http://127.0.0.1:{port}/penguins.csv", "--out", "p").startswith(
        f"error: http://127.0.0.1:{port}/penguins.csv: cannot reach the server (")
    assert fails("gs://bucket/penguins.csv", "--out", "p") == (
        "error: gs://bucket/penguins.csv: gs:// needs the gcsfs package: pip install 'bigmodel[cloud]'\n")
