"""Refresh the screenshots of README's "Watching a sweep": the Ray dashboard while a sweep runs, then
TensorBoard's HParams view and the report of the finished sweep (PNGs in docs/figures/); or the figures
of docs/comparison.md from a finished ``xai-lab compare`` folder.

    python docs/screenshots.py                       # runs configs/sweeps/quickstart.yaml (about 5 min on 2 CPUs)
    python docs/screenshots.py --sweep ray_results/X  # TensorBoard and the report of a finished sweep only
    python docs/screenshots.py --comparison artifacts/comparisons/X   # docs/figures/comparison_*.png
    python docs/screenshots.py --store ray_results/X  # mlflow ui on the sweep's records (docs/store.md)

Needs headless Chromium (``chromium`` or ``chromium-browser``; ``make chromium`` installs it). The Ray
dashboard asks for a sign-in token; the screenshot goes through a small local proxy that adds the token
of this machine's local cluster (``~/.ray/auth_token``) to each request, as a signed-in browser would.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "figures"


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        sys.exit("headless Chromium is needed: make chromium (or apt-get install chromium)")
    return exe


def screenshot(url: str, out: Path, size: str = "1500,950", wait_ms: int = 12000) -> None:
    """A headless-Chromium PNG of ``url`` after ``wait_ms`` of page time (single-page apps render late)."""
    profile = out.parent / f".chromium-{out.stem}"
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--user-data-dir={profile}", f"--window-size={size}", f"--virtual-time-budget={wait_ms}",
           f"--screenshot={out}", url]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    shutil.rmtree(profile, ignore_errors=True)
    print(f"wrote {out.relative_to(ROOT)}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=3):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


def signed_in_proxy(target: str) -> str:
    """A local HTTP proxy to the Ray dashboard that adds this machine's Ray token; returns its URL."""
    import asyncio

    import aiohttp
    from aiohttp import web

    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    port = free_port()

    async def forward(request: web.Request) -> web.Response:
        async with aiohttp.ClientSession() as session, session.request(
            request.method, f"{target}{request.rel_url}", data=await request.read(),
            headers={"Authorization": f"Bearer {token}"},
        ) as r:
            body = await r.read()
            headers = {k: v for k, v in r.headers.items() if k.lower() in ("content-type", "cache-control")}
            return web.Response(body=body, status=r.status, headers=headers)

    def serve() -> None:
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{port}"


def run_sweep_with_dashboard(config: str, name: str) -> Path:
    """Run the sweep with ``--dashboard``; screenshot the dashboard's jobs and actors while trials run."""
    cmd = [sys.executable, "-m", "xai_lab", "sweep", "--config", config, "--dashboard", f"name={name}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, results, shot_taken = None, None, False
    for line in proc.stdout:
        sys.stdout.write(line)
        if line.startswith("Ray dashboard: "):
            url = line.split(": ", 1)[1].strip()
        if line.startswith(f"sweep {name}: results in "):
            results = Path(line.rsplit(" ", 1)[1].strip())
        if url and not shot_taken and re.search(r"Trial status: \d+ RUNNING", line):
            proxy = signed_in_proxy(url)
            wait_http(f"{proxy}/api/gcs_healthz")
            screenshot(f"{proxy}/#/actors", FIGURES / "watch_ray_dashboard.png", wait_ms=15000)
            shot_taken = True
    if proc.wait() != 0 or results is None:
        sys.exit(f"the sweep failed (exit {proc.returncode})")
    return results


def tensorboard_hparams(sweep: Path) -> None:
    port = free_port()
    tb = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(sweep), "--host", "127.0.0.1",
                           "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/data/runs")
        time.sleep(5)  # the first pass over the event files
        screenshot(f"http://127.0.0.1:{port}/#hparams", FIGURES / "watch_tensorboard_hparams.png",
                   size="1500,800", wait_ms=20000)
    finally:
        tb.terminate()


# Keeps, of the report's <main>, the section that starts at one <h2 id> (up to the next <h2>): a screenshot
# of "index.html#id" in headless Chromium is taken before the scroll to the fragment settles.
ONE_SECTION = """<script>addEventListener("DOMContentLoaded", () => {
  const start = document.getElementById("%s");
  let keep = false;
  for (const el of [...start.parentElement.children]) {
    if (el.tagName === "H2") keep = el === start;
    if (!keep) el.remove();
  }
});</script>
"""


