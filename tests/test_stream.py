"""Live sources end to end: an MJPEG-over-HTTP server on 127.0.0.1 started by the tests, read
by ``xmask predict URL`` and :func:`xmask.apps.stream.predict_stream` with a tiny random model:
rows flushed as they come, ``--every``, reconnection after the server drops the connection, the
frame budget, Ctrl-C (from a callback and as SIGINT to the command), a lost source; and counting
lines on a video."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, interruptible, make_run, tiny_model
from xmask.apps.batch import OutputOptions
from xmask.apps.frames import FrameRow, FrameSettings
from xmask.apps.live import Reconnect, live_source
from xmask.apps.stream import StreamOptions, predict_stream
from xmask.apps.tracking import CountingLine
from xmask.apps.zones import Zone
from xmask.cli import EXIT_OK, EXIT_SKIPPED, main
from xmask.data.synthetic import make_crowd
from xmask.inference.predictor import Predictor

av = pytest.importorskip("av")
if "mpjpeg" not in av.formats_available:
    pytest.skip("this FFmpeg build cannot read MJPEG over HTTP", allow_module_level=True)

SERVE_S = 20.0
"""No server streams longer than this."""

ZONES = (Zone("left", np.array([[0, 0], [48, 0], [48, 64], [0, 64]], dtype=np.float64)),)
LINES = (CountingLine("mid", np.array([[0.0, 32.0], [96.0, 32.0]])),)


class MjpegServer:
    """``multipart/x-mixed-replace`` JPEG frames at ``fps``; each connection is dropped after
    ``per_connection`` frames (None: kept until ``SERVE_S``)."""

    def __init__(self, fps: float = 20.0, per_connection: int | None = None) -> None:
        frames = []
        for seed in range(4):
            buffer = io.BytesIO()
            Image.fromarray(make_crowd(64, 96, 10, seed=seed).image).save(buffer, "JPEG")
            frames.append(buffer.getvalue())
        self.connections = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                sent = 0
                try:
                    while time.monotonic() - server.started < SERVE_S and not server.closing:
                        if per_connection is not None and sent >= per_connection:
                            return  # the connection drops
                        data = frames[sent % len(frames)]
                        head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                        self.wfile.write(head % len(data) + data + b"\r\n")
                        self.wfile.flush()
                        sent += 1
                        time.sleep(1.0 / fps)
                except OSError:  # the client left
                    return

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/cam"
        self.started = time.monotonic()
        self.closing = False
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.closing = True
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[MjpegServer]:
    started = MjpegServer()
    yield started
    started.close()


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(tiny_model(), "cpu")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("stream"))


FAST = Reconnect(retries=3, first_delay_s=0.05, max_delay_s=0.2, timeout_s=3.0)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_live_sources_are_told_from_files_and_named_safely() -> None:
    secret = live_source("rtsp://user:secret@cam.local:554/live/ch1?token=abc")
    assert secret is not None and secret.name == "cam.local-554-live-ch1"
    assert "secret" not in secret.label + repr(secret) and "abc" not in secret.label
    assert secret.options == (("rtsp_transport", "tcp"),)
    assert live_source("/dev/video2").format == "v4l2"
    assert live_source("https://h/../../etc").name == "h-etc"
    for path in ("clip.mp4", "photos/", "http://", "file:///etc/passwd", "/dev/sda"):
        assert live_source(path) is None


def test_rows_are_flushed_as_they_come_every_and_summary(
    server: MjpegServer, predictor: Predictor, tmp_path: Path
) -> None:
    source = live_source(server.url)
    table = tmp_path / "streams" / f"{source.name}.csv"
    on_disk = []

    def check(row: FrameRow) -> None:  # the row is on disk before the next frame
        on_disk.append(len(table.read_text().splitlines()) - 1)

    heat = OutputOptions(heatmap=True)
    settings = FrameSettings(zones=ZONES, lines=LINES, heat=heat)
    options = StreamOptions(every=2, frames=4, save_video=True, reconnect=FAST)
    summary = predict_stream(
        predictor, source, tmp_path, options=options, frames=settings, progress=False,
        on_row=check,
    )  # fmt: skip
    assert on_disk == [1, 2, 3, 4]
    rows = _rows(table)
    assert [int(r["frame"]) for r in rows] == [0, 2, 4, 6]
    assert list(rows[0]) == [
        "frame", "time_s", "wall_time", "count", "zone:left", "line:mid:in", "line:mid:out",
    ]  # fmt: skip
    times = [float(r["time_s"]) for r in rows]
    assert times == sorted(times) and times[0] == 0.0
    walls = [datetime.fromisoformat(r["wall_time"]) for r in rows]
    assert walls == sorted(walls) and walls[0].tzinfo is not None
    assert all(int(r["zone:left"]) <= int(r["count"]) for r in rows)
    written = json.loads((tmp_path / "streams" / f"{source.name}.json").read_text())
    assert written["stopped"] == summary.stopped == "frames"
    assert written["frames_predicted"] == 4 and written["frames_dropped"] == 0
    assert written["frames_decoded"] >= 7 and written["tracks"] >= 1
    last = {"in": int(rows[-1]["line:mid:in"]), "out": int(rows[-1]["line:mid:out"])}
    assert written["lines"] == {"mid": last}
    assert written["source"] == server.url and written["ended"]
    assert (tmp_path / "streams" / f"{source.name}-heatmap.png").is_file()
    with av.open(str(tmp_path / "streams" / f"{source.name}.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 4
    # Another run with the same columns appends; other columns are refused without --force.
    predict_stream(predictor, source, tmp_path, options=options, frames=settings, progress=False)
    assert len(_rows(table)) == 8
    with pytest.raises(Exception, match="other columns"):
        predict_stream(predictor, source, tmp_path, options=options, progress=False)


def test_a_dropped_connection_reconnects_and_rows_continue(
    predictor: Predictor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dropping = MjpegServer(fps=20, per_connection=4)
    try:
        source = live_source(dropping.url)
        options = StreamOptions(frames=10, reconnect=FAST)
        summary = predict_stream(predictor, source, tmp_path, options=options, progress=False)
    finally:
        dropping.close()
    rows = _rows(tmp_path / "streams" / f"{source.name}.csv")
    assert len(rows) == 10 and summary.stopped == "frames"
    frames = [int(r["frame"]) for r in rows]
    times = [float(r["time_s"]) for r in rows]
    assert frames == sorted(set(frames)) and times == sorted(set(times))
    assert summary.reconnects >= 2 and dropping.connections >= 3
    assert "reconnecting in" in caplog.text


def test_the_frame_budget_drops_frames_rather_than_fall_behind(
    predictor: Predictor, tmp_path: Path
) -> None:
    fast = MjpegServer(fps=40)
    try:
        source = live_source(fast.url)
        options = StreamOptions(max_fps=4, duration_s=1.5, reconnect=FAST)
        start = time.monotonic()
        summary = predict_stream(predictor, source, tmp_path, options=options, progress=False)
        took = time.monotonic() - start
    finally:
        fast.close()
    assert summary.stopped == "duration" and took < 3.0
    assert 1 <= summary.frames_predicted <= 7
    assert summary.frames_dropped >= 10
    assert summary.frames_predicted + summary.frames_dropped <= summary.frames_decoded


def test_ctrl_c_from_a_callback_keeps_the_rows_and_writes_the_summary(
    server: MjpegServer, predictor: Predictor, tmp_path: Path
) -> None:
    seen = []

    def interrupt(row: FrameRow) -> None:
        seen.append(row)
        if len(seen) == 3:
            raise KeyboardInterrupt

    source = live_source(server.url)
    options = StreamOptions(reconnect=FAST)
    summary = predict_stream(
        predictor, source, tmp_path, options=options, progress=False, on_row=interrupt
    )
    assert summary.stopped == "interrupted" and summary.frames_predicted == 3
    assert len(_rows(tmp_path / "streams" / f"{source.name}.csv")) == 3
    written = json.loads((tmp_path / "streams" / f"{source.name}.json").read_text())
    assert written["stopped"] == "interrupted" and written["frames_predicted"] == 3


def test_sigint_stops_the_command_cleanly(server: MjpegServer, run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    table = out / "streams" / f"{live_source(server.url).name}.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "xmask", "predict", server.url, "--model", str(run)]
    command += ["--device", "cpu", "--out", str(out), "--duration", "60"]
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and process.poll() is None:
            if table.is_file() and len(table.read_text().splitlines()) >= 3:
                break
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == EXIT_OK, stderr
    rows = _rows(table)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["streams"][0]["stopped"] == "interrupted"
    assert summary["streams"][0]["frames_predicted"] == len(rows) >= 2
    assert "stopped: interrupted" in stdout


def test_a_lost_source_is_retried_then_reported(run: Path, tmp_path: Path, capsys) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as probe:
        port = probe.server_address[1]  # free once closed: nothing listens there
    url = f"http://127.0.0.1:{port}/cam"
    args = ["predict", url, "--model", str(run), "--device", "cpu", "--out", str(tmp_path)]
    assert main([*args, "--retries", "1"]) == EXIT_SKIPPED
    summary = json.loads((tmp_path / "summary.json").read_text())
    stream = summary["streams"][0]
    assert stream["stopped"] == "source lost" and stream["frames_predicted"] == 0
    assert "gave up after 1 retries" in stream["problem"] and stream["reconnects"] == 1
    assert summary["skipped"][0]["name"] == f"http://127.0.0.1:{port}/cam"
    assert "stopped: source lost" in capsys.readouterr().out


def test_a_video_counts_people_crossing_lines(run: Path, tmp_path: Path) -> None:
    from test_predict_cli import _write_video

    _write_video(tmp_path / "clip.mp4", [make_crowd(64, 96, 8, seed=i).image for i in range(3)])
    out = tmp_path / "out"
    args = [str(tmp_path / "clip.mp4"), "--model", str(run), "--device", "cpu", "--out", str(out)]
    assert main(["predict", *args, "--line", "0,32 96,32", "--line", "48,0 48,64"]) == EXIT_OK
    rows = _rows(out / "videos" / "clip.csv")
    assert list(rows[0])[3:] == [
        "line:line1:in",
        "line:line1:out",
        "line:line2:in",
        "line:line2:out",
    ]
    record = json.loads((out / "videos" / "clip.json").read_text())
    assert set(record["lines"]) == {"line1", "line2"} and record["tracks"] >= 1
    assert record["lines"]["line1"]["in"] == int(rows[-1]["line:line1:in"])
    # Another line redoes the video.
    assert main(["predict", *args, "--line", "0,30 96,30"]) == EXIT_OK
    assert json.loads((out / "summary.json").read_text())["videos_predicted"] == 1
