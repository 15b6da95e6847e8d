"""The curators' web page on the tiny runs: its pages and refusals through HTTP (FastAPI's client), the
same path in a real headless browser (the OS's Chromium driven by Selenium), and the corrections file
taken by prepare."""

from __future__ import annotations

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
from hpa_tf.config import InferenceConfig
from hpa_tf.curation.corrections import COLUMNS, parse_labels
from hpa_tf.curation.web import REPORT_PAGE, create_app, open_curation
from hpa_tf.data import prepare
from hpa_tf.data.io import read_rgby
from hpa_tf.errors import DataError
from hpa_tf.labels import LABEL_NAMES, parse_target
from hpa_tf.layout import DataLayout

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def curation(trained_runs, tmp_path_factory):
    """The Curation of the tiny runs, its corrections in a module folder (each test sets its own file)."""
    _, out = trained_runs
    config = InferenceConfig(runs=str(out), figures=str(tmp_path_factory.mktemp("figures")), k=4,
                             curator="tester", output=str(tmp_path_factory.mktemp("sub") / "s.csv"))
    return open_curation(config)


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
    assert f'value="{" ".join(map(str, parse_target(truth)))}"' in page  # the form starts at the truth
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
    assert re.findall(r'src="/explain/([^"]+)"', section) == [f"{copy}/{c}.png" for c in prediction.labels]
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

    saved = client.post(f"/image/{copy}/labels", data={"labels": "27 0", "who": "ann"},
                        follow_redirects=False)
    assert saved.status_code == 303 and saved.headers["location"] == f"/image/{copy}?saved=0+27"
    assert "Saved: 0 27" in client.get(saved.headers["location"]).text
    rows = pd.read_csv(curation.corrections, dtype=str, keep_default_na=False)
    assert rows.columns.tolist() == COLUMNS and len(rows) == 1
    assert rows.iloc[0][["Id", "Target", "previous", "who"]].tolist() == [copy, "0 27", truth, "ann"]
    client.post(f"/image/{original}/labels", data={"labels": "5"})  # appended, the first row kept
    assert pd.read_csv(curation.corrections, dtype=str)["Id"].tolist() == [copy, original]

    before = curation.corrections.read_bytes()
    refusals = [(client.get("/image/unknown-id"), 404, "unknown-id is in none of the embedding files"),
                (client.post(f"/image/{copy}/labels", data={"labels": "3 28"}), 400,
                 "&#39;28&#39; is not a class number 0..27"),
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
    """The app served by uvicorn on 127.0.0.1 in a thread; yields its address."""
    import uvicorn

    curation.corrections = tmp_path / "corrections.csv"
    port = _free_port()
    running = uvicorn.Server(uvicorn.Config(create_app(curation), host="127.0.0.1", port=port,
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
    """Search the planted test copy, see its HPAv18 original first among the neighbours, correct the
    labels, find the decision in the CSV."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    root, _ = trained_runs
    original, copy = _planted_copy(root)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        wait = WebDriverWait(browser, 30)
        browser.get(server + "/")
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
        field = browser.find_element(By.ID, "labels")
        field.clear()
        field.send_keys("25 2")
        browser.find_element(By.ID, "save").click()
        wait.until(expected_conditions.presence_of_element_located((By.ID, "saved")))
        assert browser.find_element(By.ID, "saved").text == "Saved: 2 25"
    finally:
        browser.quit()
    rows = pd.read_csv(Path(curation.corrections), dtype=str, keep_default_na=False)
    assert rows[["Id", "Target", "who"]].values.tolist() == [[copy, "2 25", "tester"]]
