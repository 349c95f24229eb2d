"""``wsi-infer serve``: the batcher on its own, then the real service as subprocesses on
127.0.0.1 with concurrent clients (answers equal the CLI's, batching, bounded waits, 503 and
recovery, dropped tiles of clients that left, clear 4xx answers)."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from modelzoo import conv_onnx, write_card
from slides import tissue_image, write_pyramid

from wsi_infer.errors import Cancelled, QueueFullError, SlideForbiddenError, SlideNotFoundError
from wsi_infer.predictor import Predictor
from wsi_infer.serve.batcher import BatchingPredictor, Ticket
from wsi_infer.serve.security import resolve_slide

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

EXE = str(Path(sys.executable).parent / "wsi-infer")
TOKEN = "s3cret-token"
TILE = 64  # output pixels per tile of the test model (slide and model at 0.5 µm/px)


# -- the batcher alone ----------------------------------------------------------------------


class StubPredictor:
    """Output = the tile's mean red value everywhere; records batch sizes; can be slowed."""

    num_classes = 1

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.batches: list[int] = []
        self.delay_s, self.fail = delay_s, fail

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        self.batches.append(len(tiles))
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("model exploded")
        means = tiles[..., 0].mean(axis=(1, 2))
        return np.broadcast_to(means[:, None, None, None], (len(tiles), 1, *tiles.shape[1:3])).copy()


def batcher(stub: StubPredictor, **kwargs: Any) -> BatchingPredictor:
    return BatchingPredictor(cast(Predictor, stub), **kwargs)


def tiles(*values: float, size: int = 4) -> np.ndarray:
    return np.stack([np.full((size, size, 3), v, np.float32) for v in values])


def test_batcher_flushes_a_full_batch_at_once_and_hands_each_caller_its_tiles() -> None:
    stub = StubPredictor()
    b = batcher(stub, max_batch=4, max_wait_ms=10_000)
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda v: b.predict(tiles(v)), [1.0, 2.0, 3.0, 4.0]))
    assert time.perf_counter() - started < 5  # never waited for the 10 s deadline
    assert stub.batches == [4]
    assert [float(r[0, 0, 0, 0]) for r in results] == [1.0, 2.0, 3.0, 4.0]
    assert b.alive
    b.close()
    assert not b.alive


def test_batcher_flushes_when_the_oldest_tile_has_waited_max_wait() -> None:
    stub = StubPredictor()
    b = batcher(stub, max_batch=64, max_wait_ms=80)
    ticket = Ticket()
    started = time.perf_counter()
    out = b.predict(tiles(7.0, 8.0), ticket)
    elapsed = time.perf_counter() - started
    assert 0.075 <= elapsed < 0.5 and stub.batches == [2]
    assert out.shape == (2, 1, 4, 4) and out[1, 0, 0, 0] == 8.0
    assert ticket.tiles == 2 and ticket.batch_sizes == [2] and ticket.max_wait_s >= 0.075
    b.close()


def test_batcher_never_mixes_tile_shapes_and_passes_errors_to_every_caller() -> None:
    stub = StubPredictor()
    b = batcher(stub, max_batch=8, max_wait_ms=30)
    with ThreadPoolExecutor(2) as pool:
        small, large = pool.map(lambda s: b.predict(tiles(1.0, size=s)), [4, 6])
    assert small.shape == (1, 1, 4, 4) and large.shape == (1, 1, 6, 6)
    assert sorted(stub.batches) == [1, 1]
    b.close()
    failing = batcher(StubPredictor(fail=True), max_batch=2, max_wait_ms=0)
    for _ in range(2):  # the worker survives a failed batch
        with pytest.raises(RuntimeError, match="exploded"):
            failing.predict(tiles(1.0))
    failing.close()


def test_batcher_queue_is_bounded_and_cancel_drops_queued_tiles() -> None:
    stub = StubPredictor()
    b = batcher(stub, max_batch=64, max_wait_ms=10_000, max_queue=3)
    ticket = Ticket()
    futures = b.submit(tiles(1.0, 2.0), ticket)
    with pytest.raises(QueueFullError) as full:
        b.submit(tiles(3.0, 4.0))
    assert full.value.retry_after_s >= 1 and b.depth == 2
    assert b.cancel(ticket) == 2 and b.depth == 0
    assert all(f.cancelled() for f in futures)
    with pytest.raises(Cancelled):  # a cancelled caller's next tiles are refused at once
        b.predict(tiles(5.0), ticket)
    assert stub.batches == []  # nothing ran
    b.close()


