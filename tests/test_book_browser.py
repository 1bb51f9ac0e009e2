"""Real-browser test of the built book's static widget explorers.

Serves ``_build/html`` on 127.0.0.1 (a free port, ``http.server`` in a thread),
opens a chapter page holding explorers made with :mod:`cl_peft_lib.widgets` in
headless Debian Chromium (driven by Selenium through ``/usr/bin/chromedriver``)
and checks, without any Python kernel:

* no request to our server fails and the page logs no SEVERE console message
  (uncaught errors, failed loads);
* no request leaves 127.0.0.1 (the widget assets are served locally);
* every explorer rendered its images;
* moving each control of each explorer changes the visible image (compared by
  the image bytes, read back in the browser).

Run after building the book::

    make book          # or: .venv/bin/jupyter-book build . -W
    .venv/bin/python -m pytest tests/test_book_browser.py -v

Needs the Debian packages ``chromium`` and ``chromium-driver`` and the PyPI
package ``selenium``; fails with the command to run when one of them, or the built
book, is missing. ``CL_PEFT_BROWSER_PAGE`` (a path under ``_build/html``)
overrides the page; by default the first page (in table-of-contents file
order) whose notebook stored widget state is used. ``CL_PEFT_BROWSER_SCREENSHOT``
(a file path) saves a screenshot of the page after the checks.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HTML = REPO / "_build" / "html"
#: Page to test, relative to _build/html; None = first page with widget state.
PAGE: str | None = os.environ.get("CL_PEFT_BROWSER_PAGE") or None
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMEDRIVER = "/usr/bin/chromedriver"
EXPLORER_CSS = ".cl-peft-explorer"
RENDER_TIMEOUT_S = 60

WIDGET_STATE_MARK = "application/vnd.jupyter.widget-state+json"


def _chromium() -> str | None:
    for c in CHROMIUM_CANDIDATES:
        if os.access(c, os.X_OK):
            return c
    return shutil.which("chromium")


def _find_page() -> Path | None:
    """The page to test: PAGE, else the first notebook page with widget state."""
    if PAGE:
        p = HTML / PAGE
        return p if p.is_file() else None
    for p in sorted(HTML.glob("notebooks/*.html")) + sorted(HTML.rglob("*.html")):
        try:
            if WIDGET_STATE_MARK in p.read_text(encoding="utf-8", errors="ignore"):
                return p
        except OSError:
            continue
    return None


def _missing_reason() -> str | None:
    if not (HTML / "index.html").is_file():
        return f"book not built ({HTML} missing): run `make book` first"
    if _chromium() is None or not os.access(CHROMEDRIVER, os.X_OK):
        return "chromium / chromedriver missing: make test-deps (or apt-get install -y chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed: make venv (or pip install selenium)"
    if _find_page() is None:
        return "no page of the built book holds widget state (no explorer to test)"
    return None


@pytest.fixture(autouse=True)
def _book_and_browser_present() -> None:
    """Fail (not skip) when the built book or the browser is missing: `make test` installs and builds
    both, so a skip would only hide a broken set-up (as it once hid a failing chromium install)."""
    reason = _missing_reason()
    if reason is not None:
        pytest.fail(reason)


class _Handler(http.server.SimpleHTTPRequestHandler):
    errors: list[str]  # set on the subclass made per server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        pass

    def send_response(self, code: int, message: str | None = None) -> None:
        # the browser asks for /favicon.ico by itself; the book has none
        if code >= 400 and not self.path.startswith("/favicon.ico"):
            self.errors.append(f"{code} {self.path}")
        super().send_response(code, message)


@pytest.fixture(scope="module")
def server():
    """Serve _build/html on 127.0.0.1:<free port>; yield (base_url, error list)."""
    errors: list[str] = []
    handler = type("Handler", (_Handler,), {"errors": errors})
    handler = functools.partial(handler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", errors
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def driver():
    """Headless Chromium with a fresh profile, console and network logging on."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="cl-peft-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = _chromium()
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,2000",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    drv = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    drv.set_page_load_timeout(RENDER_TIMEOUT_S)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


# Reads the bytes behind an <img> (blob:/data:/http URL) and returns a hash.
_IMG_HASH_JS = """
const [img, done] = arguments;
fetch(img.src).then(r => r.arrayBuffer()).then(buf => {
  const b = new Uint8Array(buf); let h = 2166136261 >>> 0;
  for (let i = 0; i < b.length; i++) { h ^= b[i]; h = Math.imul(h, 16777619) >>> 0; }
  done(b.length + ':' + h.toString(16));
}).catch(e => done('error:' + e));
"""


def _visible_images(explorer):
    return [
        img
        for img in explorer.find_elements("css selector", "img")
        if img.is_displayed() and img.size["width"] > 0 and img.size["height"] > 0
    ]


def _visible_hash(drv, explorer) -> str:
    imgs = _visible_images(explorer)
    assert len(imgs) == 1, f"expected exactly one visible image in the explorer, got {len(imgs)}"
    h = drv.execute_async_script(_IMG_HASH_JS, imgs[0])
    assert not h.startswith("error:"), h
    return h