def section_screenshot(index: Path, section: str, out: Path, size: str) -> None:
    """A screenshot of one section of a report (``index.html``), the page's header above it."""
    page = index.with_name(f".screenshot-{section}.html")  # beside index.html: its figures resolve
    page.write_text(index.read_text().replace("</body>", ONE_SECTION % section + "</body>"))
    try:
        screenshot(page.as_uri(), out, size=size, wait_ms=3000)
    finally:
        page.unlink()


def comparison_figures(folder: Path) -> None:
    """docs/comparison.md's figures: the report's comparison and transfer sections (screenshots), and the
    comparison's own PNGs (transfer matrix, per-class F1, class means per method) copied beside them."""
    index = (folder / "index.html").resolve()
    if not index.is_file():
        sys.exit(f"{folder} holds no index.html: pass the folder xai-lab compare wrote")
    section_screenshot(index, "comparison", FIGURES / "comparison_report.png", size="1500,1500")
    section_screenshot(index, "transfer", FIGURES / "comparison_report_transfer.png", size="1500,1100")
    names = {"transfer.png": "comparison_transfer.png", "comparison.png": "comparison_f1.png"}
    pngs = [folder / "transfer.png", *sorted(folder.glob("comparison*.png")), *sorted(folder.glob("regions_*.png"))]
    for png in pngs:
        # comparison_<method>.png keep their names; regions_<method>.png become comparison_regions_<method>.png
        out = FIGURES / names.get(png.name, png.name if png.name.startswith("comparison") else f"comparison_{png.name}")
        shutil.copyfile(png, out)
        print(f"wrote {out.relative_to(ROOT)}")


def store_figures(sweep: Path) -> None:
    """docs/store.md's figures: ``mlflow ui`` on a store holding the sweep (recorded afresh into a throwaway
    SQLite store, as ``xai-lab runs --sync`` records it): the sweep's runs table, and one reported trial's
    explanation gallery among its artifacts."""
    import tempfile

    sys.path.insert(0, str(ROOT))
    from xai_lab.store import Store, search, sync

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        store = Store(uri)
        sync(store, [sweep])
        runs = search(store)
        exp_id = store.client.get_experiment_by_name(runs["experiment"].iloc[0]).experiment_id
        reported = runs[runs.get("tags.xai_lab.rank", "") == "1"].iloc[0]
        gallery = next(a.path for a in store.client.list_artifacts(reported["run_id"], "report/xai")
                       if a.path.endswith("comparison_high_conf.png"))
        port = free_port()
        ui = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", uri,
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_http(f"http://127.0.0.1:{port}/health")
            base = f"http://127.0.0.1:{port}/#/experiments/{exp_id}"
            screenshot(f"{base}/runs?compareRunsMode=CHART", FIGURES / "store_mlflow_sweep.png", size="2000,1100",
                       wait_ms=20000)
            screenshot(f"{base}/runs/{reported['run_id']}/artifacts/{gallery}", FIGURES / "store_mlflow_artifacts.png",
                       size="1600,1000", wait_ms=15000)
        finally:
            ui.terminate()
            ui.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/sweeps/quickstart.yaml")
    parser.add_argument("--sweep", type=Path, help="a finished sweep folder: skip the run and the dashboard")
    parser.add_argument("--comparison", type=Path, help="a finished xai-lab compare folder: its figures only")
    parser.add_argument("--store", type=Path, metavar="SWEEP", help="a finished sweep folder: mlflow ui on it only")
    args = parser.parse_args()
    FIGURES.mkdir(parents=True, exist_ok=True)
    if args.comparison:
        comparison_figures(args.comparison)
        return
    if args.store:
        store_figures(args.store.resolve())
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sweep = args.sweep or run_sweep_with_dashboard(args.config, f"screenshots-{time.strftime('%Y%m%d-%H%M%S')}")
    tensorboard_hparams(sweep.resolve())
    screenshot((sweep / "index.html").resolve().as_uri(), FIGURES / "watch_report.png", size="1500,1400",
               wait_ms=3000)


if __name__ == "__main__":
    main()
