"""End to end, as a researcher uses it: JupyterLab in a real (headless) Chromium, Run All, no errors.

JupyterLab serves a temporary copy of the notebooks (Lab autosaves into what it opens) on 127.0.0.1
with a random token. Each notebook runs with its default parameters, which are the smoke profile
(``profile = "smoke"`` in the parameters cell). After the kernel goes idle the notebook is saved,
and its saved outputs are checked for errors; a screenshot per notebook lands in the git-ignored
``runs/screenshots/``. Needs Debian's ``chromium`` (``.ci/run`` installs it) and the ``e2e`` extra.
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import REPO_ROOT, subprocess_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb")) + [REPO_ROOT / "tests" / "pipeline.ipynb"]
SCREENSHOTS = REPO_ROOT / "runs" / "screenshots"
CURRENT = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook on show
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]

if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does this)", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api", reason="the e2e extra is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    for nb in NOTEBOOKS:
        shutil.copy(nb, root / nb.name)
    shutil.copy(REPO_ROOT / "tests" / "pipeline_spec.py", root / "pipeline_spec.py")
    port, token = _free_port(), secrets.token_hex(16)
    settings = root / ".settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    env = subprocess_env(REPRODUCE_OUTPUT_DIR=str(root / "out"), JUPYTER_CONFIG_DIR=str(root / ".jupyter"),
                         JUPYTERLAB_SETTINGS_DIR=str(root / ".settings"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
         f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.news_url=", "--ServerApp.open_browser=False",
         "--LabServerApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("JupyterLab did not start")
            time.sleep(0.5)
    yield {"base": base, "token": token, "root": root}
    os.killpg(proc.pid, 15)
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_run_all_in_jupyterlab(lab, browser, notebook):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    t0 = time.perf_counter()
    # A workspace of its own, reset: Lab would otherwise reopen the notebooks of earlier tests beside it.
    page.goto(f"{lab['base']}/lab/workspaces/{notebook.stem}/tree/{notebook.name}?reset&token={lab['token']}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    _wait_kernel_idle(page, timeout=60)
    assert "kernel" not in (page.locator(".jp-Dialog").all_inner_texts() or [""])[0].lower(), "a kernel dialog opened"
    page.locator(f"{CURRENT} .jp-Notebook").click()
    page.keyboard.press("Escape")
    page.click("text=Run", timeout=10_000)  # the Run menu
    page.click("text=Run All Cells", timeout=10_000)
    page.wait_for_timeout(1000)
    _wait_kernel_idle(page, timeout=600)
    page.keyboard.press("Control+s")
    page.wait_for_timeout(1500)
    elapsed = time.perf_counter() - t0
    _screenshots(page, notebook.stem)
    page.close()
    _shut_down_kernels(lab)
    saved = json.loads((lab["root"] / notebook.name).read_text())
    code = [c for c in saved["cells"] if c["cell_type"] == "code"]
    errors = [o for c in code for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors, f"{notebook.name}: {errors[0]['ename']}: {errors[0]['evalue']}"
    assert all(c.get("execution_count") for c in code), "every code cell ran"
    print(f"{notebook.name}: {elapsed:.0f} s in the browser")


def _screenshots(page, stem: str, most: int = 8) -> None:
    """Screenshots down the notebook, one viewport apart: runs/screenshots/<stem>-<i>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob(f"{stem}-*.png"):
        old.unlink()
    scroller = f"{CURRENT} .jp-WindowedPanel-outer"
    page.eval_on_selector(scroller, "el => el.scrollTo(0, 0)")
    for i in range(most):
        page.wait_for_timeout(400)
        page.screenshot(path=str(SCREENSHOTS / f"{stem}-{i}.png"))
        moved = page.eval_on_selector(scroller, "el => { const t = el.scrollTop; el.scrollBy(0, el.clientHeight * 0.9); return el.scrollTop > t; }")
        if not moved:
            break


def _shut_down_kernels(lab) -> None:
    """End the notebook's kernel through the server's REST API, so the next test starts alone."""
    auth = {"Authorization": f"token {lab['token']}"}
    with urllib.request.urlopen(urllib.request.Request(f"{lab['base']}/api/sessions", headers=auth), timeout=10) as r:
        sessions = json.load(r)
    for session in sessions:
        req = urllib.request.Request(f"{lab['base']}/api/sessions/{session['id']}", headers=auth, method="DELETE")
        urllib.request.urlopen(req, timeout=30).close()


def _wait_kernel_idle(page, timeout: float) -> None:
    """Wait until no cell shows the busy prompt [*] and the kernel status reads Idle."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        busy = page.locator(f"{CURRENT} .jp-InputPrompt", has_text="[*]").count()
        status = page.locator(".jp-StatusBar-TextItem", has_text="Idle").count()
        if busy == 0 and status > 0:
            return
        page.wait_for_timeout(500)
    raise AssertionError(f"the kernel was still busy after {timeout:.0f} s")


@pytest.mark.parametrize("lang", ["ko", "en"])
def test_post_previews_load_with_every_image_and_link(browser, tmp_path, lang, monkeypatch):
    """`reproduce post --html`: each page loads in Chromium, every figure loads, no link is broken."""
    from reproduce import post, results

    monkeypatch.setattr(results, "stale_paths", lambda record: [])  # the committed records, taken as current
    pages = [p for p in post.write(["transformer", "flava", "retnet", "tova"], lang, tmp_path, as_html=True) if p.suffix == ".html"]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    port = _free_port()  # over http, as a blog's preview is served (file:// pages may not load fonts)
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", "/"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    page = browser.new_page(viewport={"width": 900, "height": 1200})
    try:
        for _ in range(50):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        for html in pages:
            page.goto(f"http://127.0.0.1:{port}{html.resolve()}")
            page.wait_for_load_state("load")
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.getAttribute('src'), e.complete && e.naturalWidth > 0])")
            assert images and all(ok for _, ok in images), (html.name, [src for src, ok in images if not ok])
            links = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
            broken = [h for h in links if not h.startswith(("http://", "https://", "#")) and not (html.parent / h).exists()]
            assert not broken, (html.name, broken)
            assert page.locator("table").count() >= 2  # the parameters and the paper-vs-ours table
            page.evaluate("document.fonts.ready")
            page.screenshot(path=str(SCREENSHOTS / f"post-{lang}-{html.stem}.png"), full_page=False)
    finally:
        page.close()
        server.terminate()
