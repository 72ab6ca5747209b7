"""The edge's web page in a real headless browser (Playwright driving Debian's chromium).

A user opens the page, picks a task the edge does not hold, generates (a toolbox miss, then a
hit from memory), and uploads an image to see its reconstruction; then the failures a user
meets: an empty or out-of-range count, the network gone (the button comes back, the old grid
does not stay under the error). The screenshot lands in ``tests/artifacts/service_page.png``
(git-ignored) for a person to look at.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from baim.cloud.registry import Registry
from baim.service.cloud_app import create_cloud_app
from baim.service.edge_app import create_edge_app
from baim.service.http import BackgroundServer
from baim.service.serve import edge_toolbox

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.integration
def test_page_generates_shows_hit_or_miss_and_reconstructs(run_dir: Path, tmp_path: Path):
    assert CHROMIUM.is_file(), "the browser test needs Debian's chromium: `make test` installs it (scripts/setup.sh)"
    from playwright.sync_api import sync_playwright

    registry = Registry(run_dir / "registry")
    registry.publish_run(run_dir)
    token = registry.issue_token("edge-0")
    upload = tmp_path / "shirt.png"
    Image.fromarray((np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8), "L").save(upload)

    with BackgroundServer(create_cloud_app(registry)) as cloud_url:
        toolbox = asyncio.run(edge_toolbox(run_dir, 0, cloud_url, token))
        with BackgroundServer(create_edge_app(toolbox, "edge-0")) as edge_url, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1000, "height": 1100})
                page.goto(edge_url + "/")
                page.wait_for_function("document.querySelectorAll('#task option').length === 3")
                assert "tops (in toolbox)" in page.inner_text("#task")
                page.select_option("#task", "bags")
                page.fill("#n", "24")
                page.fill("#seed", "7")
                page.click("#generate")
                page.wait_for_selector("#gen-image:not([hidden])")
                status = page.inner_text("#gen-status")
                assert "toolbox miss" in status and "bags@1" in status and "seed 7" in status
                width = page.eval_on_selector("#gen-image", "img => img.naturalWidth")
                assert width > 8 * 32  # a grid of 24 images, 8 per row
                page.wait_for_function("document.querySelector('#task').innerText.includes('bags (in toolbox)')")
                page.wait_for_function("!document.querySelector('#generate').disabled", timeout=10_000)
                disabled = page.evaluate(
                    "() => { const b = document.querySelector('#generate'); b.click(); return b.disabled; }"
                )
                assert disabled  # no second request while one is running
                page.wait_for_function("document.querySelector('#gen-status').innerText.includes('from memory')")
                # the result is shown before the toolbox panel refreshes; the button comes back when
                # the whole request ends (a bounded wait: it fails if the button stays disabled)
                page.wait_for_function("!document.querySelector('#generate').disabled", timeout=10_000)
                page.select_option("#task", "tops")
                page.set_input_files("#file", str(upload))
                page.click("#reconstruct")
                page.wait_for_selector("#rec-image:not([hidden])")
                assert "MSE" in page.inner_text("#rec-status") and "tops@own" in page.inner_text("#rec-status")
                page.wait_for_function("document.querySelector('#toolbox').innerText.includes('bags@1')")
                toolbox_text = page.inner_text("#toolbox")
                assert "misses 1" in toolbox_text and "/ 256.0 MiB" in toolbox_text and "MB" not in toolbox_text
                ARTIFACTS.mkdir(exist_ok=True)
                shot = page.screenshot(path=str(ARTIFACTS / "service_page.png"), full_page=True)
                assert Image.open(io.BytesIO(shot)).size[0] >= 1000
                assert page.get_attribute("link[rel=icon]", "href").startswith("data:image/svg")
                for bad in ("", "999"):
                    page.fill("#n", bad)
                    page.click("#generate")
                    assert "whole number from 1 to 256" in page.inner_text("#gen-status")
                    assert page.is_hidden("#gen-image")  # the previous grid is not left under the error
                page.fill("#n", "4")
                page.route("**/v1/generate", lambda route: route.abort())  # the edge is gone
                page.click("#generate")
                page.wait_for_function("document.querySelector('#gen-status').innerText.includes('network error')")
                assert not page.is_disabled("#generate") and page.is_hidden("#gen-image")
                page.unroute("**/v1/generate")
                page.evaluate("() => document.querySelector('#task').appendChild(new Option('shoes', 'shoes'))")
                page.select_option("#task", "shoes")
                page.click("#generate")
                page.wait_for_function("document.querySelector('#gen-status').innerText.includes('404')")
                assert page.is_hidden("#gen-image")
            finally:
                browser.close()
