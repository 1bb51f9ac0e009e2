"""Real-browser test of the built book: every chapter page, on a desktop and on a phone.

Serves ``_build/html`` on 127.0.0.1 (a free port, ``http.server`` in a thread) and opens it in
headless Debian Chromium (driven by Selenium through ``/usr/bin/chromedriver``), without any
Python kernel. For EVERY chapter page of ``_toc.yml``:

* no request to our server fails and the page logs no SEVERE console message (uncaught errors
  such as the MathJax-2 ``'Queue'`` TypeError, failed loads); no request leaves 127.0.0.1;
* the page shows as many figure images (``<img>`` in cell outputs, widgets aside) as its notebook
  has ``image/png`` outputs;
* phone view (390x844, mobile emulation): the page is no wider than the screen, and the
  navigation button opens the navigation drawer (its chapter links become visible on screen),
  the contents button the page's table of contents;

and for every chapter page whose notebook stored widget state:

* every explorer rendered its images, with no duplicated rendering;
* moving each control of each explorer changes the visible image (compared by the image bytes,
  read back in the browser).

Run after building the book::

    make book          # or: .venv/bin/jupyter-book build . -W
    .venv/bin/python -m pytest tests/test_book_browser.py -v

Needs the Debian packages ``chromium`` and ``chromium-driver`` and the PyPI
package ``selenium``; fails with the command to run when one of them, or the built
book, is missing. ``CL_PEFT_BROWSER_PAGE`` (a path under ``_build/html``, e.g.
``notebooks/04_lora.html``) restricts the tests to that page. ``CL_PEFT_BROWSER_SCREENSHOT``
(a folder) saves a desktop and a phone screenshot of each page after the checks.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HTML = REPO / "_build" / "html"
#: Page to test, relative to _build/html; None = every chapter page.
PAGE: str | None = os.environ.get("CL_PEFT_BROWSER_PAGE") or None
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMEDRIVER = "/usr/bin/chromedriver"
EXPLORER_CSS = ".cl-peft-explorer"
RENDER_TIMEOUT_S = 60
PHONE = (390, 844)

WIDGET_STATE_MARK = "application/vnd.jupyter.widget-state+json"


def _chromium() -> str | None:
    for c in CHROMIUM_CANDIDATES:
        if os.access(c, os.X_OK):
            return c
    return shutil.which("chromium")


def _chapters() -> list[str]:
    """The chapter docnames of _toc.yml, in its order (``notebooks/01_...``)."""
    toc = (REPO / "_toc.yml").read_text(encoding="utf-8")
    return re.findall(r"^\s*-\s*file:\s*(notebooks/\S+?)(?:\.ipynb)?\s*$", toc, re.M)


def _pages() -> list[str]:
    """Pages to test, relative to _build/html: PAGE, else every chapter page."""
    if PAGE:
        return [PAGE]
    return [f"{doc}.html" for doc in _chapters()]


def _notebook(page: str) -> dict | None:
    nb = REPO / Path(page).with_suffix(".ipynb")
    return json.loads(nb.read_text(encoding="utf-8")) if nb.is_file() else None


def _has_widget_state(page: str) -> bool:
    p = HTML / page
    return p.is_file() and WIDGET_STATE_MARK in p.read_text(encoding="utf-8", errors="ignore")


def _expected_figures(nb: dict) -> int:
    """image/png outputs the book shows: those of cells not tagged remove-output/remove-cell."""
    n = 0
    for c in nb.get("cells", []):
        if c.get("cell_type") != "code":
            continue
        tags = set(c.get("metadata", {}).get("tags", []))
        if tags & {"remove-output", "remove-cell"}:
            continue
        n += sum(1 for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    return n


def _missing_reason() -> str | None:
    if not (HTML / "index.html").is_file():
        return f"book not built ({HTML} missing): run `make book` first"
    if _chromium() is None or not os.access(CHROMEDRIVER, os.X_OK):
        return "chromium / chromedriver missing: make test-deps (or apt-get install -y chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed: make venv (or pip install selenium)"
    missing = [p for p in _pages() if not (HTML / p).is_file()]
    if missing:
        return f"pages missing from the built book: {missing} (rebuild: make book)"
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


def _make_driver(window: tuple[int, int], mobile: bool = False):
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
        f"--window-size={window[0]},{window[1]}",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    drv = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    drv.set_page_load_timeout(RENDER_TIMEOUT_S)
    if mobile:
        # the layout viewport of a phone (no desktop scrollbar taking 15 px of the width)
        drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": window[0], "height": window[1], "deviceScaleFactor": 1, "mobile": True})
    return drv, profile


@pytest.fixture(scope="module")
def driver():
    """Headless desktop Chromium with a fresh profile, console and network logging on."""
    drv, profile = _make_driver((1280, 2000))
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def phone():
    """Headless Chromium emulating a 390x844 phone."""
    drv, profile = _make_driver(PHONE, mobile=True)
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

    # bring the control on screen at once: the theme scrolls smoothly (scroll-behavior: smooth), so
    # Selenium's own scroll-then-click would click where the control is not yet
    drv.execute_script("arguments[0].scrollIntoView({block: 'center', behavior: 'instant'})", el)
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


def _load(drv, url: str) -> float:
    """Open url with fresh logs; wait for the page and, when it has explorers, for all of their
    images (the widget manager renders them asynchronously after load). Returns the seconds taken."""
    from selenium.webdriver.support.ui import WebDriverWait

    # drop what the browser logged before this page (its own start-up, the previous page)
    drv.get_log("performance")
    drv.get_log("browser")
    t0 = time.perf_counter()
    drv.get(url)
    WebDriverWait(drv, RENDER_TIMEOUT_S).until(
        lambda d: d.execute_script("return document.readyState") == "complete")
    if drv.find_elements("css selector", "script[type='application/vnd.jupyter.widget-view+json']"):
        WebDriverWait(drv, RENDER_TIMEOUT_S).until(
            lambda d: d.find_elements("css selector", EXPLORER_CSS) and all(
                _visible_images(e) for e in d.find_elements("css selector", EXPLORER_CSS)),
            message=f"explorers did not render on {url}",
        )
    return time.perf_counter() - t0


def _page_problems(drv, base: str) -> tuple[list[str], list[str], list[str]]:
    """(failed requests, requests leaving 127.0.0.1, SEVERE console messages) since _load."""
    failed, external, urls = [], [], {}
    for ev in _network_events(drv):
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
        for e in drv.get_log("browser")
        if e.get("level") == "SEVERE" and "favicon.ico" not in (e.get("message") or "")
    ]
    return failed, external, severe


def _screenshot(drv, page: str, kind: str) -> None:
    folder = os.environ.get("CL_PEFT_BROWSER_SCREENSHOT")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        drv.save_screenshot(str(Path(folder) / f"{Path(page).stem}-{kind}.png"))


# figure images of cell outputs (myst-nb writes each image/png output as an <img> into
# .cell_output), leaving out the widgets' images (blob: URLs inside the rendered explorers)
_FIGURES_JS = """
return Array.from(document.querySelectorAll('.cell_output img'))
  .filter(img => !img.closest('.jupyter-widgets, .widget-subarea, .cl-peft-explorer')
                 && !(img.getAttribute('src') || '').startsWith('blob:'))
  .map(img => [img.getAttribute('src'), img.complete && img.naturalWidth > 0]);