def test_slide_paths_stay_under_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "cases").mkdir(parents=True)
    (root / "cases" / "a.svs").write_bytes(b"x")
    (tmp_path / "secret.svs").write_bytes(b"x")
    (root / "link-in.svs").symlink_to(root / "cases" / "a.svs")
    (root / "link-out.svs").symlink_to(tmp_path / "secret.svs")
    (root / "dir-out").symlink_to(tmp_path)
    real = root.resolve()
    assert resolve_slide(real, "cases/a.svs") == real / "cases" / "a.svs"
    assert resolve_slide(real, "link-in.svs") == real / "cases" / "a.svs"
    for bad in ["../secret.svs", "cases/../../secret.svs", str(tmp_path / "secret.svs"),
                "link-out.svs", "dir-out/secret.svs", "cases\\..\\..\\secret.svs",
                "C:/secret.svs", "a\x00.svs", ""]:
        with pytest.raises(SlideForbiddenError):
            resolve_slide(real, bad)
    with pytest.raises(SlideNotFoundError):
        resolve_slide(real, "cases/missing.svs")


# -- the real service -----------------------------------------------------------------------


class Server:
    """A ``wsi-infer serve`` subprocess on a free port of 127.0.0.1."""

    def __init__(self, root: Path, card: Path, *options: str, token: str | None = None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k != "WSI_INFER_TOKEN"}
        if token:
            env["WSI_INFER_TOKEN"] = token
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.log = root.parent / f"serve-{self.port}.log"
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen(
            [EXE, "serve", "--slides-root", str(root), "--model", str(card), "--port",
             str(self.port), "--threads", "1", *options],
            stdout=subprocess.DEVNULL, stderr=self._log_file, env=env)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the service exited: {self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError(f"the service did not start: {self.log.read_text()}")

    def infer(self, client: Any = None, params: dict[str, str] | None = None,
              **body: Any) -> Any:
        return (client or httpx).post(f"{self.url}/v1/infer", json=body, params=params,
                                      headers=self.headers, timeout=30)

    def metrics(self) -> dict[str, float]:
        """Samples by ``name{label=value,...}`` (labels sorted)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.url}/metrics", headers=self.headers, timeout=10).text
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                samples[f"{s.name}{{{labels}}}"] = s.value
        return samples

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log_file.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A slides root, a small convolution model, three services and the CLI's overlay."""
    base = tmp_path_factory.mktemp("serve")
    root = base / "slides"
    (root / "cases").mkdir(parents=True)
    write_pyramid(root / "cases" / "a.tif", tissue_image(1000, 1400), mpp=0.5)
    (root / "notes.txt").write_text("not a slide")
    (base / "outside.tif").write_bytes((root / "cases" / "a.tif").read_bytes())
    (root / "escape.tif").symlink_to(base / "outside.tif")
    models = base / "models"
    models.mkdir()
    conv_onnx(models / "conv.onnx", kernel=7, classes=2)
    card = write_card(models, "conv", {"onnx": "conv.onnx"}, mpp=0.5, margin=3,
                      classes=["a", "b"], activation="softmax", tile_size=TILE)
    servers = {
        "main": Server(root, card, "--max-batch", "16", "--max-wait-ms", "10",
                       "--max-region-pixels", "600000", token=TOKEN),
        "nowait": Server(root, card, "--max-batch", "16", "--max-wait-ms", "0"),
        "tiny": Server(root, card, "--max-batch", "64", "--max-wait-ms", "1500",
                       "--max-queue", "3"),
    }
    overlay = base / "cli.zarr"
    cli = subprocess.run([EXE, str(root / "cases" / "a.tif"), "--model", str(card), "--dtype",
                          "float32", "--no-tissue-mask", "--threads", "1", "--out", str(overlay),
                          "-q"], check=False, capture_output=True, text=True, timeout=120)
    try:
        assert cli.returncode == 0, cli.stderr
        for server in servers.values():
            server.wait_ready()
        import zarr

        reference = np.asarray(zarr.open_group(str(overlay), mode="r")["0"])
        yield {"root": root, "servers": servers, "reference": reference}
    finally:
        for server in servers.values():
            server.stop()


def tile_region(ix: int, iy: int) -> dict[str, Any]:
    """Level-0 rectangle of exactly one model tile (slide and model share 0.5 µm/px)."""
    return {"slide": "cases/a.tif", "x": ix * TILE, "y": iy * TILE, "width": TILE, "height": TILE}


def batch_counts(metrics: dict[str, float]) -> tuple[float, float]:
    """(batches run, batches of one tile) of the model."""
    return (metrics["wsi_infer_batch_size_tiles_count{model=conv}"],
            metrics["wsi_infer_batch_size_tiles_bucket{le=1.0,model=conv}"])


def test_regions_equal_the_cli_overlay_under_concurrency(env: dict[str, Any]) -> None:
    server, reference = env["servers"]["main"], env["reference"]
    regions = [(0, 0, 1400, 400), (100, 100, 200, 150), (1337, 987, 63, 13), (5, 700, 640, 300),
               (-50, -20, 130, 90), (63, 65, 2, 2), (900, 0, 500, 1000)]

    def check(region: tuple[int, int, int, int]) -> float:
        x, y, w, h = region
        r = server.infer(slide="cases/a.tif", x=x, y=y, width=w, height=h, model="conv")
        assert r.status_code == 200, r.text
        got = np.load(io.BytesIO(r.content))
        ox, oy = int(r.headers["X-Origin-X"]), int(r.headers["X-Origin-Y"])
        assert (ox, oy) == (max(0, x), max(0, y))
        assert r.headers["X-Array-Shape"] == ",".join(map(str, got.shape))
        want = reference[:, oy : oy + got.shape[1], ox : ox + got.shape[2]]
        assert got.shape == (2, min(h, 1000 - oy, h + y), min(w, 1400 - ox, w + x))
        return float(np.abs(got - want).max())

    with ThreadPoolExecutor(len(regions)) as pool:
        errors = list(pool.map(check, regions * 2))
    assert max(errors) <= 1e-5

    raw = server.infer(params={"format": "raw", "dtype": "uint8"}, slide="cases/a.tif", x=100,
                       y=100, width=200, height=150)
    shape = tuple(int(v) for v in raw.headers["X-Array-Shape"].split(","))
    values = np.frombuffer(raw.content, np.uint8).reshape(shape)
    want = np.rint(reference[:, 100:250, 100:300] * 255)
    assert raw.headers["X-Array-Dtype"] == "uint8" and np.abs(values - want).max() <= 1
    png = server.infer(params={"format": "png", "class": "b"}, slide="cases/a.tif", x=0, y=0,
                       width=300, height=200)
    assert png.headers["content-type"] == "image/png" and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.headers["X-Array-Shape"] == "200,300,4"


def test_concurrent_clients_share_batches_and_no_tile_waits_past_the_bound(
        env: dict[str, Any]) -> None:
    server = env["servers"]["main"]
    before_total, before_single = batch_counts(server.metrics())
    waits: list[float] = []

    def client(i: int) -> None:
        with httpx.Client() as c:
            for k in range(8):
                r = server.infer(c, **tile_region((i * 3 + k) % 21, (i + k) % 15))
                assert r.status_code == 200, r.text
                assert r.headers["X-Tiles"] == "1"
                waits.append(float(r.headers["X-Queue-Wait-Ms"]) / 1000)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(client, range(16)))
    metrics = server.metrics()
    total, single = batch_counts(metrics)
    assert total - before_total < 16 * 8  # fewer model calls than requests...
    assert (total - before_total) - (single - before_single) > 0  # ...some batches held > 1 tile
    # Every client has at most one tile queued, so the queue never holds more than one batch:
    # no tile waits longer than max-wait plus the batch computing when it arrived (plus 50 ms
    # for threads to be scheduled on a busy 2-core machine).
    bound = 0.010 + metrics["wsi_infer_batch_compute_max_seconds{model=conv}"] + 0.050
    assert len(waits) == 16 * 8 and max(waits) <= bound  # each answer's longest tile wait


