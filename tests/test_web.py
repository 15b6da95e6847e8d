"""The curators' web page on the tiny runs and a submission of them: its pages, review queues (against
the submission's files and the noise report read here), access token and refusals through HTTP (FastAPI's
client), the same path in a real headless browser (the OS's Chromium driven by Selenium), and the
corrections file taken by prepare."""

from __future__ import annotations

import dataclasses
import html
import io
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from hpa_tf import viz
from hpa_tf.cli import infer
from hpa_tf.config import InferenceConfig
from hpa_tf.curation import web
from hpa_tf.curation.access import access_token, start_urls
from hpa_tf.curation.corrections import COLUMNS, parse_labels
from hpa_tf.curation.queues import uncertain_queue
from hpa_tf.curation.web import QUEUE_PREVIEW, REPORT_PAGE, create_app, open_curation
from hpa_tf.data import prepare
from hpa_tf.data.io import read_rgby
from hpa_tf.errors import DataError
from hpa_tf.labels import LABEL_NAMES, parse_target
from hpa_tf.layout import DataLayout, SubmissionFiles

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


TOKEN = "team-token-1"


@pytest.fixture(scope="module")
def curation(trained_runs, tmp_path_factory):
    """The Curation of the tiny runs and of their submission (whole-image TTA; match threshold 0.8, so
    that the tiny metric run replaces some test label sets), its corrections in a module folder (each
    test sets its own file)."""
    _, out = trained_runs
    output = tmp_path_factory.mktemp("sub") / "s.csv"
    assert infer.main(["--submission", "--runs", str(out), "--output", str(output), "--seeds", "0",
                       "--match-threshold", "0.8", "--quiet"]) == 0
    config = InferenceConfig(runs=str(out), figures=str(tmp_path_factory.mktemp("figures")), k=4,
                             curator="tester", output=str(output))
    return open_curation(config)


def _ticked(page: str) -> list[int]:
    return [int(c) for c in re.findall(r'value="(\d+)" id="label-\d+" checked', page)]


def _text(page: str) -> str:
    """A page's text as a reader sees it (tags dropped, entities read)."""
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def _queue_links(page: str, name: str) -> list[tuple[str, int]]:
    """(Id, position) of each row of a queue table on a page."""
    return [(i, int(pos)) for i, pos in
            re.findall(rf'href="/image/([^"?]+)\?queue={name}&pos=(\d+)" class="queue-link"', page)]


def _planted_copy(root) -> tuple[str, str]:
    """(HPAv18 original, its planted test copy)."""
    pairs = pd.read_csv(DataLayout(root).raw_dir / "synthetic_duplicates.csv", dtype=str)
    row = pairs[(pairs["kind"] == "test_external") & (pairs["same_labels"] == "True")].iloc[0]
    return row["Id1"], row["Id2"]


def test_labels_typed_by_a_curator_are_checked():
    assert parse_labels(" 25, 0 3 3") == [0, 3, 25]
    for text, message in (("28", "'28' is not a class number 0..27"), ("1 -2", "'-2'"), ("a", "'a'"),
                          ("  ", "at least one")):
        with pytest.raises(DataError, match=message):
            parse_labels(text)


