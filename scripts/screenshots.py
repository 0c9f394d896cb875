"""The docs' screens of a demo run (docs/img/): MLflow's runs table and the pipeline's parent run,
and optuna-dashboard on the search's study, taken in headless Chromium through the real servers.

Needs Debian's `chromium` and `chromium-driver`, and selenium in the Python that runs this script
(any venv: `python3 -m venv /tmp/s && /tmp/s/bin/pip install selenium`); mlflow and optuna-dashboard
come from the project's environment. After `KEEP_CLONE=1 scripts/refresh-baseline.sh` (which prints
the folder it kept; for the Compare screen, a second pipeline run in it:
`cd FOLDER/clone && PATH=$PWD/.venv/bin:$PATH MLFLOW_TRACKING_URI=sqlite:///FOLDER/mlflow.db
.venv/bin/dvc exp run -S retrain.epochs=30`):

    /tmp/s/bin/python scripts/screenshots.py --run /tmp/tmp.XXXX
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(args: list[str], url: str) -> subprocess.Popen:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(240):
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"error: {args[0]} exited with {proc.returncode}") from None
            time.sleep(0.5)
    raise SystemExit(f"error: {url} did not answer")


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


# the parent's headline results, shown as columns of the runs table
COLUMNS = ("supernet/val_acc_largest", "search/best_fitness", "search/best_params", "slim/params_ratio",
           "retrain/test_acc", "transfer/digits-cifar.top1", "transfer/digits-coco.AP")


def _click(driver, css: str, wait: float = 1.0) -> None:
    from selenium.webdriver.common.by import By

    for el in driver.find_elements(By.CSS_SELECTOR, css):
        el.click()
        time.sleep(wait)


def _runs_table(driver, url: str, out: Path) -> None:
    """The runs table, the assistant panel closed, the parent expanded, the headline columns on."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(url)
    time.sleep(8)
    _click(driver, "button[aria-label='Close']")
    # MLflow's GenAI / Model training switch is a preference of each browser (GenAI until changed)
    driver.find_element(By.XPATH, "//*[@role='button'][normalize-space(.)='Model training']").click()
    time.sleep(6)
    _click(driver, "button[data-component-id*='runnamecellrenderer']", 2.0)
    for name in COLUMNS:
        found = driver.find_elements(By.CSS_SELECTOR, "input[placeholder='Search columns']")
        if not found:  # the chooser closed: open it again
            driver.find_element(By.XPATH, "//button[normalize-space(.)='Columns']").click()
            time.sleep(2.0)
            found = driver.find_elements(By.CSS_SELECTOR, "input[placeholder='Search columns']")
        found[0].send_keys(Keys.CONTROL, "a")
        found[0].send_keys(name)
        time.sleep(1.0)
        for el in driver.find_elements(By.XPATH, f"//*[normalize-space(text())='{name}']"):
            el.click()
            time.sleep(1.0)
            break
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    time.sleep(2.0)
    driver.save_screenshot(str(out))
    print(f"wrote {out}")


def _shoot(driver, url: str, out: Path, wait: float = 8.0) -> None:
    driver.get(url)
    time.sleep(wait)
    _click(driver, "button[aria-label='Close']")
    driver.save_screenshot(str(out))
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="folder kept by KEEP_CLONE=1 scripts/refresh-baseline.sh")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    ap.add_argument("--experiment", default="vitnas")
    args = ap.parse_args()
    from selenium import webdriver

    args.out.mkdir(parents=True, exist_ok=True)
    pm, po = _free_port(), _free_port()
    mlflow_url, optuna_url = f"http://127.0.0.1:{pm}", f"http://127.0.0.1:{po}"
    servers = [
        _serve([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(pm), "--workers", "1",
                "--backend-store-uri", f"sqlite:///{args.run / 'mlflow.db'}"], f"{mlflow_url}/health"),
        _serve([str(BIN / "optuna-dashboard"), "--host", "127.0.0.1", "--port", str(po),
                f"sqlite:///{args.run / 'clone/artifacts/search/optuna.db'}"], optuna_url),
    ]
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=2200,900"):
        opts.add_argument(a)
    driver = webdriver.Chrome(options=opts)
    try:
        with urllib.request.urlopen(f"{mlflow_url}/api/2.0/mlflow/experiments/get-by-name?experiment_name="
                                    f"{args.experiment}") as r:
            exp = json.loads(r.read())["experiment"]["experiment_id"]
        parents = _post(f"{mlflow_url}/api/2.0/mlflow/runs/search",
                        {"experiment_ids": [exp], "filter": "tags.`vitnas.role` = 'pipeline'",
                         "order_by": ["attributes.start_time ASC"]})["runs"]
        _runs_table(driver, f"{mlflow_url}/#/experiments/{exp}/runs", args.out / "mlflow-runs.png")
        _shoot(driver, f"{mlflow_url}/#/experiments/{exp}/runs/{parents[0]['info']['run_id']}",
               args.out / "mlflow-parent.png")
        if len(parents) > 1:  # e.g. after `dvc exp run -S retrain.epochs=30` in the kept clone
            ids = urllib.parse.quote(json.dumps([p["info"]["run_id"] for p in parents]))
            driver.get(f"{mlflow_url}/#/compare-runs?runs={ids}&experiments={urllib.parse.quote(json.dumps([exp]))}")
            time.sleep(3)
            driver.refresh()  # the compare page reads its runs on load
            _shoot(driver, driver.current_url, args.out / "mlflow-compare.png", wait=10)
        driver.set_window_size(1800, 1500)  # the Pareto front and the history, one above the other
        _shoot(driver, f"{optuna_url}/dashboard/studies/1", args.out / "optuna-dashboard.png", wait=10)
    finally:
        driver.quit()
        for s in servers:
            s.terminate()


if __name__ == "__main__":
    main()