"""


@pytest.mark.parametrize("page", _pages())
def test_chapter_page(server, driver, page):
    """Every chapter page: no failed or external request, no SEVERE console message, and as many
    figure images as its notebook has image/png outputs."""
    base, server_errors = server
    n_before = len(server_errors)
    _load(driver, f"{base}/{page}")
    # late console errors (e.g. a widget typesetting its label) come within a moment of rendering
    time.sleep(1.0)
    failed, external, severe = _page_problems(driver, base)
    figures = driver.execute_script(_FIGURES_JS)
    _screenshot(driver, page, "desktop")

    assert not server_errors[n_before:], f"{page}: requests to 127.0.0.1 failed: {server_errors[n_before:]}"
    assert not failed, f"{page}: failed requests: {failed}"
    assert not external, f"{page}: requests left 127.0.0.1: {sorted(set(external))}"
    assert not severe, f"{page}: SEVERE console messages: {severe}"
    nb = _notebook(page)
    if nb is not None:
        expected = _expected_figures(nb)
        assert len(figures) == expected, (
            f"{page}: {len(figures)} figure image(s) on the page, {expected} image/png output(s) in its notebook")
    broken = [src for src, ok in figures if not ok]
    assert not broken, f"{page}: figure images that did not load: {broken}"


def _drawer_links_on_screen(drv, css: str) -> int:
    """Links matching css that are displayed and lie (horizontally) on the screen."""
    return drv.execute_script("""