def test_pages_show_an_image_its_neighbours_and_record_a_correction(curation, trained_runs, tmp_path):
    root, _ = trained_runs
    curation.corrections = tmp_path / "corrections.csv"
    client = TestClient(create_app(curation, allowed_hosts=["testserver"]))
    original, copy = _planted_copy(root)
    assert "Annotated pool" in client.get("/").text
    found = client.get("/search", params={"id": copy}, follow_redirects=False)
    assert found.status_code == 303 and found.headers["location"] == f"/image/{copy}"
    page = client.get(f"/image/{copy}").text
    first = page.split('class="neighbour">', 1)[1].split("<", 1)[0]
    assert first == original  # the HPAv18 original is the nearest annotated image
    truth = pd.read_csv(DataLayout(root).test_truth_csv, dtype=str).set_index("Id")["Target"][copy]
    assert _ticked(page) == parse_target(truth)  # the form starts at the truth
    for c, name in enumerate(LABEL_NAMES):  # 28 named checkboxes
        assert f'name="label" value="{c}" id="label-{c}"' in page
        assert f"> {c} {html.escape(name)}</label>" in page
    png = client.get(f"/png/{copy}/green")
    assert png.headers["content-type"] == "image/png"
    green = np.asarray(Image.open(io.BytesIO(png.content)))
    np.testing.assert_array_equal(green, read_rgby(DataLayout(root), copy, "png", "test")[..., 1])
    composite = Image.open(io.BytesIO(client.get(f"/png/{copy}/composite").content))
    assert composite.mode == "RGB" and composite.size == green.shape[::-1]
    query = curation.query(copy)  # a map of each predicted label, each the composite under its Grad-CAM
    prediction = curation.predictions.of(query)
    assert f"({prediction.source})" in html.unescape(page) and prediction.labels
    section = page.split('<section id="explanations">', 1)[1].split("</section>", 1)[0]
    # the first map is requested with the page, each next one when the one before has come (the page's script)
    assert re.findall(r'<img (?:data-)?src="/explain/([^"]+)"', section) == \
        [f"{copy}/{c}.png" for c in prediction.labels]
    assert section.count(' src="/explain/') == 1 and section.count(' data-src="/explain/') == \
        len(prediction.labels) - 1
    maps = curation.explanations.maps(query, prediction.labels)
    for c in prediction.labels:
        served = client.get(f"/explain/{copy}/{c}.png")
        assert served.status_code == 200 and served.headers["content-type"] == "image/png"
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(served.content))),
                                      viz.heatmap_overlay(np.asarray(composite), maps[c]))
    for path, message in ((f"/explain/{copy}/28.png", "class 28 is not a class number 0..27"),
                          ("/explain/unknown-id/0.png", "unknown-id is in none of the embedding files")):
        refused = client.get(path)
        assert refused.status_code == 404 and message in refused.text

    saved = client.post(f"/image/{copy}/labels", data={"label": ["27", "0"], "who": "ann"},
                        follow_redirects=False)
    assert saved.status_code == 303 and saved.headers["location"] == f"/image/{copy}?saved=0+27"
    assert "Saved: 0 27" in client.get(saved.headers["location"]).text
    rows = pd.read_csv(curation.corrections, dtype=str, keep_default_na=False)
    assert rows.columns.tolist() == COLUMNS and len(rows) == 1
    assert rows.iloc[0][["Id", "Target", "previous", "who"]].tolist() == [copy, "0 27", truth, "ann"]
    client.post(f"/image/{original}/labels", data={"labels": "5"})  # typed numbers too; the first row kept
    assert pd.read_csv(curation.corrections, dtype=str)["Id"].tolist() == [copy, original]

    before = curation.corrections.read_bytes()
    refusals = [(client.get("/image/unknown-id"), 404, "unknown-id is in none of the embedding files"),
                (client.post(f"/image/{copy}/labels", data={"labels": "3 28"}), 400,
                 "&#39;28&#39; is not a class number 0..27"),
                (client.post(f"/image/{copy}/labels", data={"label": ["3", "x"]}), 400, "&#39;x&#39;"),
                (client.post(f"/image/{copy}/labels", data={"who": "ann"}), 400, "at least one"),
                (client.post("/image/unknown-id/labels", data={"labels": "3"}), 404, "unknown-id"),
                (client.get("/search", params={"id": "../../etc/passwd"}), 400, "invalid image Id"),
                (client.post("/image/..x/labels", data={"labels": "3"}), 400, "invalid image Id")]
    for response, status, message in refusals:
        assert response.status_code == status and message in response.text, response.text[:500]
        assert "Nothing was written" in response.text
    forged = client.post(f"/image/{copy}/labels", data={"labels": "3"}, headers={"Origin": "http://evil.example"})
    assert forged.status_code == 403 and "another site (http://evil.example) is refused" in forged.text
    assert client.get("/", headers={"Host": "evil.example"}).status_code == 400  # DNS rebinding
    assert curation.corrections.read_bytes() == before


