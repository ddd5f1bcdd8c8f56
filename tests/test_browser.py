"""The page at / in a real headless browser (Debian's chromium + chromedriver, driven by Selenium).

Skips with the reason where no browser is installed; .ci/run installs Debian's `chromium` and
`chromium-driver` first."""

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from conftest import SECRET, free_port, wait_ready

pytestmark = pytest.mark.browser

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium") if p and os.path.exists(p)), None)
DRIVER = next((p for p in (shutil.which("chromedriver"), "/usr/bin/chromedriver") if p and os.path.exists(p)), None)
NOTE = f"patient {SECRET} crushing chest pain troponin ecg"


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("no chromium/chromedriver here; install Debian's chromium and chromium-driver packages")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1000,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()


@contextlib.contextmanager
def serving(run) -> Iterator[str]:
    """`medclf serve RUN` on a free port, ready: its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "medclf", "serve", str(run), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(base, proc)
        yield base
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def server(trained_run):
    with serving(trained_run) as base:
        yield base


def test_paste_text_and_see_the_label_and_one_bar_per_class(browser, server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    expected = httpx.post(server + "/v1/predict", json={"text": NOTE}).json()
    browser.get(server + "/")
    WebDriverWait(browser, 20).until(lambda d: "3 classes" in d.find_element(By.ID, "model").text)
    assert browser.find_element(By.ID, "result").is_displayed() is False
    browser.find_element(By.ID, "text").send_keys(NOTE)
    browser.find_element(By.ID, "classify").click()
    WebDriverWait(browser, 20).until(ec.visibility_of_element_located((By.ID, "result")))
    assert browser.find_element(By.ID, "label").text == expected["label"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#bars .row")
    assert sorted(r.get_attribute("data-label") for r in rows) == sorted(expected["probabilities"])
    shown = {r.get_attribute("data-label"): float(r.get_attribute("data-probability")) for r in rows}
    assert all(abs(shown[k] - v) < 1e-6 for k, v in expected["probabilities"].items())
    assert rows[0].get_attribute("data-label") == expected["label"] and "top" in rows[0].get_attribute("class")
    widths = [r.find_element(By.CSS_SELECTOR, ".fill").value_of_css_property("width") for r in rows]
    assert float(widths[0].removesuffix("px")) > 0
    browser.save_screenshot(str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").stat().st_size > 1000


def test_explain_shades_the_words_and_names_the_method(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    expected = httpx.post(server + "/v1/explain", json={"text": NOTE, "method": "occlusion"}).json()
    browser.get(server + "/")
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "card").is_displayed())
    facts = browser.find_element(By.ID, "facts").text
    assert "cardio, derm, neuro" in facts and "macro-F1" in facts and "not a medical device" in facts
    browser.find_element(By.ID, "text").send_keys(NOTE)
    Select(browser.find_element(By.ID, "method")).select_by_value("occlusion")
    browser.find_element(By.ID, "explain").click()
    WebDriverWait(browser, 30).until(ec.visibility_of_element_located((By.ID, "why")))
    spans = browser.find_elements(By.CSS_SELECTOR, "#words span")
    assert [s.text for s in spans] == [w["word"] for w in expected["words"]]
    scored = [(float(s.get_attribute("data-score")), w["score"]) for s, w in zip(spans, expected["words"])
              if w["score"] is not None]
    assert scored and all(abs(a - b) < 1e-6 for a, b in scored)
    top = max(range(len(scored)), key=lambda i: abs(scored[i][1]))
    assert "rgba" in spans[top].value_of_css_property("background-color")
    assert "occlusion" in browser.find_element(By.ID, "legend").text


def test_a_csv_file_is_classified_in_batches_and_downloads_without_text(browser, server, tmp_path):
    import pandas as pd
    from conftest import make_rows
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    rows = make_rows(25, seed=4)  # 75 rows: more than one batch of 64
    rows[3]["text"] = ""  # an empty text is skipped and noted, not sent
    rows[5]["text"] = 'a "quoted", multi-line\nnote ' + SECRET
    source = tmp_path / "notes.csv"
    pd.DataFrame(rows).to_csv(source, index=False)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    browser.get(server + "/")
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "card").is_displayed())
    browser.find_element(By.ID, "file").send_keys(str(source))
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "run").is_displayed())
    assert browser.find_element(By.ID, "column").get_attribute("value") == "text"
    browser.find_element(By.ID, "run").click()
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "download").is_displayed())
    assert "74 of 75 rows" in browser.find_element(By.ID, "progress").text
    browser.find_element(By.ID, "download").click()
    target = downloads / "medclf-predictions.csv"
    WebDriverWait(browser, 20).until(lambda d: target.exists() and target.stat().st_size > 0)
    got = pd.read_csv(target, keep_default_na=False)
    assert len(got) == 75 and "text" not in got.columns and SECRET.encode() not in target.read_bytes()
    assert got["note_id"].tolist() == [r["note_id"] for r in rows] and got["note"][3] == "empty text"
    texts = [r["text"] for i, r in enumerate(rows) if i != 3]
    expected = httpx.post(server + "/v1/predict", json={"texts": texts[:64]}).json()["predictions"]
    expected += httpx.post(server + "/v1/predict", json={"texts": texts[64:]}).json()["predictions"]
    kept = got.drop(index=3).reset_index(drop=True)
    assert kept["predicted"].tolist() == [p["label"] for p in expected]
    assert kept["label"].tolist() == [r["label"] for i, r in enumerate(rows) if i != 3]  # the file's own column, kept
    assert all(abs(float(a) - p["score"]) < 1e-6 for a, p in zip(kept["score"], expected))


def test_an_empty_text_is_refused_on_the_page(browser, server):
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    browser.find_element(By.ID, "classify").click()
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and "Paste a text" in error.text


@pytest.fixture(scope="module")
def deferring_server(tmp_path_factory, tiny_model):
    from conftest import make_rows, write_csv

    folder = tmp_path_factory.mktemp("page-defer")
    data = write_csv(folder / "notes.csv", make_rows(40))
    run = folder / "run"
    # precision 0.99 cannot be shown on 29 calibration rows (it needs 230 right in a row): every text is deferred
    subprocess.run([sys.executable, "-m", "medclf", "train", "--method", "embeddings", "--data", str(data), "--model",
                    tiny_model, "--output", str(run), "--precision", "fp32", "--calibration-size", "0.3",
                    "--target-precision", "0.99"], check=True, capture_output=True, timeout=600)
    with serving(run) as base:
        yield base


def test_the_page_says_when_a_person_decides_and_marks_a_deferred_text(browser, deferring_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    assert httpx.post(deferring_server + "/v1/predict", json={"text": NOTE}).json()["deferred"] is True
    browser.get(deferring_server + "/")
    WebDriverWait(browser, 20).until(lambda d: "When a person decides" in d.find_element(By.ID, "facts").text)
    assert "could not be shown" in browser.find_element(By.ID, "facts").text
    browser.find_element(By.ID, "text").send_keys(NOTE)
    browser.find_element(By.ID, "classify").click()
    WebDriverWait(browser, 20).until(ec.visibility_of_element_located((By.ID, "result")))
    assert "deferred: a person decides" in browser.find_element(By.ID, "label").text