def _controls(explorer):
    """Every control of an explorer as (kind, element), in display order."""
    found = []
    for el in explorer.find_elements(
        "css selector", ".widget-dropdown, .widget-toggle-buttons, .widget-slider"
    ):
        classes = el.get_attribute("class") or ""
        kind = (
            "dropdown"
            if "widget-dropdown" in classes
            else "toggle"
            if "widget-toggle-buttons" in classes
            else "slider"
        )
        found.append((kind, el))
    return found


def _step_control(drv, kind: str, el) -> None:
    """Move a control one position forward, as a reader would."""
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    if kind == "dropdown":
        sel = Select(el.find_element("css selector", "select"))
        current = int(sel.first_selected_option.get_attribute("index") or 0)
        n = len(sel.options)
        assert n >= 2, "dropdown with a single option"
        sel.select_by_index((current + 1) % n)
    elif kind == "toggle":
        buttons = el.find_elements("css selector", "button")
        assert len(buttons) >= 2, "toggle buttons with a single option"
        active = [i for i, b in enumerate(buttons) if "mod-active" in (b.get_attribute("class") or "")]
        nxt = ((active[0] if active else 0) + 1) % len(buttons)
        buttons[nxt].click()
    else:
        handle = el.find_element("css selector", ".noUi-handle, input[type=range]")
        handle.click()
        handle.send_keys(Keys.ARROW_RIGHT)


def _network_events(drv) -> list[dict]:
    events = []
    for entry in drv.get_log("performance"):
        try:
            events.append(json.loads(entry["message"])["message"])
        except (KeyError, ValueError):
            continue
    return events


def test_explorers_work_without_kernel(server, driver):
    base, server_errors = server
    page = _find_page()
    assert page is not None
    url = f"{base}/{page.relative_to(HTML).as_posix()}"

    from selenium.webdriver.support.ui import WebDriverWait

    # drop what the browser logged before our page (its own start-up)
    driver.get_log("performance")
    driver.get_log("browser")
    t0 = time.perf_counter()
    driver.get(url)
    # the widget manager renders the explorers asynchronously after load
    WebDriverWait(driver, RENDER_TIMEOUT_S).until(
        lambda d: any(
            _visible_images(e) for e in d.find_elements("css selector", EXPLORER_CSS)
        )
    )
    explorers = driver.find_elements("css selector", EXPLORER_CSS)
    assert explorers, f"no {EXPLORER_CSS} on {url}"
    # wait until every explorer shows an image (some render later than others)
    WebDriverWait(driver, RENDER_TIMEOUT_S).until(
        lambda d: all(_visible_images(e) for e in d.find_elements("css selector", EXPLORER_CSS))
    )
    render_s = time.perf_counter() - t0

    checked = 0
    for i, explorer in enumerate(explorers):
        controls = _controls(explorer)
        assert controls, f"explorer {i} has no control"
        for kind, el in controls:
            before = _visible_hash(driver, explorer)
            _step_control(driver, kind, el)
            WebDriverWait(driver, 10).until(
                lambda d, ex=explorer, b=before: _visible_hash(d, ex) != b,
                message=f"explorer {i}: moving its {kind} did not change the visible image",
            )
            checked += 1

    # no duplicated rendering (the bundle loaded twice draws every widget twice)
    n_views = len(driver.find_elements("css selector", "script[type='application/vnd.jupyter.widget-view+json']"))
    assert len(explorers) <= n_views, f"{len(explorers)} explorers rendered for {n_views} widget views"

    # failed or external requests
    failed, external, urls = [], [], {}
    for ev in _network_events(driver):
        method, params = ev.get("method"), ev.get("params", {})
        if method == "Network.requestWillBeSent":
            req_url = params.get("request", {}).get("url", "")
            urls[params.get("requestId")] = req_url
            if req_url.startswith(("http://", "https://")) and not req_url.startswith(base):
                external.append(req_url)
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            # only requests our page sent count: Chromium's own start-up navigation (a failed name
            # lookup, sent before the log was cleared) has no requestWillBeSent in this log
            if params.get("requestId") in urls:
                failed.append(f"{params.get('errorText')} {urls[params.get('requestId')]}")
        elif method == "Network.responseReceived":
            resp = params.get("response", {})
            if (
                resp.get("url", "").startswith(base)
                and resp.get("status", 200) >= 400
                and not resp.get("url", "").startswith(f"{base}/favicon.ico")
            ):
                failed.append(f"{resp.get('status')} {resp.get('url')}")
    severe = [
        f"{e.get('source')}: {e.get('message')}"
        for e in driver.get_log("browser")
        if e.get("level") == "SEVERE" and "favicon.ico" not in (e.get("message") or "")
    ]

    shot = os.environ.get("CL_PEFT_BROWSER_SCREENSHOT")
    if shot:
        driver.save_screenshot(shot)

    assert not server_errors, f"requests to 127.0.0.1 failed: {server_errors}"
    assert not failed, f"failed requests: {failed}"
    assert not external, f"requests left 127.0.0.1: {sorted(set(external))}"
    assert not severe, f"SEVERE console messages: {severe}"
    assert checked >= 1
    print(f"{page.relative_to(HTML)}: {len(explorers)} explorer(s), {checked} control(s) checked, "
          f"rendered in {render_s:.1f} s")