def test_the_noise_report_is_a_sortable_paged_table_of_links(curation):
    client = TestClient(create_app(curation, allowed_hosts=["testserver"]))
    report = curation.report
    expected = report.sort_values("disagreement", ascending=False, kind="stable", na_position="last")
    linked = []
    for number in (1, 2):
        page = client.get("/noise-report", params={"sort": "disagreement", "order": "desc",
                                                   "page_number": number}).text
        linked.append([part.split('"', 1)[0] for part in page.split('<td><a href="/image/')[1:]])
    assert len(report) > REPORT_PAGE  # the tiny pool fills two pages
    assert linked[0] == expected["Id"].tolist()[:REPORT_PAGE]
    assert linked[1] == expected["Id"].tolist()[REPORT_PAGE:2 * REPORT_PAGE]
    assert f"Rows 1-{REPORT_PAGE} of {len(report)}, page 1 of" in client.get("/noise-report").text
    assert client.get("/noise-report", params={"sort": "nonsense"}).status_code == 400


def test_the_noise_report_filters_by_class_with_names_and_thumbnails(curation):
    client = TestClient(create_app(curation, allowed_hosts=["testserver"]))
    report = curation.report
    top = report.iloc[0]
    cls = parse_target(top["Target"])[0]
    holds = [cls in parse_target(t) or cls in parse_target(m)
             for t, m in zip(report["Target"], report["majority"], strict=True)]
    page = client.get("/noise-report", params={"cls": str(cls)}).text
    linked = [part.split('"', 1)[0] for part in page.split('<td><a href="/image/')[1:]]
    assert linked == report[holds]["Id"].tolist()[:REPORT_PAGE] and top["Id"] in linked
    assert sum(holds) < len(report) and f" of {sum(holds)}, page 1 of" in page
    assert f'<img src="/thumbnail/{top["Id"]}"' in page
    names = ", ".join(f"{c} {LABEL_NAMES[c]}" for c in parse_target(top["Target"]))
    assert names in _text(page)
    thumb = Image.open(io.BytesIO(client.get(f"/thumbnail/{top['Id']}").content))
    assert thumb.mode == "RGB" and max(thumb.size) <= viz.TILE_PX
    for params in ({"cls": "28"}, {"cls": "x"}, {"cls": "-1"}, {"page_number": "99"}, {"page_number": "0"}):
        refused = client.get("/noise-report", params=params)
        assert refused.status_code == 400 and "Nothing was written" in refused.text, params


def _expected_queues(curation) -> dict[str, list[str]]:
    """The queues' Ids computed here from the submission's files and the noise report."""
    files = SubmissionFiles(curation.config.output)
    evidence = pd.read_csv(files.neighbours)
    probs, thresholds = np.load(files.probabilities), np.load(files.thresholds)
    ids = pd.read_csv(files.prob_ids)["Id"].to_numpy()
    margin = np.abs(probs - thresholds).min(axis=1)
    report = curation.report
    return {"replaced": evidence[evidence["replaced"]]["Id"].tolist(),
            "noise": report[report["disagreement"] > 0]["Id"].tolist()[:200],
            "uncertain": ids[np.argsort(margin, kind="stable")][:200].tolist()}


