"""The HPAv18 download (spec 1.3, the original's s1): every colour of every Id in raw/HPAv18RBGY_wodpl.csv
from the HPA v18 image server into external/jpg/, several requests at once, resumable.

    python -m hpa_tf.data.download --data-dir DIR [--concurrency 8] [--verify] [--base-url URL]

Files already there and whole (JPEG start and end markers; with --verify a full decode) are skipped.
Timeouts, connection errors and 5xx responses are retried with exponential backoff; a 429 pauses every
request for as long as its Retry-After asks; a 404 (any other 4xx) is recorded at once; a server that fails
file after file ends the run. A file is written atomically and kept only when it decodes. The files that
failed go to external/download_failed.csv, the command exits 2 naming how many, and a rerun fetches just
the missing ones.
"""

from __future__ import annotations

import argparse
import csv
import email.utils
import itertools
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pandas as pd
from tqdm import tqdm

from hpa_tf.atomic import remove_temporaries, write_atomic, write_csv_atomic
from hpa_tf.data.io import ImageReadError, read_plane_jpg
from hpa_tf.errors import DataError
from hpa_tf.layout import COLORS, DataLayout
from hpa_tf.output import bars_disabled, prog, run_or_exit, setup_logging

log = logging.getLogger("hpa_tf.data.download")  # not __name__: "__main__" under python -m

BASE_URL = "http://v18.proteinatlas.org/images"  # {BASE_URL}/{antibody}/{plate_well_field}_{color}.jpg
CONCURRENCY = 8  # the original's 8 workers
TIMEOUT = 30.0  # seconds to connect, and between two reads of a response
RETRIES = 5  # attempts after the first
BACKOFF = 1.0  # seconds before the first retry, doubled before each next one up to MAX_BACKOFF
MAX_BACKOFF = 60.0
MAX_RETRY_AFTER = 600.0  # the longest a Retry-After is obeyed for
FAILED_COLUMNS = ["Id", "color", "url", "reason"]
JPEG_START, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
_TAIL = 1024  # bytes at a file's end in which its JPEG end marker must stand
_HPAV18_ID = re.compile(r"(?P<antibody>[0-9]+)_(?P<field>[0-9]+_[A-Za-z]+[0-9]+_[0-9]+)")


class DownloadError(DataError):
    """A bad Id list, a server that does not answer, a file that cannot be written, or files that failed."""


@dataclass(frozen=True)
class Job:
    """One file to fetch: a colour of an Id, its URL and where it goes."""

    image_id: str
    color: str
    url: str
    path: Path


@dataclass(frozen=True)
class Outcome:
    """What became of a job: "downloaded", "skipped" (already whole) or "failed" (with the reason)."""

    job: Job
    status: str
    size: int = 0  # bytes of the file kept
    reason: str = ""
    retried_out: bool = False  # failed after all its attempts (not a 404 or an error page, failed at once)
    unanswered: bool = False  # and without a single HTTP response (timeouts, connection errors)


# ------------------------------------------------------------------------------------------ the Id list
def read_jobs(layout: DataLayout, base_url: str = BASE_URL) -> list[Job]:
    """Every colour of every Id of the Id list (a repeated Id once), in its order; DownloadError names the
    first Id that is not {antibody}_{plate}_{well}_{field} and its line, or an empty list."""
    path = layout.external_csv
    if not path.is_file():
        raise DownloadError(f"missing {path}: the HPAv18 Id list (Id,Target; spec 1.3) goes there")
    jobs, seen = [], set()
    for line, image_id in _csv_ids(path):
        match = _HPAV18_ID.fullmatch(image_id)
        if match is None:
            raise DownloadError(f"{path} line {line}: Id {image_id!r} is not an HPAv18 Id "
                                "{antibody}_{plate}_{well}_{field} such as 10580_1610_C1_1")
        if image_id not in seen:
            seen.add(image_id)
            folder = f"{base_url.rstrip('/')}/{match['antibody']}/{match['field']}"
            jobs += [Job(image_id, c, f"{folder}_{c}.jpg", layout.external_jpg(image_id, c)) for c in COLORS]
    if not jobs:
        raise DownloadError(f"{path} lists no Ids")
    return jobs


def _csv_ids(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, Id) of each row of a CSV file with an Id column, blank lines passed over."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            if "Id" not in header:
                raise DownloadError(f"{path}: no Id column; found {header}")
            column = header.index("Id")
            for row in reader:
                if row:
                    yield reader.line_num, row[column] if column < len(row) else ""
    except (UnicodeDecodeError, csv.Error) as error:
        raise DownloadError(f"{path} is not a CSV table ({type(error).__name__}: {error})") from None


