"""`mmcross serve` in a real headless Chromium (Debian's chromium, driven by playwright): the
index, an event page, sorting by a header click, every injected counterpart on its page, the
sky-map image drawn, and a new match appearing without a reload.

Set ``MMCROSS_WEB_SCREENSHOT=docs/event-page.png`` to keep the event page's screenshot."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from mmcross.catalogs import Store
from tests.helpers import DEADLINE, REPO, build_web_store, make_match

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
EVENT = "lvk:S230518h"
MS = DEADLINE * 1000  # playwright timeouts, milliseconds (bounds, never asserted on)


def _chromium() -> str:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    message = f"{CHROMIUM} not found (scripts/test.sh installs Debian's chromium package)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def served(tmp_path_factory, shared_file):
    """`mmcross serve` (real uvicorn on a free 127.0.0.1 port) over the web tests' store."""
    tmp = tmp_path_factory.mktemp("web-browser")
    url = f"sqlite:///{tmp / 'store.sqlite'}"
    injected = build_web_store(url, shared_file)
    config = tmp / "web.toml"
    config.write_text('[web]\nrefresh_seconds = 0.5\n'
                      'object_url = "https://example.org/rubin/{object_id}"\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmcross", "-q", "serve", "--db", url, "--port", "0",
         "--config", str(config)], cwd=REPO, stdout=subprocess.PIPE,
        stderr=open(tmp / "serve.log", "wb"), text=True)  # noqa: SIM115 (the child keeps it)
    first: list[str] = []
    reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(DEADLINE)
    try:
        assert first and first[0].startswith("mmcross serve: http://127.0.0.1:"), \
            (first, (tmp / "serve.log").read_text()[-2000:])
        yield first[0].split()[2], url, injected
    finally:
        proc.terminate()
        proc.wait(DEADLINE)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = _chromium()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _rows(page, attr: str) -> list[str]:
    return page.eval_on_selector_all(
        "#counterparts tbody tr[data-alert-id]", f"rows => rows.map(r => r.getAttribute('{attr}'))")


def test_index_then_event_page_sort_counterparts_and_sky_map(served, browser, tmp_path):
    from PIL import Image

    base, _url, injected = served
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(base, timeout=MS)
    listed = page.eval_on_selector_all("#events tbody tr",
                                       "rows => rows.map(r => r.dataset.eventId)")
    assert sorted(listed) == sorted(injected)
    page.click(f"a[href='/events/{EVENT}']", timeout=MS)
    page.wait_for_url(f"**/events/{EVENT}", timeout=MS)
    assert page.inner_text("h1").startswith(EVENT)

    # every injected counterpart of the event is in its table
    shown = {int(a) for a in _rows(page, "data-alert-id")}
    assert set(injected[EVENT]) <= shown

    # a click on a header sorts by it; a second click reverses
    page.click("a.sort[data-sort='p_chance']", timeout=MS)
    page.wait_for_url("**sort=p_chance&order=asc", timeout=MS)
    values = [float(v) for v in _rows(page, "data-p-chance")]
    assert len(values) >= 4 and values == sorted(values)
    page.click("a.sort[data-sort='p_chance']", timeout=MS)
    page.wait_for_url("**sort=p_chance&order=desc", timeout=MS)
    values = [float(v) for v in _rows(page, "data-p-chance")]
    assert values == sorted(values, reverse=True)
    page.click("a.sort[data-sort='distance']", timeout=MS)
    page.wait_for_url("**sort=distance&order=asc", timeout=MS)
    distances = [float(v) for v in _rows(page, "data-distance")]
    assert distances == sorted(distances) and len(distances) == len(values)
    links = page.eval_on_selector_all("#counterparts tbody tr a", "a => a.map(x => x.href)")
    assert all(link.startswith("https://example.org/rubin/") for link in links)

    # the sky map is drawn: loaded, with a size, and not blank on screen
    page.wait_for_function(
        "() => { const i = document.getElementById('skymap');"
        " return i && i.complete && i.naturalWidth > 0; }", timeout=MS)
    assert page.eval_on_selector("#skymap", "i => [i.naturalWidth, i.naturalHeight]") == \
        [1600, 720]
    shot = np.asarray(Image.open(io.BytesIO(page.locator("#skymap").screenshot(timeout=MS)))
                      .convert("L"), float)
    assert shot.shape[0] > 100 and shot.shape[1] > 300
    assert (shot < 200).mean() > 0.02 and shot.std() > 10  # drawn, not a blank box

    keep = os.environ.get("MMCROSS_WEB_SCREENSHOT")
    target = Path(keep) if keep else tmp_path / "event-page.png"
    page.set_viewport_size({"width": 1280, "height": 1350})
    page.evaluate("window.scrollTo(0, 0)")
    image = Image.open(io.BytesIO(page.screenshot(timeout=MS)))
    image.convert("RGB").quantize(colors=128).save(target, optimize=True)
    page.close()


def test_a_new_match_appears_without_a_reload(served, browser):
    base, url, _ = served
    page = browser.new_page()
    page.goto(f"{base}events/{EVENT}", timeout=MS)
    assert page.locator("tr[data-object-id='rubin-new-1']").count() == 0
    before = page.eval_on_selector("#counterparts-box > div", "d => d.dataset.fingerprint")
    with Store(url) as store:
        store.save_matches([make_match(5, event_id=EVENT, event_revision=1, alert_id=99_000_001,
                                       object_id="rubin-new-1", credible_level=0.2)])
    page.wait_for_selector("tr[data-object-id='rubin-new-1']", timeout=MS)
    after = page.eval_on_selector("#counterparts-box > div", "d => d.dataset.fingerprint")
    assert after != before
    page.wait_for_function(
        f"() => document.getElementById('skymap').src.endsWith('?v={after}')", timeout=MS)
    page.close()