def test_review_queues_list_what_to_look_at_with_progress(curation, tmp_path, monkeypatch):
    """The front page's three queues, their pages and an image's previous/next, against the submission's
    evidence and probabilities and the noise report; a decision marks its row."""
    curation.corrections = tmp_path / "corrections.csv"
    client = TestClient(create_app(curation, allowed_hosts=["testserver"]))
    expected = _expected_queues(curation)
    assert len(expected["replaced"]) > QUEUE_PREVIEW and expected["noise"]
    assert len(expected["uncertain"]) == len(pd.read_csv(SubmissionFiles(curation.config.output).prob_ids))
    front = client.get("/").text
    monkeypatch.setattr(web, "QUEUE_PAGE", 10)
    for name, ids in expected.items():
        assert _queue_links(front, name) == [(i, n) for n, i in enumerate(ids[:QUEUE_PREVIEW], 1)]
        assert f'id="progress-{name}">0 decided / {len(ids)}<' in front
        pages = -(-len(ids) // 10)
        listed = sum((_queue_links(client.get(f"/queue/{name}", params={"page_number": str(n)}).text, name)
                      for n in range(1, pages + 1)), [])
        assert listed == [(i, n) for n, i in enumerate(ids, 1)]
        for bad in (str(pages + 1), "0", "x"):
            refused = client.get(f"/queue/{name}", params={"page_number": bad})
            assert refused.status_code == 400 and "out of range" in refused.text
    evidence = pd.read_csv(SubmissionFiles(curation.config.output).neighbours).set_index("Id")
    first, second, third = expected["replaced"][:3]
    row = front.split(f'href="/image/{second}?queue=replaced&pos=2"', 1)[1].split("</tr>", 1)[0]
    after, before = (parse_target(evidence.loc[second, c]) for c in ("after", "before"))
    assert ", ".join(f"{c} {LABEL_NAMES[c]}" for c in after) in _text(row)
    assert f"was {', '.join(f'{c} {LABEL_NAMES[c]}' for c in before)}; nearest HPAv18 " \
           f"{evidence.loc[second, 'top1']}" in _text(row) and ">open<" in row

    page = client.get(f"/image/{second}", params={"queue": "replaced", "pos": "2"}).text
    assert f'href="/image/{first}?queue=replaced&pos=1" id="queue-previous"' in page
    assert f'href="/image/{third}?queue=replaced&pos=3" id="queue-next"' in page
    saved = client.post(f"/image/{second}/labels", data={"label": ["1"], "queue": "replaced", "pos": "2"},
                        follow_redirects=False)
    assert saved.headers["location"] == f"/image/{second}?saved=1&queue=replaced&pos=2"
    front = client.get("/").text
    assert f'id="progress-replaced">1 decided / {len(expected["replaced"])}<' in front
    row = front.split(f'href="/image/{second}?queue=replaced&pos=2"', 1)[1].split("</tr>", 1)[0]
    assert ">decided<" in row
    before = curation.corrections.read_bytes()
    for params in ({"queue": "replaced", "pos": "3"}, {"queue": "replaced", "pos": "x"},
                   {"queue": "nonsense", "pos": "1"}):
        assert client.get(f"/image/{second}", params=params).status_code == 400, params
        assert client.post(f"/image/{second}/labels", data={"label": ["2"], **params}).status_code == 400
    assert client.get("/queue/nonsense").status_code == 400
    assert curation.corrections.read_bytes() == before
    fresh = dataclasses.replace(curation, _report=None)  # the front page does not wait for the report
    assert 'id="pending-noise"' in TestClient(create_app(fresh, allowed_hosts=["testserver"])).get("/").text


def test_the_uncertain_queue_says_why_it_is_empty(curation, tmp_path):
    """Without the submission's probability files, or with one damaged or not fitting the Ids, the queue is
    empty with a note that names the file and the command that writes it again."""
    output, written = tmp_path / "s.csv", SubmissionFiles(curation.config.output)
    files, remedy = SubmissionFiles(output), f"run `python infer.py --submission --output {output}`"
    missing = uncertain_queue(output)
    assert missing.rows.empty and missing.note == f"no {files.probabilities} and its side files: {remedy}"
    for name in ("probabilities", "prob_ids", "thresholds"):
        shutil.copy(getattr(written, name), getattr(files, name))
    assert uncertain_queue(output).rows.values.tolist() == \
        uncertain_queue(curation.config.output).rows.values.tolist()
    ids = pd.read_csv(files.prob_ids, dtype=str)
    ids.iloc[:-1].to_csv(files.prob_ids, index=False)  # one Id fewer than probability rows
    unfit = uncertain_queue(output)
    assert unfit.rows.empty and f"do not fit the {len(ids) - 1} Ids of {files.prob_ids}" in unfit.note
    ids.to_csv(files.prob_ids, index=False)
    files.probabilities.write_bytes(written.probabilities.read_bytes()[:100])  # cut short
    damaged = uncertain_queue(output)
    assert damaged.rows.empty and damaged.note.startswith(f"{files.probabilities} or {files.thresholds} "
                                                          "is damaged") and damaged.note.endswith(remedy)


def test_a_shared_page_needs_its_token(curation, tmp_path):
    """Served with a token: any host name is accepted, but a request without the token or with a wrong one
    gets a 403 page and writes nothing; the token in a URL is kept in a cookie for the next requests."""
    curation.corrections = tmp_path / "corrections.csv"
    image_id = curation.pool.frame["Id"].iat[0]
    client = TestClient(create_app(curation, token=TOKEN), base_url="http://10.1.2.3:8000")
    for params, had in (({}, "no"), ({"token": "team-token-2"}, "a wrong")):
        for response in (client.get("/", params=params),
                         client.post(f"/image/{image_id}/labels", params=params, data={"label": ["3"]})):
            assert response.status_code == 403, response.text[:300]
            assert f"needs its access token and the request had {had} token" in response.text
    assert not curation.corrections.exists()
    assert client.get("/", params={"token": TOKEN}).status_code == 200
    assert client.get("/noise-report").status_code == 200  # the cookie carries it
    saved = client.post(f"/image/{image_id}/labels", data={"label": ["3"]}, follow_redirects=False)
    assert saved.status_code == 303
    assert pd.read_csv(curation.corrections, dtype=str)["Id"].tolist() == [image_id]
    assert TestClient(create_app(curation), base_url="http://10.1.2.3:8000").get("/").status_code == 400


def test_only_loopback_serves_without_a_token():
    assert [access_token(host, None) for host in ("127.0.0.1", "127.0.1.1", "::1", "localhost")] == [None] * 4
    shared = {access_token(host, None) for host in ("0.0.0.0", "192.168.1.5", "::", "my-workstation")}
    assert len(shared) == 4 and all(len(token) >= 32 for token in shared)  # random, one per start
    assert access_token("0.0.0.0", "given") == access_token("127.0.0.1", "given") == "given"
    assert start_urls("0.0.0.0", 8000, "t") == [f"http://{socket.gethostname()}:8000/?token=t",
                                                "http://127.0.0.1:8000/?token=t"]
    assert start_urls("127.0.0.1", 8000, None) == ["http://127.0.0.1:8000/"]
    args = infer.parse_args(["--serve", "--host", "0.0.0.0", "--token", "x"])
    assert infer.inference_config(args).token == "x"


def test_prepare_takes_the_corrections_like_train_extra(prepared, tmp_path):
    """An HPAv18 image corrected twice: its last decision is its corrected label set (classes 8, 9, 10,
    20 and 26 keep the old labels, as for train_extra, spec 3.4)."""
    root = tmp_path / "tiny"
    shutil.copytree(prepared[0], root)
    layout = DataLayout(root)
    image_id = layout.read_meta("external_meta.csv")["Id"].iloc[0]
    other = layout.read_meta("external_meta.csv")["Id"].iloc[1]
    # train_extra writes HPAv18 Ids with '/' for the first '_'; a curator's decision wins over its row
    (layout.raw_dir / "train_extra.csv").write_text(
        f"Id,Target\n{image_id.replace('_', '/', 1)},4\n{other.replace('_', '/', 1)},4\n")
    corrections = tmp_path / "corrections.csv"
    corrections.write_text(f"Id,Target,previous,who,when\n{image_id},1,0,ann,t1\n{image_id},2 27,1,bob,t2\n")
    assert prepare.main(["--data-dir", str(root), "--workers", "1", "--quiet", "--corrections",
                         str(corrections)]) == 0
    corrected = layout.read_meta("external_antibody_correct_meta.csv").set_index("Id")["Target"]
    old = parse_target(layout.read_meta("external_meta.csv").set_index("Id")["Target"][image_id])
    kept = [c for c in old if c in (8, 9, 10, 20, 26)]
    assert parse_target(corrected[image_id]) == sorted({2, 27, *kept})
    kept = parse_target(layout.read_meta("external_meta.csv").set_index("Id")["Target"][other])
    assert parse_target(corrected[other]) == sorted({4, *[c for c in kept if c in (8, 9, 10, 20, 26)]})


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server(curation, tmp_path):
    """The app served by uvicorn on 127.0.0.1 in a thread, as a shared page (with TOKEN); yields its
    address."""
    import uvicorn

    curation.corrections = tmp_path / "corrections.csv"
    port = _free_port()
    running = uvicorn.Server(uvicorn.Config(create_app(curation, token=TOKEN), host="127.0.0.1", port=port,
                                            log_level="warning"))
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not running.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    running.should_exit = True
    thread.join(timeout=10)


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                    reason="needs the OS's Chromium and its driver (apt-get install chromium "
                           "chromium-driver; .ci/run installs them)")
