"""``xmask serve``: the HTTP API against a loopback server (counts, RLE masks, zones, limits,
JSON errors, the time bound), the command (URL printed, Ctrl-C stops it), and the page in a
headless Chromium (skipped without chromium, chromedriver and selenium)."""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from conftest import REPO, interruptible
from xmask.apps.serve import PredictQuery, PredictService, RequestError, ServeLimits
from xmask.apps.serve_http import ServeRequest, ServeServer, open_server
from xmask.apps.zones import Zone, zone_counts
from xmask.data.synthetic import make_crowd
from xmask.geometry.points import pixel_of
from xmask.inference.predictor import Predictor

LIMITS = ServeLimits(max_upload_bytes=1_000_000, max_image_pixels=200_000, timeout_s=60.0)
FLOOR = 0.05
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Requests to the loopback server never go through a proxy of the environment."""


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def crowd() -> np.ndarray:
    """A 240×180 synthetic crowd: the shipped model counts a few of its heads, fast."""
    return make_crowd(180, 240, 25, seed=1).image


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.load(device="cpu")


@pytest.fixture(scope="module")
def server(predictor: Predictor) -> Iterator[ServeServer]:
    """The shipped model served on 127.0.0.1, on a free port, from a thread."""
    server = ServeServer(PredictService(predictor, LIMITS), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _request(
    server: ServeServer, path: str, body: bytes | None = None, content_type: str = "image/png"
) -> tuple[int, dict[str, Any]]:
    headers = {} if body is None else {"Content-Type": content_type}
    request = urllib.request.Request(server.url + path.lstrip("/"), data=body, headers=headers)
    try:
        with NO_PROXY.open(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        assert err.headers["Content-Type"] == "application/json"
        return err.code, json.loads(err.read())


def test_health_names_the_model_and_the_server_listens_on_loopback(server: ServeServer) -> None:
    status, health = _request(server, "/health")
    assert status == 200 and health["status"] == "ok" and health["masks"] is True
    assert "shanghaitech-lite0" in health["model"]
    assert health["max_upload_bytes"] == LIMITS.max_upload_bytes
    assert server.server_address[0] == "127.0.0.1"
    assert ServeRequest().host == "127.0.0.1"  # nothing listens beyond loopback by default


def test_predict_gives_the_predictors_heads_and_masks_as_rle(
    server: ServeServer, predictor: Predictor, crowd: np.ndarray
) -> None:
    status, answer = _request(server, "/predict", _png(crowd))
    reference = predictor(crowd)
    assert status == 200 and reference.count > 0
    assert (answer["width"], answer["height"]) == (240, 180)
    assert answer["count"] == reference.count == len(answer["points"])
    points = np.array(answer["points"], dtype=np.float32)
    order = np.lexsort(reference.points.T)
    # the server's thread may split the network's sums differently: equal to float precision
    np.testing.assert_allclose(points[np.lexsort(points.T)], reference.points[order], atol=1e-3)
    scores = np.array(answer["scores"])
    assert (np.diff(scores) <= 0).all() and (scores >= answer["conf"]).all()
    masks = np.stack([mask_utils.decode(rle) for rle in answer["masks"]])
    assert masks.shape == (reference.count, 180, 240)
    np.testing.assert_array_equal(masks.sum(axis=(1, 2)), answer["areas"])
    assert masks.sum(axis=0).max() == 1  # one mask per pixel at most
    assert sum(answer["areas"]) == int((reference.labels > 0).sum())
    cols, rows = pixel_of(points, (180, 240)).T
    assert masks[np.arange(len(points)), rows, cols].all()  # each mask holds its head


def test_floor_returns_candidates_and_conf_counts_them(
    server: ServeServer, crowd: np.ndarray
) -> None:
    _, own = _request(server, "/predict?masks=0", _png(crowd))
    _, every = _request(server, f"/predict?floor={FLOOR}", _png(crowd))
    scores = np.array(every["scores"])
    assert every["count"] == own["count"] and own["masks"] is None
    assert len(scores) > every["count"] and scores.min() >= FLOOR
    assert every["points"][: every["count"]] == own["points"]  # the counted heads come first
    assert len(every["masks"]) == len(scores)
    zone = "0,0 120,0 120,180 0,180"
    _, strict = _request(server, f"/predict?conf=0.6&zone={zone.replace(' ', '%20')}", _png(crowd))
    assert strict["count"] == int((scores >= 0.6).sum()) and strict["conf"] == pytest.approx(0.6)
    polygon = np.array([[0, 0], [120, 0], [120, 180], [0, 180]], dtype=np.float64)
    inside = zone_counts(np.array(strict["points"]), [Zone("z", polygon)])["z"]
    assert strict["zone"] == {"polygon": polygon.tolist(), "count": inside}


def test_zones_count_given_points(server: ServeServer) -> None:
    body = {
        "points": [[5, 5], [15, 5], [50, 50]],
        "zones": [{"name": "a", "polygon": [[0, 0], [20, 0], [20, 20], [0, 20]]}],
    }
    status, answer = _request(server, "/zones", json.dumps(body).encode(), "application/json")
    assert status == 200 and answer == {"zones": {"a": 2}}
    body["zones"] = [{"name": "a", "polygon": [[0, 0], [1, 1]]}]
    status, answer = _request(server, "/zones", json.dumps(body).encode(), "application/json")
    assert status == 400 and "3 (x, y) vertices" in answer["error"]


@pytest.mark.parametrize(
    ("path", "body", "content_type", "status", "words"),
    [
        ("/predict", b"\0" * (LIMITS.max_upload_bytes + 1), "image/png", 413, "over the limit"),
        ("/predict", _png(np.zeros((500, 401, 3), np.uint8)), "image/png", 413, "200,000 pixels"),
        ("/predict", b"not an image at all", "image/jpeg", 400, "not a readable image"),
        ("/predict", b"GIF89a", "text/plain", 415, "image/"),
        ("/predict?conf=2", b"", "image/png", 400, "conf must be a probability"),
        ("/predict?zone=1,2", b"", "image/png", 400, "3 (x, y) vertices"),
        ("/predict?path=/etc/passwd", b"", "image/png", 400, "unknown parameter"),
        ("/zones", b"{", "application/json", 400, "not JSON"),
        ("/elsewhere", b"", "image/png", 404, "nothing to POST"),
        ("/missing", None, "", 404, "no page"),
    ],
)
def test_refusals_are_json_with_a_4xx_status(
    server: ServeServer,
    path: str,
    body: bytes | None,
    content_type: str,
    status: int,
    words: str,
) -> None:
    got, answer = _request(server, path, body, content_type)
    assert got == status and words in answer["error"]


def test_a_busy_model_answers_503_within_the_time_bound(
    predictor: Predictor, crowd: np.ndarray
) -> None:
    service = PredictService(predictor, ServeLimits(timeout_s=0.2))
    service._lock.acquire()  # another request holds the model
    start = time.monotonic()
    try:
        with pytest.raises(RequestError, match="busy") as caught:
            service.predict(_png(crowd), PredictQuery())
    finally:
        service._lock.release()
        service.close()
    assert caught.value.status == 503 and time.monotonic() - start < 5


def test_cli_defaults_agree_with_the_library() -> None:
    from xmask.cli import build_parser
    from xmask.cli import serve as cli

    limits = ServeLimits()
    assert limits.max_upload_bytes == cli.DEFAULT_UPLOAD_MB * 2**20
    assert limits.max_image_pixels == cli.DEFAULT_PIXELS
    assert limits.timeout_s == cli.DEFAULT_TIMEOUT_S
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port) == ("127.0.0.1", 8000)


def test_serve_takes_a_mask_grid(crowd: np.ndarray) -> None:
    """``xmask serve --mask-grid 4`` serves masks made on 4×4 blocks, each one region."""
    from xmask.cli import build_parser

    assert build_parser().parse_args(["serve", "--mask-grid", "4"]).mask_grid == 4
    server = open_server(ServeRequest(device="cpu", port=0, mask_grid=4))
    try:
        assert server.server_address[0] == "127.0.0.1"
        predictor = server.service.predictor
        assert predictor.mask_grid == 4
        result = predictor(crowd)
        assert result.labels.shape == crowd.shape[:2] and (result.areas > 0).all()
    finally:
        server.server_close()


@pytest.mark.timeout(120)
def test_the_command_prints_its_url_and_stops_on_ctrl_c() -> None:
    command = [sys.executable, "-m", "xmask", "serve", "--port", "0", "--device", "cpu"]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        preexec_fn=interruptible,
    )
    try:
        line = process.stdout.readline()  # the URL, once the model is loaded
        assert line.startswith("xmask serve: http://127.0.0.1:"), process.stderr.read()
        url = line.split()[2]
        with NO_PROXY.open(url + "health", timeout=30) as response:
            assert json.loads(response.read())["status"] == "ok"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert "stopped" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _browser() -> Any:
    """A headless Chromium driven by selenium, or skip."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium "
                    "chromium-driver)")  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-proxy-server", "--window-size=1000,900",
    ):  # fmt: skip
        options.add_argument(argument)
    return webdriver.Chrome(service=webdriver.ChromeService(driver), options=options)