# ------------------------------------------------------------------------------------------- the files
def jpeg_problem(path: Path, color: str, decode: bool = False) -> str | None:
    """Why the file is not a whole JPEG (None when it is): its start marker and its end marker in the last
    KiB (a writer may pad after it; scan data never holds one), and with `decode` a full decode of the
    plane that prepare reads."""
    with open(path, "rb") as handle:
        head = handle.read(len(JPEG_START))
        handle.seek(max(handle.seek(0, os.SEEK_END) - _TAIL, len(head)))  # the end marker after the start
        tail = handle.read()
    if head != JPEG_START:
        return "not a JPEG (no JPEG start marker)"
    if JPEG_END not in tail:
        return "not a whole JPEG (no JPEG end marker)"
    if decode:
        try:
            read_plane_jpg(path, color)
        except ImageReadError as error:
            cause = error.__cause__ or error
            return f"not a whole JPEG ({type(cause).__name__}: {cause})"
    return None


class _Rejected(Exception):
    """A response body that is not a whole JPEG; write_atomic then removes its temporary file."""


def save_jpeg(job: Job, data: bytes) -> str | None:
    """Write `data` to job.path atomically if it is a whole, decodable JPEG; else the reason, and nothing is
    written. A file that cannot be written (a full disk) raises DownloadError naming it."""

    def write(temporary: Path) -> None:
        temporary.write_bytes(data)
        problem = jpeg_problem(temporary, job.color, decode=True)
        if problem:
            raise _Rejected(problem)

    try:
        write_atomic(job.path, write)
    except _Rejected as rejected:
        return str(rejected)
    except OSError as error:  # the temporary file is gone: write_atomic removes it
        raise DownloadError(f"cannot write {job.path}: {error.strerror or error}; nothing of it was "
                            "kept") from error
    return None


def retry_after(response: httpx.Response) -> float | None:
    """The seconds a response's Retry-After asks to wait (a number or an HTTP date), at most
    MAX_RETRY_AFTER; None without one."""
    value = response.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max((when - datetime.now(UTC)).total_seconds(), 0.0), MAX_RETRY_AFTER)


def _retried(status: int) -> bool:
    """HTTP statuses worth another try: a server error, a rate limit, a request timeout."""
    return status >= 500 or status in (408, 429)


@dataclass
class _Attempt:
    """One request's result: a final outcome, or the reason to try again and how long to wait first."""

    outcome: Outcome | None = None
    reason: str = ""
    delay: float | None = None  # None: the backoff
    answered: bool = True


class Fetcher:
    """Fetches one file with retries through a shared HTTP client (called from several threads at once).

    `sleep(seconds)` waits between attempts (tests pass one that records); `stop` ends a run's waits and
    attempts early."""

    def __init__(self, client: httpx.Client, retries: int, backoff: float, verify: bool,
                 stop: threading.Event, sleep: Callable[[float], object] | None = None):
        self.client, self.retries, self.backoff, self.verify = client, retries, backoff, verify
        self.stop = stop
        self.sleep = sleep or stop.wait
        self._resume_at = 0.0  # time.monotonic() before which no request goes out (a 429's Retry-After)
        self._lock = threading.Lock()

    def __call__(self, job: Job) -> Outcome | None:
        """The job's outcome; None when the run stopped first."""
        kept = self._kept_size(job)
        if kept:
            return Outcome(job, "skipped", kept)
        answered = False
        for attempt in range(self.retries + 1):
            if self.stop.is_set():
                return None
            self._wait_for_rate_limit()
            result = self._attempt(job)
            answered = answered or result.answered
            if result.outcome is not None:
                return result.outcome
            if attempt < self.retries:
                self.sleep(result.delay if result.delay is not None else self._backoff(attempt))
        return Outcome(job, "failed", reason=f"{result.reason} ({self.retries + 1} attempts)",
                       retried_out=True, unanswered=not answered)

    def _kept_size(self, job: Job) -> int:
        """The size of the file already there if it is whole, else 0 (a damaged one is said so)."""
        if not job.path.is_file():
            return 0
        problem = jpeg_problem(job.path, job.color, decode=self.verify)
        if problem:
            log.info(f"{job.path}: {problem}; fetching it again")
            return 0
        return job.path.stat().st_size

    def _attempt(self, job: Job) -> _Attempt:
        try:
            response = self.client.get(job.url)
        except httpx.TimeoutException as error:
            return _Attempt(reason=f"timed out ({type(error).__name__})", answered=False)
        except httpx.TransportError as error:
            return _Attempt(reason=f"{type(error).__name__}: {error}", answered=False)
        except httpx.RequestError as error:  # too many redirects, a body that does not decode
            return _Attempt(reason=f"{type(error).__name__}: {error}")
        status = response.status_code
        if status == 200 and not response.content.startswith(JPEG_START):  # an error page, not a cut
            kind = response.headers.get("Content-Type", "no Content-Type")
            return _Attempt(Outcome(job, "failed", reason=f"not a JPEG (HTTP 200, {kind})"))
        if status == 200:
            problem = save_jpeg(job, response.content)
            if problem is None:
                return _Attempt(Outcome(job, "downloaded", len(response.content)))
            return _Attempt(reason=problem)
        if not _retried(status):
            return _Attempt(Outcome(job, "failed", reason=f"HTTP {status}"))
        wait_for = retry_after(response)
        if status == 429 and wait_for is not None:
            log.info(f"{job.url}: HTTP 429, every request waits {wait_for:g} s as Retry-After asks")
            self._hold(wait_for)
        return _Attempt(reason=f"HTTP {status}", delay=wait_for)

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff * 2 ** attempt, MAX_BACKOFF)

    def _hold(self, seconds: float) -> None:
        with self._lock:
            self._resume_at = max(self._resume_at, time.monotonic() + seconds)

    def _wait_for_rate_limit(self) -> None:
        with self._lock:
            left = self._resume_at - time.monotonic()
        if left > 0:
            self.sleep(left)