def test_a_curator_corrects_a_label_in_a_real_browser(server, curation, trained_runs):
    """Refused without the token, then opened with it; search the planted test copy, see its HPAv18
    original first among the neighbours; open the first replaced image from the front page's queue, its
    checkboxes ticked with its labels, tick others and save, go on to the next; find the decision in the
    CSV and the queue's progress."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    root, _ = trained_runs
    original, copy = _planted_copy(root)
    truth = pd.read_csv(DataLayout(root).test_truth_csv, dtype=str).set_index("Id")["Target"]
    replaced = _expected_queues(curation)["replaced"]
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        wait = WebDriverWait(browser, 30)
        browser.get(server + "/")
        refused = browser.find_element(By.ID, "error").text
        assert "needs its access token and the request had no token" in refused
        browser.get(f"{server}/?token={TOKEN}")
        browser.find_element(By.ID, "image-id").send_keys(copy)
        browser.find_element(By.ID, "go").click()
        wait.until(expected_conditions.presence_of_element_located((By.ID, "neighbours")))
        assert browser.find_element(By.ID, "image").text.startswith(copy)
        assert browser.find_elements(By.CSS_SELECTOR, "a.neighbour")[0].text == original
        images = browser.find_elements(By.CSS_SELECTOR, ".views img")
        assert len(images) == 5 and all(browser.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", img) for img in images)
        predicted = curation.predictions.of(curation.query(copy)).labels  # a map per predicted label
        maps = browser.find_elements(By.CSS_SELECTOR, "#explanations img.explanation")
        assert [m.get_attribute("alt") for m in maps] == [LABEL_NAMES[c] for c in predicted]
        wait.until(lambda _: all(browser.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", m) for m in maps))

        browser.get(server + "/")  # the token is in the cookie now
        assert browser.find_element(By.ID, "progress-replaced").text == f"0 decided / {len(replaced)}"
        browser.find_elements(By.CSS_SELECTOR, "#queue-replaced a.queue-link")[0].click()
        wait.until(expected_conditions.presence_of_element_located((By.ID, "queue-nav")))
        assert browser.find_element(By.ID, "image").text.startswith(replaced[0])
        boxes = browser.find_elements(By.CSS_SELECTOR, "#labels input[type=checkbox]")
        names = [label.text for label in browser.find_elements(By.CSS_SELECTOR, "#labels label.class")]
        assert len(boxes) == 28 and names == [f"{c} {name}" for c, name in enumerate(LABEL_NAMES)]
        assert [int(box.get_attribute("value")) for box in boxes if box.is_selected()] == \
            parse_target(truth[replaced[0]])
        for box in boxes:
            if box.is_selected() != (box.get_attribute("value") in ("2", "25")):
                box.click()
        browser.find_element(By.ID, "save").click()
        wait.until(expected_conditions.presence_of_element_located((By.ID, "saved")))
        assert browser.find_element(By.ID, "saved").text == "Saved: 2 25"
        browser.find_element(By.ID, "queue-next").click()
        wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "image"), replaced[1]))
        browser.get(server + "/")
        assert browser.find_element(By.ID, "progress-replaced").text == f"1 decided / {len(replaced)}"
    finally:
        browser.quit()
    rows = pd.read_csv(Path(curation.corrections), dtype=str, keep_default_na=False)
    assert rows[["Id", "Target", "who"]].values.tolist() == [[replaced[0], "2 25", "tester"]]