const W = document.documentElement.clientWidth;
return Array.from(document.querySelectorAll(arguments[0])).filter(a => {
  const r = a.getBoundingClientRect(), st = getComputedStyle(a);
  return r.width > 0 && r.height > 0 && r.left >= 0 && r.right <= W + 1
         && st.visibility !== 'hidden' && a.offsetParent !== null;
}).length;""", css)


def _open_drawer(drv, toggle_css: str, links_css: str, what: str, page: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    toggles = [b for b in drv.find_elements("css selector", toggle_css) if b.is_displayed()]
    assert toggles, f"{page} (phone): no visible {what} button ({toggle_css})"
    assert _drawer_links_on_screen(drv, links_css) == 0, f"{page} (phone): the {what} is open before any click"
    toggles[0].click()
    WebDriverWait(drv, 10).until(
        lambda d: _drawer_links_on_screen(d, links_css) > 0,
        message=f"{page} (phone): the {what} button did not open the {what} ({links_css} stays hidden)",
    )


@pytest.mark.parametrize("page", _pages())
def test_phone_navigation(server, phone, page):
    """Phone view (390x844): no page wider than the screen; the navigation button opens the
    navigation drawer, the contents button the page's table of contents; no SEVERE message."""
    base, _ = server
    url = f"{base}/{page}"
    _load(phone, url)
    width, scroll_width = phone.execute_script(
        "return [document.documentElement.clientWidth, document.documentElement.scrollWidth]")
    assert scroll_width <= width + 1, f"{page} (phone): the page is {scroll_width} px wide on a {width} px screen"
    _open_drawer(phone, ".primary-toggle", ".bd-sidebar-primary nav a.reference", "navigation", page)
    _screenshot(phone, page, "phone-nav")
    _, _, severe = _page_problems(phone, base)
    assert not severe, f"{page} (phone): SEVERE console messages: {severe}"
    if phone.find_elements("css selector", ".bd-sidebar-secondary .toc-entry a"):
        _load(phone, url)
        _open_drawer(phone, ".secondary-toggle", ".bd-sidebar-secondary .toc-entry a", "contents", page)


def _explorer_pages() -> list[str]:
    """Pages whose notebook stored widget state (known from the notebook, before any build)."""
    return [p for p in _pages()
            if WIDGET_STATE_MARK in ((_notebook(p) or {}).get("metadata", {}).get("widgets", {}))]


@pytest.mark.parametrize("page", _explorer_pages())
def test_explorers_work_without_kernel(server, driver, page):
    """Every explorer of the page renders once and each of its controls changes the visible image."""
    from selenium.webdriver.support.ui import WebDriverWait

    base, _ = server
    url = f"{base}/{page}"
    render_s = _load(driver, url)
    explorers = driver.find_elements("css selector", EXPLORER_CSS)
    assert explorers, f"no {EXPLORER_CSS} on {url}"

    checked = 0
    for i, explorer in enumerate(explorers):
        controls = _controls(explorer)
        assert controls, f"{page}: explorer {i} has no control"
        for kind, el in controls:
            before = _visible_hash(driver, explorer)
            _step_control(driver, kind, el)
            WebDriverWait(driver, 10).until(
                lambda d, ex=explorer, b=before: _visible_hash(d, ex) != b,
                message=f"{page}: explorer {i}: moving its {kind} did not change the visible image",
            )
            checked += 1

    # no duplicated rendering (the bundle loaded twice draws every widget twice)
    n_views = len(driver.find_elements("css selector", "script[type='application/vnd.jupyter.widget-view+json']"))
    assert len(explorers) <= n_views, f"{page}: {len(explorers)} explorers rendered for {n_views} widget views"
    # a control's label is shown in full (ipywidgets' fixed label width cut "Trained up to:")
    cut = driver.execute_script("""
return Array.from(document.querySelectorAll(arguments[0] + ' .widget-label'))
  .filter(l => l.offsetParent !== null && l.textContent.trim() && l.scrollWidth > l.clientWidth + 1)
  .map(l => l.textContent.trim());""", EXPLORER_CSS)
    assert not cut, f"{page}: explorer labels cut off: {cut}"
    _, _, severe = _page_problems(driver, base)
    assert not severe, f"{page}: SEVERE console messages while using the explorers: {severe}"
    assert checked >= 1
    print(f"{page}: {len(explorers)} explorer(s), {checked} control(s) checked, rendered in {render_s:.1f} s")