@pytest.mark.timeout(180)
def test_the_page_counts_filters_and_counts_a_zone_in_a_browser(
    server: ServeServer, crowd: np.ndarray, tmp_path: Path
) -> None:
    browser = _browser()
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    image = tmp_path / "crowd.png"
    image.write_bytes(_png(crowd))
    _, answer = _request(server, f"/predict?floor={FLOOR}&masks=0", image.read_bytes())
    scores, points = np.array(answer["scores"]), np.array(answer["points"])
    element = browser.find_element
    wait = WebDriverWait(browser, 60)

    def shown() -> int:
        return int(element(By.ID, "count").get_attribute("data-count"))

    def canvas_sum() -> int:
        script = (
            "const c = document.getElementById('view');"
            "return c.getContext('2d').getImageData(0, 0, c.width, c.height).data"
            ".reduce((a, b) => a + b, 0);"
        )
        return int(browser.execute_script(script))

    try:
        browser.set_page_load_timeout(30)
        browser.get(server.url)
        element(By.ID, "file").send_keys(str(image))
        wait.until(lambda _: element(By.ID, "count").get_attribute("data-count"))
        assert shown() == answer["count"] > 0
        assert element(By.ID, "count").text == str(answer["count"])
        with_masks = canvas_sum()
        element(By.ID, "masks").click()
        assert canvas_sum() != with_masks
        element(By.ID, "masks").click()
        assert canvas_sum() == with_masks
        slider = element(By.ID, "conf")
        slider.send_keys(Keys.END)  # the highest score: fewer heads drawn
        assert shown() == int((scores >= 0.99).sum()) < answer["count"]
        slider.send_keys(Keys.HOME)  # the floor: every candidate
        assert shown() == len(scores) > answer["count"]
        element(By.ID, "draw-zone").click()
        canvas = element(By.ID, "view")
        assert (canvas.rect["width"], canvas.rect["height"]) == (240, 180)  # 1 px = 1 px
        for dx, dy in [(-110, -80), (0, -80), (0, 80), (-110, 80)]:  # offsets from its centre
            ActionChains(browser).move_to_element_with_offset(canvas, dx, dy).click().perform()
        element(By.ID, "finish-zone").click()
        label = element(By.ID, "zone-count")
        wait.until(lambda _: label.get_attribute("data-count"))
        polygon = np.array(json.loads(label.get_attribute("data-polygon")))
        np.testing.assert_allclose(polygon, [[10, 10], [120, 10], [120, 170], [10, 170]], atol=1)
        expected = zone_counts(points, [Zone("zone", polygon)])["zone"]
        assert int(label.get_attribute("data-count")) == expected > 0
        assert label.text == f"{expected} in the zone"
    finally:
        browser.quit()
