"""The screenshots in docs/images/, taken in headless Chromium (Selenium), from real runs on the demo data.

1. mlflow-runs.png: the MLflow UI listing two medclf runs (`medclf train --track mlflow`, fine-tuning and
   --method embeddings, into a fresh local store served by `mlflow server` on loopback).
2. page-explanation.png: the page of `medclf serve` after "Classify and explain" on a demo-like note.

    python benchmarks/serving/screenshots.py [--out docs/images] [--work /tmp/medclf-shots]

Needs mlflow (`pip install "medclf[track]"`), selenium, and Debian's chromium + chromium-driver.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

NOTE = ("67-year-old man with crushing substernal chest pain radiating to the left arm for two hours, diaphoresis, "
        "troponin rising; ECG shows ST elevation in the inferior leads.")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not answer")


def browser(width: int, height: int):  # noqa: ANN201
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                            options=options)


def medclf(*args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run([sys.executable, "-m", "medclf", "--quiet", *args], check=True, env={**os.environ, **(env or {})})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/images")
    parser.add_argument("--work", default="/tmp/medclf-shots")
    args = parser.parse_args()
    out, work = Path(args.out).resolve(), Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    store = work.resolve() / "mlflow.db"
    os.chdir(work)  # MLflow's sqlite store keeps its artifacts in ./mlruns
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{store}", "MLFLOW_EXPERIMENT_NAME": "demo-notes"}
    medclf("train", "--output", str(work / "notes-finetune"), "--track", "mlflow", env=env)
    medclf("train", "--output", str(work / "notes-embeddings"), "--method", "embeddings", "--track", "mlflow", env=env)

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1", "--backend-store-uri", f"sqlite:///{store}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    driver = browser(1800, 700)
    try:
        base = f"http://127.0.0.1:{port}"
        wait(base + "/health", server)
        import mlflow

        experiment = mlflow.MlflowClient(f"sqlite:///{store}").get_experiment_by_name("demo-notes")
        driver.get(f"{base}/#/experiments/{experiment.experiment_id}/runs")
        WebDriverWait(driver, 90).until(lambda d: "notes-embeddings" in d.page_source and "notes-finetune" in d.page_source)
        time.sleep(3)
        driver.save_screenshot(str(out / "mlflow-runs.png"))
    finally:
        driver.quit()
        server.terminate()
        server.wait(30)

    port = free_port()
    serve = subprocess.Popen([sys.executable, "-m", "medclf", "serve", str(work / "notes-finetune"), "--port", str(port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    driver = browser(1000, 1400)
    try:
        base = f"http://127.0.0.1:{port}"
        wait(base + "/readyz", serve)
        driver.get(base + "/")
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "card").is_displayed())
        driver.find_element(By.ID, "text").send_keys(NOTE)
        Select(driver.find_element(By.ID, "method")).select_by_value("integrated-gradients")
        driver.find_element(By.ID, "explain").click()
        WebDriverWait(driver, 120).until(ec.visibility_of_element_located((By.ID, "why")))
        time.sleep(1)
        driver.save_screenshot(str(out / "page-explanation.png"))
    finally:
        driver.quit()
        serve.terminate()
        serve.wait(30)
    print(f"wrote {out / 'mlflow-runs.png'} and {out / 'page-explanation.png'}")


if __name__ == "__main__":
    main()
