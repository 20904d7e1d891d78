"""`bigmodel serve`: a real server process and a real HTTP client, speaking TF Serving's REST API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from .conftest import PENGUINS, bm

# under `make test` (pytest -n 2 --dist loadgroup) one worker runs this module, so its module fixtures are made once
pytestmark = pytest.mark.xdist_group("serve")

TOKEN = "s3cret-token-of-some-length"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, folder: Path, *args: str, env: dict | None = None, ca: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"{'https' if ca else 'http'}://127.0.0.1:{self.port}"
        self.verify: str | bool = str(ca) if ca else True
        self.proc = subprocess.Popen([sys.executable, "-m", "bigmodel_cli", *(["--verbose"] if "-v" in args else []),
                                      "serve", str(folder), "--port", str(self.port),
                                      *[a for a in args if a != "-v"]],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
        self.ready_was = self.wait_ready()

    def wait_ready(self, timeout: float = 90) -> list[int]:
        """Poll /readyz until 200; the statuses seen on the way."""
        seen: list[int] = []
        headers = {"Authorization": f"Bearer {TOKEN}"}
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                r = httpx.get(f"{self.url}/readyz", headers=headers, timeout=5, verify=self.verify)
                if not seen or seen[-1] != r.status_code:
                    seen.append(r.status_code)
                if r.status_code == 200:
                    return seen
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"not ready after {timeout} s")

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = self.proc.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        return self.proc.returncode, stderr


@pytest.fixture(scope="module")
def server(penguins_run):
    s = Server(penguins_run)
    yield s
    s.stop()


def rows(n: int = 6) -> pd.DataFrame:
    """n >= 3 raw rows, among them a missing number, a missing and an unseen category."""
    raw = pd.read_csv(PENGUINS).drop(columns="species").head(max(n, 3)).copy()
    raw.loc[0, "bill_length_mm"] = np.nan
    raw.loc[1, "island"], raw.loc[2, "sex"] = None, "Atlantis"
    return raw


def as_instances(df: pd.DataFrame) -> list[dict]:
    return [{c: (None if pd.isna(v) else v.item() if hasattr(v, "item") else v) for c, v in r.items()}
            for r in df.to_dict(orient="records")]


def predicted(run: Path, df: pd.DataFrame, tmp_path: Path) -> np.ndarray:
    df.to_csv(tmp_path / "rows.csv", index=False)
    bm("predict", run, tmp_path / "rows.csv", "--out", tmp_path / "p.csv")
    p = pd.read_csv(tmp_path / "p.csv")
    return p[[c for c in p.columns if c.startswith("prob_")]].to_numpy()


def test_both_request_formats_equal_predict(server, penguins_run, tmp_path):
    df = rows()
    want = predicted(penguins_run, df, tmp_path)
    url = f"{server.url}/v1/models/model:predict"
    r = httpx.post(url, json={"instances": as_instances(df)})
    assert r.status_code == 200, r.text
    assert np.allclose(r.json()["predictions"], want, atol=1e-6)
    cols = {c: [i[c] for i in as_instances(df)] for c in df.columns}
    r = httpx.post(f"{server.url}/v1/models/model/versions/1:predict", json={"inputs": cols})
    assert r.status_code == 200 and np.allclose(r.json()["outputs"], want, atol=1e-6)
    # TF Serving's one-element lists per column, and a scalar per column for one row
    one = {c: [v] for c, v in as_instances(df.head(1))[0].items()}
    r = httpx.post(url, json={"instances": [one]})
    assert np.allclose(r.json()["predictions"], want[:1], atol=1e-6)
    r = httpx.post(url, json={"inputs": as_instances(df.head(1))[0]})
    assert np.allclose(r.json()["outputs"], want[:1], atol=1e-6)
    # JSON's NaN for a missing number
    body = json.dumps({"instances": as_instances(df)}).replace("null", "NaN", 1)
    assert np.allclose(httpx.post(url, content=body).json()["predictions"], want, atol=1e-6)


def test_status_and_health(server):
    assert server.ready_was[-1] == 200 and 503 in server.ready_was  # listening first, ready once warmed up
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "up"}
    status = httpx.get(f"{server.url}/v1/models/model").json()
    assert status == {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                                "status": {"error_code": "OK", "error_message": ""}}]}


BAD = {
    "missing column": ({"instances": [{"island": "Dream"}]}, 400, "missing column(s) the model needs: bill_length_mm"),
    "wrong type": ({"inputs": {**{c: [1.0] for c in ["bill_length_mm", "bill_depth_mm", "flipper_length_mm",
                                                       "body_mass_g", "year"]}, "island": ["Dream"], "sex": ["male"],
                               "bill_depth_mm": ["deep"]}}, 400, "column 'bill_depth_mm' is numeric; got 'deep'"),
    "both formats": ({"instances": [], "inputs": {}}, 400, "exactly one of"),
    "neither format": ({"rows": []}, 400, "exactly one of"),
    "not an object": ([1, 2], 400, "JSON object"),
    "instance not an object": ({"instances": [3]}, 400, "instances[0] must be an object"),
    "nested value": ({"instances": [{"island": {"a": 1}}]}, 400, "instances[0].island"),
    "ragged columns": ({"inputs": {"island": ["a", "b"], "sex": ["male"]}}, 400, "differ in length"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_requests_get_4xx_naming_the_field(server, case):
    body, status, words = BAD[case]
    r = httpx.post(f"{server.url}/v1/models/model:predict", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


def test_hostile_values_get_4xx_or_an_answer_never_a_500(server):
    url = f"{server.url}/v1/models/model:predict"
    row = as_instances(rows(3))[0]
    for value, words in ((int("9" * 400), "cannot be read"), ("\ud800", "cannot be read")):
        column = "year" if isinstance(value, int) else "island"
        body = json.dumps({"instances": [{**row, column: value}]})
        r = httpx.post(url, content=body)
        assert r.status_code == 400 and words in r.json()["error"], (value, r.text)
    r = httpx.post(url, content=b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    r = httpx.post(url, json={"instances": [{**row, "year": 3e38}]})  # in float32, but overflows the scaling
    assert r.status_code == 200, r.text


def test_metrics_for_prometheus_count_requests_rows_and_latency(server):
    """GET /metrics, read with prometheus_client's own parser: predict requests by status code, rows predicted and
    the latency histogram move by what was sent; the model's readiness and load time; the process's memory."""
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict[tuple[str, tuple], float]:
        r = httpx.get(f"{server.url}/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
        samples = [s for family in text_string_to_metric_families(r.text) for s in family.samples]
        assert all(s.labels.get("model", "model") == "model" and s.labels.get("version", "1") == "1" for s in samples)
        return {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("model", "version")))): s.value
                for s in samples}

    before = scrape()
    url = f"{server.url}/v1/models/model:predict"
    for n in (3, 4, 5):
        assert httpx.post(url, json={"instances": as_instances(rows(n))}).status_code == 200
    for body in BAD["missing column"][0], BAD["not an object"][0]:
        assert httpx.post(url, json=body).status_code == 400
    after = scrape()

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("bigmodel_requests_total", code="200") == 3 and moved("bigmodel_requests_total", code="400") == 2
    assert moved("bigmodel_rows_predicted_total") == 12
    assert moved("bigmodel_request_seconds_count") == 5 and moved("bigmodel_request_seconds_bucket", le="+Inf") == 5
    assert 0 < moved("bigmodel_request_seconds_sum") < 5 * 10
    assert after[("bigmodel_model_ready", ())] == 1 and 0 < after[("bigmodel_model_load_seconds", ())] < 90
    assert after[("bigmodel_requests_in_flight", ())] == 0
    assert after[("process_resident_memory_bytes", ())] > 50e6


def test_metrics_show_drift_of_the_rows_served(server):
    """The last 1000 rows predicted, compared with the train split (reference.json) when /metrics is scraped: rows
    drawn from the training data raise no alarm on body_mass_g; the same rows 3 kg heavier do."""
    from prometheus_client.parser import text_string_to_metric_families

    def drift() -> dict[tuple[str, str], float]:
        text = httpx.get(f"{server.url}/metrics").text
        return {(s.name, s.labels.get("column", "")): s.value for family in text_string_to_metric_families(text)
                for s in family.samples if s.name.startswith("bigmodel_drift_")}

    url = f"{server.url}/v1/models/model:predict"
    like = pd.read_csv(PENGUINS).drop(columns="species").sample(1000, replace=True, random_state=0)
    assert httpx.post(url, json={"instances": as_instances(like)}, timeout=60).status_code == 200
    calm = drift()
    assert calm[("bigmodel_drift_window_rows", "")] == 1000
    assert {c for n, c in calm if n == "bigmodel_drift_psi"} == {
        "island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "sex", "year"}
    assert calm[("bigmodel_drift_alarm", "body_mass_g")] == 0 and calm[("bigmodel_drift_psi", "body_mass_g")] < 0.2
    heavy = like.assign(body_mass_g=like["body_mass_g"] + 3000)
    assert httpx.post(url, json={"instances": as_instances(heavy)}, timeout=60).status_code == 200
    alarmed = drift()
    assert alarmed[("bigmodel_drift_alarm", "body_mass_g")] == 1 and alarmed[("bigmodel_drift_psi", "body_mass_g")] > 1
    assert alarmed[("bigmodel_drift_alarm", "island")] == 0  # (the other columns are as they were)


def test_a_new_version_is_swapped_in_under_load_without_a_failed_request(penguins_run, penguins_prep, tmp_path):
    """A base of versions (NAME/1: a run; then NAME/3 appears, whole, by a rename) served on onnxruntime: requests
    keep coming while version 3 is loaded aside and swapped in; none fails, the answers switch from 1's to 3's; a
    broken version 4 is reported in the model status and 3 goes on serving; a version 2 that turns up late (older
    than the one serving) is not loaded."""
    import threading

    base = tmp_path / "penguins"
    shutil.copytree(penguins_run, base / "1")
    other = tmp_path / "other"
    bm("train", penguins_prep, "--out", other, "--set", "train.epochs=2", "--set", "seed=7",
       "--set", "train.refit=false", "--set", "train.tensorboard=false")
    df = rows(6)
    first, second = predicted(penguins_run, df, tmp_path), predicted(other, df, tmp_path)
    assert not np.allclose(first, second, atol=1e-3)  # (the two versions answer differently)
    s = Server(base, "--runtime", "onnx", "--set", "serve.poll_seconds=0.2")
    url, body = f"{s.url}/v1/models/model:predict", {"instances": as_instances(df)}
    answers: list[tuple[int, list]] = []
    done = threading.Event()

    def keep_asking() -> None:
        with httpx.Client(timeout=30) as client:
            while not done.is_set():
                r = client.post(url, json=body)
                answers.append((r.status_code, r.json().get("predictions")))

    def status(timeout: float = 60) -> dict[str, dict]:
        return {v["version"]: v for v in httpx.get(f"{s.url}/v1/models/model").json()["model_version_status"]}

    def wait_for(version: str, state: str) -> dict[str, dict]:
        end = time.monotonic() + 60
        while (got := status()).get(version, {}).get("state") != state:
            assert time.monotonic() < end, got
            time.sleep(0.1)
        return got

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        time.sleep(0.5)
        shutil.copytree(other, tmp_path / ".incoming")
        (tmp_path / ".incoming").rename(base / "3")  # (a version appears whole, as export --version writes it)
        got = wait_for("3", "AVAILABLE")
        assert got["1"]["state"] == "END"
        time.sleep(0.5)
    finally:
        done.set()
        asker.join(timeout=60)
    assert answers and all(code == 200 for code, _ in answers), {code for code, _ in answers}
    assert np.allclose(answers[0][1], first, atol=1e-5) and np.allclose(answers[-1][1], second, atol=1e-5)
    switched = [i for i, (_, p) in enumerate(answers) if np.allclose(p, second, atol=1e-5)]
    assert switched == list(range(switched[0], len(answers))), "answers went back to version 1"
    assert httpx.post(f"{s.url}/v1/models/model/versions/3:predict", json=body).status_code == 200
    assert httpx.post(f"{s.url}/v1/models/model/versions/1:predict", json=body).status_code == 404  # unloaded

    broken = tmp_path / ".broken"
    shutil.copytree(other, broken)
    (broken / "model.onnx").write_bytes(b"not a model")
    broken.rename(base / "4")
    got = wait_for("4", "END")
    assert got["4"]["status"]["error_message"] and got["3"]["state"] == "AVAILABLE"
    shutil.copytree(penguins_run, tmp_path / ".late")
    (tmp_path / ".late").rename(base / "2")
    time.sleep(1.5)  # (polled every 0.2 s)
    assert "2" not in status() and status()["3"]["state"] == "AVAILABLE"
    shutil.rmtree(base / "4")  # the broken version replaced by a good one of the same number: tried afresh
    time.sleep(1.0)  # (seen gone by a poll)
    shutil.copytree(other, tmp_path / ".fixed")
    (tmp_path / ".fixed").rename(base / "4")
    wait_for("4", "AVAILABLE")
    r = httpx.post(url, json=body)
    assert r.status_code == 200 and np.allclose(r.json()["predictions"], second, atol=1e-5)
    code, stderr = s.stop()
    assert code == 0 and "version 3 serving" in stderr and "version 4 failed" in stderr, stderr
    assert "version 4 serving" in stderr, stderr


def test_version_policies_and_labels(penguins_run, tmp_path):
    """TF Serving's version policies: `latest:2` keeps the two newest loaded (a new version 4 loads, 2 is unloaded;
    removing 4 rolls back to 2 and 3), a request pins one by /versions/N or /labels/LABEL, the answering version is
    counted in /metrics; `1,3` serves exactly those; a bad policy or label is exit 2 naming it."""
    from prometheus_client.parser import text_string_to_metric_families

    base = tmp_path / "base"
    for v in (1, 2, 3):
        shutil.copytree(penguins_run, base / str(v))
    s = Server(base, "--runtime", "onnx", "--versions", "latest:2", "--label", "stable=3",
               "--set", "serve.poll_seconds=0.2")
    body = {"instances": as_instances(rows(3))}

    def states() -> dict[str, str]:
        return {v["version"]: v["state"] for v in httpx.get(f"{s.url}/v1/models/model").json()["model_version_status"]}

    def wait_for(expected: dict[str, str]) -> None:
        end = time.monotonic() + 60
        while {v: st for v, st in states().items() if v in expected} != expected:
            assert time.monotonic() < end, states()
            time.sleep(0.1)

    def answered_by() -> dict[str, float]:
        page = httpx.get(f"{s.url}/metrics").text
        return {x.labels["version"]: x.value for f in text_string_to_metric_families(page) if f.name ==
                "bigmodel_requests" for x in f.samples if x.name == "bigmodel_requests_total"}

    def predict(path: str) -> httpx.Response:
        return httpx.post(f"{s.url}/v1/models/model{path}:predict", json=body)

    try:
        assert states() == {"3": "AVAILABLE", "2": "AVAILABLE"}  # the two newest; 1 never loaded
        assert [predict(p).status_code for p in ("", "/versions/2", "/versions/3", "/labels/stable")] == [200] * 4
        assert answered_by() == {"3": 3.0, "2": 1.0}  # (no version: the newest)
        r = predict("/versions/1")
        assert r.status_code == 404 and "Specific(model, 1)" in r.json()["error"]
        r = predict("/labels/nope")
        assert r.status_code == 404 and "Unrecognized servable version label: nope" in r.json()["error"]
        shutil.copytree(penguins_run, tmp_path / ".v4")
        (tmp_path / ".v4").rename(base / "4")
        wait_for({"4": "AVAILABLE", "3": "AVAILABLE", "2": "END"})
        assert predict("/versions/4").status_code == 200 and predict("/versions/2").status_code == 404
        assert answered_by()["4"] == 1.0
        shutil.rmtree(base / "4")  # a rollback, as TF Serving does it: the version's folder removed
        wait_for({"4": "END", "3": "AVAILABLE", "2": "AVAILABLE"})
        assert predict("").status_code == 200 and answered_by()["3"] == 4.0
    finally:
        code, stderr = s.stop()
    assert code == 0 and "version 4 serving" in stderr, stderr

    s = Server(base, "--runtime", "onnx", "--set", "serve.versions=1,3")
    try:
        assert states() == {"3": "AVAILABLE", "1": "AVAILABLE"}
        assert predict("/versions/1").status_code == 200 and predict("/versions/2").status_code == 404
    finally:
        s.stop()
    s = Server(base, "--runtime", "onnx", "--set", "serve.versions=3", "--label", "old=1")  # (a number in YAML)
    try:  # a label keeps its version loaded beside the policy's pick
        assert states() == {"3": "AVAILABLE", "1": "AVAILABLE"}
        assert predict("/labels/old").status_code == 200 and predict("/versions/2").status_code == 404
    finally:
        s.stop()
    for args, named in ((["--versions", "newest"], "serve.versions"), (["--label", "stable"], "--label"),
                        (["--versions", "7,8"], "picks none of its versions (1, 2, 3)"),
                        (["--label", "canary=9"], "serve.labels.canary is version 9, which is not there")):
        r = subprocess.run([sys.executable, "-m", "bigmodel_cli", "serve", str(base), *args], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 2 and named in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "bigmodel_cli", "serve", str(penguins_run), "--versions", "latest:2"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "need a base of versions" in r.stderr, r.stderr


def test_unknown_model_bad_json_and_large_bodies(server):
    r = httpx.post(f"{server.url}/v1/models/other:predict", json={"instances": []})
    assert r.status_code == 404 and "other" in r.json()["error"]
    assert httpx.post(f"{server.url}/v1/models/model/versions/7:predict", json={}).status_code == 404
    r = httpx.post(f"{server.url}/v1/models/model:predict", content=b"{not json")
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    r = httpx.post(f"{server.url}/v1/models/model:predict", content=b" " * (11 * 2**20))
    assert r.status_code == 413 and "limit" in r.json()["error"]
    assert httpx.get(f"{server.url}/nowhere").status_code == 404
    # and it keeps serving
    assert httpx.get(f"{server.url}/v1/models/model").status_code == 200


def test_token_auth_and_network_exposure(penguins_run, tmp_path):
    r = bm("serve", penguins_run, "--host", "0.0.0.0", code=2)
    assert "--token-file" in r.stderr and "--insecure-no-auth" in r.stderr
    r = bm("serve", penguins_run, "--set", "serve.host=0.0.0.0", code=2)  # the config's serve section, the same rule
    assert "--token-file" in r.stderr
    r = bm("serve", penguins_run, "--set", "serve.max_queue=-1", code=2)
    assert "serve.max_queue" in r.stderr and "\n" not in r.stderr.strip()
    (tmp_path / "token").write_text(TOKEN + "\n")
    s = Server(penguins_run, "--token-file", str(tmp_path / "token"), "-v")
    try:
        url = f"{s.url}/v1/models/model:predict"
        body = {"instances": as_instances(rows(3))}
        assert httpx.post(url, json=body).status_code == 401
        assert httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{s.url}/healthz").status_code == 401  # every request
        r = httpx.post(url, json=body, headers={"Authorization": f"bearer {TOKEN}"})  # the scheme is case-blind
        assert r.status_code == 200 and len(r.json()["predictions"]) == 3
    finally:
        code, stderr = s.stop()
    assert code == 0
    lines = [line for line in stderr.splitlines() if "/readyz" not in line and 'HTTP/1.1" ' in line]
    assert [line.split('HTTP/1.1" ')[1] for line in lines] == ["401 Unauthorized"] * 3 + ["200 OK"], stderr


def test_tls(penguins_run, tmp_path):
    from .test_federated import _tls_files

    tls = _tls_files(tmp_path)
    s = Server(penguins_run, "--tls-cert", str(tls["cert"]), "--tls-key", str(tls["key"]), ca=tls["ca"])
    try:
        r = httpx.post(f"{s.url}/v1/models/model:predict", json={"instances": as_instances(rows(3))},
                       verify=str(tls["ca"]))
        assert r.status_code == 200 and len(r.json()["predictions"]) == 3
        with pytest.raises(httpx.TransportError):  # plain HTTP on the TLS port
            httpx.get(f"http://127.0.0.1:{s.port}/healthz", timeout=5)
    finally:
        assert s.stop()[0] == 0
    r = bm("serve", penguins_run, "--tls-cert", tls["cert"], code=2)
    assert "--tls-cert and --tls-key go together" in r.stderr


def test_sigterm_finishes_the_request_in_flight(penguins_run, tmp_path):
    s = Server(penguins_run)
    body = json.dumps({"instances": as_instances(rows(4))}).encode()
    with socket.create_connection(("127.0.0.1", s.port)) as conn:
        conn.sendall(b"POST /v1/models/model:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:20])
        time.sleep(0.5)
        s.proc.send_signal(signal.SIGTERM)  # mid-request: the server stops listening, this one completes
        time.sleep(0.5)
        conn.sendall(body[20:])
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert len(json.loads(reply.split(b"\r\n\r\n", 1)[1])["predictions"]) == 4
    code, stderr = s.stop()
    assert code == 0 and "stopped (SIGTERM)" in stderr, stderr
    assert 'HTTP/1.1"' not in stderr  # no access log without --verbose
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{s.url}/healthz", timeout=2)


@pytest.mark.parametrize("what", ["export", "run"])
def test_onnx_runtime_serves_without_tensorflow(penguins_run, tmp_path, what):
    """An ONNX export, or a run folder's own portable graph (train writes it), served without TensorFlow."""
    folder = penguins_run
    if what == "export":
        folder = tmp_path / "export"
        bm("export", penguins_run, "--format", "onnx", "--out", folder)
    s = Server(folder, "--runtime", "onnx")
    try:
        df = rows()
        r = httpx.post(f"{s.url}/v1/models/model:predict", json={"instances": as_instances(df)})
        assert r.status_code == 200 and np.allclose(r.json()["predictions"], predicted(penguins_run, df, tmp_path),
                                                    atol=1e-6)
        maps = Path(f"/proc/{s.proc.pid}/maps").read_text()
        assert "onnxruntime" in maps and "tensorflow" not in maps  # TensorFlow never loaded in this process
    finally:
        assert s.stop()[0] == 0
    if what == "run":  # a run without its graph (here: removed) is refused before listening
        run = tmp_path / "run"
        shutil.copytree(penguins_run, run)
        (run / "model.onnx").unlink()
        r = bm("serve", run, "--runtime", "onnx", code=2)
        assert "needs an export folder with model.onnx (or a run folder with its portable graph)" in r.stderr