def test_one_client_with_max_wait_zero_runs_every_tile_alone(env: dict[str, Any]) -> None:
    server = env["servers"]["nowait"]
    with httpx.Client() as c:
        for k in range(12):
            r = server.infer(c, **tile_region(k, k % 15))
            assert r.status_code == 200 and r.headers["X-Batch-Sizes"] == "1"
    total, single = batch_counts(server.metrics())
    assert total >= 12 and total == single


def test_a_full_queue_answers_503_with_retry_after_and_recovers(env: dict[str, Any]) -> None:
    server = env["servers"]["tiny"]  # queue of 3 tiles, batches wait up to 1.5 s
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: server.infer(**tile_region(i, 0)), range(8)))
    codes = sorted(r.status_code for r in answers)
    assert codes.count(200) >= 1 and codes.count(503) >= 4 and set(codes) <= {200, 503}
    refused = next(r for r in answers if r.status_code == 503)
    assert int(refused.headers["Retry-After"]) >= 1 and "queue is full" in refused.json()["error"]
    assert server.infer(**tile_region(9, 9)).status_code == 200  # recovered
    assert server.metrics()["wsi_infer_tiles_rejected_total{model=conv}"] >= 4


def test_a_client_that_leaves_has_its_queued_tiles_dropped(env: dict[str, Any]) -> None:
    server = env["servers"]["tiny"]
    dropped = server.metrics().get("wsi_infer_tiles_dropped_total{model=conv}", 0.0)
    with httpx.Client() as c, pytest.raises(httpx.ReadTimeout):
        c.post(f"{server.url}/v1/infer", json=tile_region(3, 3), timeout=0.5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        metrics = server.metrics()
        if metrics["wsi_infer_tiles_dropped_total{model=conv}"] > dropped:
            break
        time.sleep(0.05)
    assert metrics["wsi_infer_tiles_dropped_total{model=conv}"] == dropped + 1
    assert metrics["wsi_infer_queue_depth_tiles{model=conv}"] == 0
    assert server.infer(**tile_region(4, 4)).status_code == 200


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"slide": "../outside.tif"}, 403, "'..'"),
    ({"slide": "cases/../../outside.tif"}, 403, "'..'"),
    ({"slide": "/etc/passwd"}, 403, "absolute"),
    ({"slide": "escape.tif"}, 403, "outside the slides root"),
    ({"slide": "cases\\a.tif"}, 403, "'/' separators"),
    ({"slide": "cases/none.tif"}, 404, "no slide"),
    ({"slide": "notes.txt"}, 422, "not a slide"),
    ({"model": "resnet"}, 404, "unknown model 'resnet'"),
    ({"width": 5000, "height": 5000}, 413, "at most 600000 px"),
    ({"x": 90000}, 400, "outside the slide"),
    ({"width": 0}, 422, "width"),
    ({"height": "tall"}, 422, "height"),
    ({"colour": "red"}, 422, "colour"),
    ({"mpp": -1}, 422, "mpp"),
])
def test_bad_requests_get_clear_4xx_and_the_service_keeps_serving(
        env: dict[str, Any], body: dict[str, Any], status: int, words: str) -> None:
    server = env["servers"]["main"]
    r = server.infer(**{**tile_region(1, 1), **body})
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    assert str(env["root"]) not in r.text  # no server paths in answers
    assert server.infer(**tile_region(2, 2)).status_code == 200