# ------------------------------------------------------------------------------------------- the run
def each_done(fetch: Callable[[Job], Outcome | None], jobs: Iterable[Job], concurrency: int
              ) -> Iterator[Future]:
    """fetch(job) for every job, `concurrency` at once, yielded as they finish (a future: its result()
    raises what fetch raised, in the caller); only a window of jobs is queued at a time, not all 296,000."""
    jobs = iter(jobs)
    with ThreadPoolExecutor(concurrency, thread_name_prefix="hpa-download") as pool:
        running = {pool.submit(fetch, job) for job in itertools.islice(jobs, 2 * concurrency)}
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                running |= {pool.submit(fetch, job) for job in itertools.islice(jobs, 1)}
                yield future


@dataclass
class Tally:
    """The counts of a run so far, and when a server that fails everything ends it."""

    total: int
    give_up_after: int  # this many files in a row failed after all their retries: the server is down
    downloaded: int = 0
    skipped: int = 0
    bytes_downloaded: int = 0
    bytes_kept: int = 0
    failing_in_a_row: int = 0
    failed: list[Outcome] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        if outcome.status == "failed":
            self.failed.append(outcome)
            self.failing_in_a_row = self.failing_in_a_row + 1 if outcome.retried_out else 0
            return
        self.failing_in_a_row = 0
        self.bytes_kept += outcome.size
        if outcome.status == "downloaded":
            self.downloaded += 1
            self.bytes_downloaded += outcome.size
        else:
            self.skipped += 1

    @property
    def server_down(self) -> bool:
        return self.failing_in_a_row >= self.give_up_after

    def summary(self, folder: Path) -> str:
        """The run's last line: its counts, and what the folder holds (projected to the whole list)."""
        kept = self.downloaded + self.skipped
        line = (f"downloaded {self.downloaded} ({_size(self.bytes_downloaded)}), skipped {self.skipped} "
                f"already whole, failed {len(self.failed)}; {folder} holds {kept} of {self.total} files "
                f"({_size(self.bytes_kept)}")
        if 0 < kept < self.total:
            line += f"; about {_size(self.bytes_kept / kept * self.total)} when complete"
        return line + ")"


def _size(size: float) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def download(data_dir: str | Path, base_url: str = BASE_URL, concurrency: int = CONCURRENCY,
             timeout: float = TIMEOUT, retries: int = RETRIES, backoff: float = BACKOFF, verify: bool = False,
             progress: bool = True, sleep: Callable[[float], object] | None = None) -> Tally:
    """Fetch every missing or damaged HPAv18 file of data_dir's Id list; the tally of the run. Raises
    DownloadError when files failed (after writing their list), when the server does not answer, or when
    a file cannot be written."""
    layout = DataLayout(data_dir)
    _check_url(base_url)
    jobs = read_jobs(layout, base_url)
    folders = sorted({job.path.parent for job in jobs})
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    remove_temporaries(folders)  # a killed run's
    tally = Tally(len(jobs), give_up_after=max(1, min(concurrency, len(jobs))))
    log.info(f"HPAv18: {len(jobs)} files of {len(jobs) // len(COLORS)} Ids from {base_url}, "
             f"{concurrency} at once")
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(timeout=timeout, limits=limits, follow_redirects=True,
                      headers={"User-Agent": "hpa-tf (HPAv18 download, spec 1.3)"}) as client:
        stop = threading.Event()
        fetch = Fetcher(client, retries, backoff, verify, stop, sleep)
        _run(fetch, jobs, concurrency, tally, base_url, progress)
    folder = folders[0] if folders else layout.external_csv.parent
    log.info(tally.summary(folder))
    position = {job: n for n, job in enumerate(jobs)}
    failed = sorted(tally.failed, key=lambda outcome: position[outcome.job])  # in Id list order
    _record_failures(layout, failed)
    if failed:
        first = failed[0]
        raise DownloadError(f"{len(failed)} of {tally.total} files failed (the first, {first.job.url}: "
                            f"{first.reason}); they are listed in {layout.external_failed_csv}: run the "
                            "command again to fetch them")
    return tally


