"""The HPAv18 download against a local HTTP server on 127.0.0.1 that serves the tiny synthetic dataset's
JPEGs and injects faults (server errors, a cut body, a response held past the timeout, a 404, a 429, a
damaged JPEG, a SIGKILL chosen by progress): the end state is exactly the served files, nothing partial."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from atomic_files import temporaries

from hpa_tf.data import download
from hpa_tf.layout import COLORS, DataLayout

ROOT = Path(__file__).parent.parent
KILL_AT = Path(__file__).with_name("kill_at.py")
RETRY_AFTER = 7  # seconds a 429 asks for; the tests record waits instead of waiting


class Server:
    """Serves `folder`'s `{Id}_{color}.jpg` as /images/{antibody}/{plate_well_field}_{color}.jpg (spec 1.3).
    `faults[url path]` lists what the next requests of that file get, one each: "500", "429", "cut" (the
    connection closes halfway through the body), "hold" (no answer until the test ends), "damaged" (a
    whole response holding half the JPEG), "html" (an error page with status 200); a path in `missing` is
    a 404."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.faults: dict[str, list[str]] = {}
        self.missing: set[str] = set()
        self.requests: list[str] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/images"

    def next_fault(self, path: str) -> str:
        with self.lock:
            self.requests.append(path)
            if path in self.missing:
                return "404"
            return self.faults.get(path, []).pop(0) if self.faults.get(path) else ""

    def file(self, path: str) -> Path:
        antibody, name = path.removeprefix("/images/").split("/")
        return self.folder / f"{antibody}_{name}"

    def take_requests(self) -> list[str]:
        with self.lock:
            taken, self.requests = self.requests, []
        return taken


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the HPA server

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            fault = server.next_fault(self.path)
            if fault == "hold":
                server.release.wait()
                self.close_connection = True
            elif fault == "html":
                self._send(200, b"<html>busy</html>", {"Content-Type": "text/html"})
            elif fault in ("500", "404", "429"):
                self._send(int(fault), b"", {"Retry-After": str(RETRY_AFTER)} if fault == "429" else {})
            else:
                body = server.file(self.path).read_bytes()
                half = body[: len(body) // 2]
                self._send(200, half if fault == "damaged" else body, length=len(body) if fault != "damaged"
                           else len(half), cut=fault == "cut")

        def _send(self, status: int, body: bytes, headers: dict | None = None, length: int | None = None,
                  cut: bool = False) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if cut else body)
            self.close_connection = cut

    return Handler