def test_malformed_json_missing_fields_and_tokens(env: dict[str, Any]) -> None:
    server = env["servers"]["main"]
    url, auth = f"{server.url}/v1/infer", server.headers
    r = httpx.post(url, content=b'{"slide": "cases/a.tif", "x": 0,', headers={
        **auth, "Content-Type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]
    r = httpx.post(url, json={"slide": "cases/a.tif", "x": 0, "y": 0}, headers=auth)
    assert r.status_code == 422 and "width: Field required" in r.json()["error"]
    r = httpx.post(url, content=b"[1, 2]", headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 422 and "JSON object" in r.json()["error"]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = httpx.post(url, json=tile_region(0, 0), headers=headers)
        assert r.status_code == 401 and "bearer token" in r.json()["error"]
        assert r.headers["WWW-Authenticate"] == "Bearer"
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    assert httpx.get(f"{server.url}/healthz").json()["status"] == "ok"  # probes need no token
    assert httpx.get(f"{server.url}/v2/anything").status_code == 404
    assert server.infer(**tile_region(0, 0)).status_code == 200


def test_models_metrics_and_openapi(env: dict[str, Any]) -> None:
    server = env["servers"]["main"]
    models = httpx.get(f"{server.url}/v1/models", headers=server.headers).json()
    assert [m["name"] for m in models] == ["conv"]
    assert models[0]["classes"][1]["name"] == "b" and models[0]["mpp"] == 0.5
    assert models[0]["batching"] == {"max_batch": 16, "max_wait_ms": 10.0, "max_queue": 256}
    metrics = server.metrics()
    for name in ["wsi_infer_http_requests_total{path=/v1/infer,status=200}",
                 "wsi_infer_queue_depth_tiles{model=conv}",
                 "wsi_infer_queue_wait_seconds_count{model=conv}",
                 "wsi_infer_batch_compute_seconds_sum{model=conv}"]:
        assert name in metrics
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v1/infer", "/v1/models", "/healthz", "/metrics"} <= set(schema["paths"])
    assert "413" in schema["paths"]["/v1/infer"]["post"]["responses"]


def test_serve_refuses_a_missing_slides_root(tmp_path: Path) -> None:
    r = subprocess.run([EXE, "serve", "--slides-root", str(tmp_path / "nope")],
                       check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not a folder" in r.stderr