def _check_url(base_url: str) -> None:
    url = httpx.URL(base_url)
    if url.scheme not in ("http", "https") or not url.host:
        raise DownloadError(f"--base-url {base_url!r} is not an http:// or https:// URL")


def _run(fetch: Fetcher, jobs: list[Job], concurrency: int, tally: Tally, base_url: str,
         progress: bool) -> None:
    """Fetch the jobs into the tally under a progress bar (files/s, MB/s); DownloadError ends it early when
    the server does not answer or fails every file."""
    start = time.perf_counter()
    outcomes = each_done(fetch, jobs, concurrency)
    try:
        with tqdm(total=len(jobs), desc="HPAv18", unit="file", disable=bars_disabled(progress)) as bar:
            for done in outcomes:
                outcome = done.result()
                tally.add(outcome)
                bar.update()
                rate = tally.bytes_downloaded / 1e6 / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix_str(f"{rate:.1f} MB/s, {len(tally.failed)} failed", refresh=False)
                if tally.server_down:
                    state = "does not answer" if outcome.unanswered else "keeps failing"
                    raise DownloadError(
                        f"{base_url} {state}: {tally.failing_in_a_row} files in a row failed after their "
                        f"retries (the last, {outcome.job.url}: {outcome.reason}); {tally.downloaded} files "
                        "were downloaded, nothing partial was kept. Run the command again later")
    finally:
        fetch.stop.set()  # before the pool is joined: its waits and queued jobs end at once
        outcomes.close()


def _record_failures(layout: DataLayout, failed: list[Outcome]) -> None:
    """The failed files' CSV, or none when nothing failed."""
    path = layout.external_failed_csv
    if not failed:
        path.unlink(missing_ok=True)
        return
    rows = [[o.job.image_id, o.job.color, o.job.url, o.reason] for o in failed]
    try:
        write_csv_atomic(pd.DataFrame(rows, columns=FAILED_COLUMNS), path)
    except OSError as error:
        raise DownloadError(f"cannot write {path}: {error.strerror or error}; {len(failed)} files "
                            "failed") from error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog("-m hpa_tf.data.download"),
        description="Download the HPAv18 images (every colour of every Id in raw/HPAv18RBGY_wodpl.csv) into "
                    "external/jpg/. Resumable: files already there and whole are skipped.")
    parser.add_argument("--data-dir", required=True, help="dataset root (raw/HPAv18RBGY_wodpl.csv in it)")
    parser.add_argument("--concurrency", type=_positive(int), default=CONCURRENCY,
                        help=f"requests at once (default {CONCURRENCY}, as the original)")
    parser.add_argument("--verify", action="store_true",
                        help="decode every file already there (not only check its JPEG markers) and fetch "
                             "the bad ones again")
    parser.add_argument("--base-url", default=BASE_URL, help=f"the image server (default {BASE_URL})")
    parser.add_argument("--timeout", type=_positive(float), default=TIMEOUT,
                        help=f"seconds to connect and between two reads of a response (default {TIMEOUT:g})")
    parser.add_argument("--retries", type=_positive(int, zero=True), default=RETRIES,
                        help=f"attempts after the first on a timeout, connection error, 5xx or 429 "
                             f"(default {RETRIES})")
    parser.add_argument("--backoff", type=_positive(float, zero=True), default=BACKOFF,
                        help=f"seconds before the first retry, doubled each time up to {MAX_BACKOFF:g} "
                             f"(default {BACKOFF:g})")
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only, no progress bar")
    args = parser.parse_args(argv)
    setup_logging(args.quiet)
    return run_or_exit(lambda: download(
        args.data_dir, args.base_url, args.concurrency, args.timeout, args.retries, args.backoff,
        verify=args.verify, progress=not args.quiet))


def _positive(kind: type, zero: bool = False) -> Callable[[str], float]:
    """An argparse type: a number of `kind` above 0 (or at least 0 with `zero`)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(f"{text} must be {'0 or more' if zero else 'more than 0'}")
        return value

    return parse


if __name__ == "__main__":
    sys.exit(main())