@pytest.fixture
def server(tiny_dataset):
    served = Server(tiny_dataset / "external" / "jpg")
    thread = threading.Thread(target=served.http.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield served
    served.release.set()
    served.http.shutdown()
    served.http.server_close()


def _dataset(tiny_dataset: Path, root: Path, n_ids: int) -> list[str]:
    """A dataset root whose Id list is the first n_ids of the tiny dataset's; returns those Ids."""
    ids = pd.read_csv(tiny_dataset / "raw" / "HPAv18RBGY_wodpl.csv", dtype=str).head(n_ids)
    (root / "raw").mkdir(parents=True)
    ids.to_csv(root / "raw" / "HPAv18RBGY_wodpl.csv", index=False)
    return list(ids["Id"])


def _url_path(image_id: str, color: str) -> str:
    antibody, field = image_id.split("_", 1)
    return f"/images/{antibody}/{field}_{color}.jpg"


def _jpgs(root: Path) -> dict[str, bytes]:
    """Every file in root/external/jpg by name, the hidden temporaries left out."""
    folder = root / "external" / "jpg"
    files = sorted(folder.iterdir()) if folder.is_dir() else []
    return {p.name: p.read_bytes() for p in files if not p.name.startswith(".")}  # temporaries are hidden


def _served(tiny_dataset: Path, ids: list[str], leave_out: tuple[str, ...] = ()) -> dict[str, bytes]:
    """The served files of these Ids (but the named ones), by name."""
    names = [f"{i}_{c}.jpg" for i in ids for c in COLORS]
    folder = tiny_dataset / "external" / "jpg"
    return {n: (folder / n).read_bytes() for n in sorted(names) if n not in leave_out}


def test_download_fetches_every_colour_from_the_url_pattern_and_a_rerun_skips_them(tiny_dataset, server,
                                                                                  tmp_path, capsys):
    ids = _dataset(tiny_dataset, tmp_path, 6)
    with open(tmp_path / "raw" / "HPAv18RBGY_wodpl.csv", "a") as csv:
        csv.write(f"{ids[2]},0\n")  # a repeated Id is fetched once
    tally = download.download(tmp_path, server.url, concurrency=4, progress=False)
    assert (tally.downloaded, tally.skipped, tally.failed) == (24, 0, [])
    assert sorted(server.take_requests()) == sorted(_url_path(i, c) for i in ids for c in COLORS)
    assert _jpgs(tmp_path) == _served(tiny_dataset, ids)
    assert not temporaries(tmp_path) and not DataLayout(tmp_path).external_failed_csv.exists()

    assert tally.bytes_downloaded == sum(map(len, _served(tiny_dataset, ids).values()))
    size = f"{tally.bytes_downloaded / 1e6:.1f} MB"
    (tmp_path / "external" / "jpg" / f"{ids[0]}_blue.jpg").unlink()

    capsys.readouterr()
    assert download.main(["--data-dir", str(tmp_path), "--base-url", server.url, "--concurrency", "4"]) == 0
    assert server.take_requests() == [_url_path(ids[0], "blue")]
    assert capsys.readouterr().out.splitlines() == [
        f"HPAv18: 24 files of 6 Ids from {server.url}, 4 at once",
        f"downloaded 1 ({len(_served(tiny_dataset, ids[:1])[f'{ids[0]}_blue.jpg']) / 1e6:.1f} MB), skipped "
        f"23 already whole, failed 0; {tmp_path / 'external' / 'jpg'} holds 24 of 24 files ({size})"]
    assert _jpgs(tmp_path) == _served(tiny_dataset, ids)


def test_faults_are_retried_or_recorded_and_a_rerun_fetches_just_the_failed(tiny_dataset, server, tmp_path,
                                                                           capsys):
    ids = _dataset(tiny_dataset, tmp_path, 6)
    (twice_500, cut, held, missing, limited, damaged) = [_url_path(i, "green") for i in ids]
    server.faults = {twice_500: ["500", "500"], cut: ["cut"], held: ["hold"], limited: ["429"],
                     damaged: ["damaged"] * 3}
    server.missing = {missing}
    html = _url_path(ids[0], "red")
    server.faults[html] = ["html"]
    waits = []
    with pytest.raises(download.DownloadError, match=r"^3 of 24 files failed \(the first, "):
        download.download(tmp_path, server.url, concurrency=4, timeout=2.0, retries=2, backoff=0.25,
                          progress=False, sleep=waits.append)
    counts = pd.Series(server.take_requests()).value_counts()
    faulty = [twice_500, cut, held, missing, limited, damaged, html]
    assert counts[faulty].tolist() == [3, 2, 2, 1, 2, 3, 1] and counts.drop(faulty).eq(1).all()
    # backoff 0.25 s, doubled; the 429's Retry-After instead of the backoff, held for every request
    assert sorted(waits)[:2] == [0.25, 0.25] and {0.5, RETRY_AFTER} <= set(waits)
    assert max(waits) == RETRY_AFTER
    # and the pause every request then takes: what is left of the Retry-After (the test waits for nothing)
    assert any(RETRY_AFTER / 2 < w < RETRY_AFTER for w in waits)

    failed_names = (f"{ids[3]}_green.jpg", f"{ids[0]}_red.jpg", f"{ids[5]}_green.jpg")
    assert _jpgs(tmp_path) == _served(tiny_dataset, ids, leave_out=failed_names)
    assert not temporaries(tmp_path)
    failed = pd.read_csv(DataLayout(tmp_path).external_failed_csv, dtype=str)
    assert failed.columns.tolist() == ["Id", "color", "url", "reason"]
    host = server.url.removesuffix("/images")
    assert failed[["Id", "color", "url"]].values.tolist() == [
        [ids[0], "red", host + html], [ids[3], "green", host + missing], [ids[5], "green", host + damaged]]
    assert failed["reason"].tolist() == ["not a JPEG (HTTP 200, text/html)", "HTTP 404",
                                         "not a whole JPEG (no JPEG end marker) (3 attempts)"]

    capsys.readouterr()
    assert download.main(["--data-dir", str(tmp_path), "--base-url", server.url, "--quiet"]) == 2
    assert sorted(server.take_requests()) == sorted([html, missing, damaged])  # the missing ones only
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: 1 of 24 files failed (the first, "
                                                   f"{server.url}/{ids[3].split('_', 1)[0]}/")
    assert str(DataLayout(tmp_path).external_failed_csv) in err and "run the command again" in err
    assert pd.read_csv(DataLayout(tmp_path).external_failed_csv, dtype=str)["Id"].tolist() == [ids[3]]
    assert _jpgs(tmp_path) == _served(tiny_dataset, ids, leave_out=failed_names[:1])  # ids[3] green


def test_killed_mid_run_by_progress_then_a_rerun_ends_with_exactly_the_served_files(tiny_dataset, server,
                                                                                    tmp_path):
    """SIGKILLed inside its 30th file write (tests/kill_at.py), with 4 requests in flight."""
    ids = _dataset(tiny_dataset, tmp_path, 20)
    command = ["-m", "hpa_tf.data.download", "--data-dir", str(tmp_path), "--base-url", server.url,
               "--concurrency", "4", "--quiet"]
    done = subprocess.run([sys.executable, str(KILL_AT), "in-write", "30", *command], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    left = _jpgs(tmp_path)
    served = _served(tiny_dataset, ids)
    assert 20 <= len(left) < 80 and all(served[name] == data for name, data in left.items())
    assert temporaries(tmp_path)  # the file being written when it was killed
    server.take_requests()

    assert download.main(command[2:]) == 0
    assert len(server.take_requests()) == 80 - len(left)
    assert _jpgs(tmp_path) == served and not temporaries(tmp_path)


@pytest.mark.parametrize("bad_id", ["10580_1610_C1", "HPA01_1610_C1_1", "10580_1610_C1_1_x", ""])
def test_an_id_that_is_not_an_hpav18_id_is_named_with_its_line(bad_id, server, tmp_path, capsys):
    csv = tmp_path / "raw" / "HPAv18RBGY_wodpl.csv"
    csv.parent.mkdir()
    csv.write_text(f"Id,Target\n10580_1610_C1_1,0\n\n10580_1756_B1_1,5\n{bad_id},2\n")
    assert download.main(["--data-dir", str(tmp_path), "--base-url", server.url]) == 2
    assert capsys.readouterr().err == (f"error: {csv} line 5: Id {bad_id!r} is not an HPAv18 Id "
                                       "{antibody}_{plate}_{well}_{field} such as 10580_1610_C1_1\n")
    assert server.take_requests() == [] and not (tmp_path / "external").exists()


def test_a_base_url_that_does_not_answer_is_one_error_after_the_retries(tiny_dataset, tmp_path, capsys):
    _dataset(tiny_dataset, tmp_path, 3)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there: connections are refused
    url = f"http://127.0.0.1:{port}/images"
    code = download.main(["--data-dir", str(tmp_path), "--base-url", url, "--retries", "2", "--backoff", "0",
                          "--concurrency", "2", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {url} does not answer: 2 files in a row failed after their retries (the "
                          f"last, {url}/")
    assert "ConnectError" in err and "(3 attempts)" in err and "0 files were downloaded" in err
    assert _jpgs(tmp_path) == {} and not temporaries(tmp_path)


def test_a_server_that_fails_every_file_ends_the_run(tiny_dataset, server, tmp_path, capsys):
    ids = _dataset(tiny_dataset, tmp_path, 4)
    server.faults = {_url_path(i, c): ["500"] * 2 for i in ids for c in COLORS}
    code = download.main(["--data-dir", str(tmp_path), "--base-url", server.url, "--retries", "1",
                          "--backoff", "0", "--concurrency", "3", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {server.url} keeps failing: 3 files in a row failed after their retries")
    assert "HTTP 500 (2 attempts)" in err and "0 files were downloaded" in err
    # at most the files queued before the stop: the first window (2 x concurrency) and one more for each of
    # the 3 failures read, each with its 2 attempts; not all 16 files (32 requests), whatever the scheduling
    assert len(server.take_requests()) <= (2 * 3 + 3) * 2
    assert _jpgs(tmp_path) == {} and not temporaries(tmp_path)


def test_a_full_disk_names_the_file_and_leaves_nothing_partial(tiny_dataset, server, tmp_path, capsys,
                                                              monkeypatch):
    ids = _dataset(tiny_dataset, tmp_path, 3)
    victim = DataLayout(tmp_path).external_jpg(ids[1], "blue")
    write_atomic = download.write_atomic

    def full_disk(path, write):
        if Path(path) != victim:
            return write_atomic(path, write)

        def half_then_full(temporary: Path) -> None:
            temporary.write_bytes(b"\xff\xd8\xff" + bytes(100))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return write_atomic(path, half_then_full)

    monkeypatch.setattr(download, "write_atomic", full_disk)
    code = download.main(["--data-dir", str(tmp_path), "--base-url", server.url, "--concurrency", "1"])
    assert code == 2
    assert capsys.readouterr().err == (f"error: cannot write {victim}: No space left on device; nothing of "
                                       "it was kept\n")
    served = _served(tiny_dataset, ids)
    left = _jpgs(tmp_path)
    assert victim.name not in left and all(served[name] == data for name, data in left.items())
    assert not temporaries(tmp_path)


def test_verify_decodes_what_the_markers_pass_and_fetches_it_again(tiny_dataset, server, tmp_path):
    ids = _dataset(tiny_dataset, tmp_path, 2)
    download.download(tmp_path, server.url, progress=False)
    server.take_requests()
    layout = DataLayout(tmp_path)
    cut, garbled = layout.external_jpg(ids[0], "red"), layout.external_jpg(ids[1], "yellow")
    cut.write_bytes(cut.read_bytes()[:-100])
    garbled.write_bytes(b"\xff\xd8\xff" + bytes(500) + b"\xff\xd9")  # whole by its markers, no image

    assert download.download(tmp_path, server.url, progress=False).downloaded == 1
    assert server.take_requests() == [_url_path(ids[0], "red")]
    assert download.download(tmp_path, server.url, verify=True, progress=False).downloaded == 1
    assert server.take_requests() == [_url_path(ids[1], "yellow")]
    assert _jpgs(tmp_path) == _served(tiny_dataset, ids)


def test_retry_after_takes_seconds_or_a_date_and_is_capped():
    import httpx

    def asks(value: str) -> float | None:
        return download.retry_after(httpx.Response(429, headers={"Retry-After": value}))

    assert asks("7") == 7.0 and asks("86400") == download.MAX_RETRY_AFTER
    assert asks("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date already past: no wait
    assert asks("soon") is None and download.retry_after(httpx.Response(429)) is None


def test_the_summary_projects_the_whole_list_from_the_average_file():
    tally = download.Tally(total=8, give_up_after=1, downloaded=1, skipped=3, bytes_downloaded=500_000,
                           bytes_kept=1_500_000_000)
    assert tally.summary(Path("jpg")) == ("downloaded 1 (0.5 MB), skipped 3 already whole, failed 0; jpg "
                                          "holds 4 of 8 files (1.5 GB; about 3.0 GB when complete)")