def test_a_model_failure_is_a_500_and_serving_goes_on(penguins_run):
    """The app's own error path (in-process, Starlette's test client): a model that raises gives one line."""
    from starlette.testclient import TestClient

    from bigmodel_cli.schema import Schema
    from bigmodel_cli.serving import http, models

    calls = []

    def flaky(x):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory\nsecond line")
        return np.zeros((len(next(iter(x.values()))), 3))

    limits = http.Limits(max_body=2**20, max_concurrency=4, max_queue=60, client_timeout=10)
    state = http.State("model", None, limits, lambda version: None)
    state.loaded = {"1": http.Served("1", models.Model(Schema.load(penguins_run), flaky))}
    client = TestClient(http.app(state))
    body = {"instances": as_instances(rows(3))}
    r = client.post("/v1/models/model:predict", json=body)
    assert r.status_code == 500 and r.json() == {"error": "the model failed: out of memory"}
    assert client.post("/v1/models/model:predict", json=body).status_code == 200


def answers_after_a_stall(s: Server, body: bytes, seconds: float) -> int:
    """A request sent on a keep-alive connection while the server is stopped (SIGSTOP) for longer than its client
    timeout, the way a starved server stalls: it is in the socket, so the server owes it an answer when it runs again
    (its deadline timers fire late, before it reads). The status of that answer."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
    try:
        conn.request("POST", "/v1/models/model:predict", body, {"Content-Type": "application/json"})
        assert conn.getresponse().read() and True
        os.kill(s.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(0.2)
            conn.request("POST", "/v1/models/model:predict", body, {"Content-Type": "application/json"})
            time.sleep(seconds)
        finally:
            os.kill(s.proc.pid, signal.SIGCONT)
        answer = conn.getresponse()
        answer.read()
        return answer.status
    finally:
        conn.close()


def test_overload_answers_or_refuses_in_time_and_cuts_slow_clients(penguins_run, tmp_path):
    """500 connections on loopback, 100 of them slow loris (headers or body one byte per 0.5 s): every healthy
    request gets 200 or 503 with Retry-After within 10 s, slow clients are cut after --client-timeout, /healthz
    answers throughout, memory stays bounded, and SIGTERM still exits 0. (`make bench-serve`: the long run.)
    The limits come from the config's serve section, the timeout from the command line, which wins over it."""
    import asyncio

    from benchmarks.overload import overload

    config = tmp_path / "serve.yaml"
    config.write_text("serve: {max_concurrency: 2, max_queue: 8, client_timeout: 6}\n")
    s = Server(penguins_run, "--config", str(config), "--client-timeout", "2")
    try:
        body = json.dumps({"instances": as_instances(rows(8))}).encode()
        assert answers_after_a_stall(s, body, seconds=3) == 200
        report = asyncio.run(overload("127.0.0.1", s.port, body, pid=s.proc.pid, healthy=400, slow=100, seconds=8))
    finally:
        code, stderr = s.stop()
    got = report.to_dict()
    assert report.ok > 0 and report.busy > 0, got  # some answered, the rest refused at once
    assert report.busy_without_retry_after == 0 and not report.other, got
    # within 10 s of the server's time: less any stall of this measuring loop (the other worker's load)
    assert report.late == 0 and report.dropped == 0 and report.slowest_answer_net_s < 10, got
    assert report.slow_cut == 100 and report.slow_left_open == 0 and report.slowest_cut_s < 2 + 1.5, got
    assert report.healthz_failed == 0 and report.healthz_ok >= 20 and report.slowest_healthz_s < 2, got
    assert report.rss_max_mb < report.rss_before_mb + 300, got
    assert code == 0 and "refused as busy (503)" in stderr, stderr
