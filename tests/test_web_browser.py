"""The web page in a real browser: Debian's Chromium, headless, driven by Playwright. It types a prompt, runs the
tiny preset, waits for the 3D viewer and the turntable, checks the viewer's canvas shows a mesh, and saves a
screenshot (SJC_WEB_SCREENSHOT=path keeps a copy, e.g. for the README).

The browser comes from the system (`apt-get install chromium`; .ci/run installs it): Playwright's own browser
downloads need the internet. Without Chromium the test is skipped, except in CI, where it fails."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")
from webserver import running_server  # noqa: E402

pytestmark = pytest.mark.slow
CHROMIUM = os.environ.get("SJC_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# Headless and offline: no GPU (WebGL through SwiftShader), no background calls home, a fresh profile.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
]


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("no Chromium: .ci/run installs Debian's chromium package")
        pytest.skip("no Chromium (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield chromium
        chromium.close()


def image_stats(png: bytes) -> tuple[float, int]:
    import imageio.v3 as iio

    pixels = iio.imread(io.BytesIO(png))[..., :3].reshape(-1, 3)
    return float(pixels.std(axis=0).max()), len(np.unique(pixels // 8, axis=0))


def test_the_page_runs_a_prompt_and_shows_the_mesh_and_the_video(browser, tmp_path):
    runs = tmp_path / "runs"
    with running_server(runs) as (url, _):
        page = browser.new_page(viewport={"width": 1400, "height": 2200})
        page.goto(url, wait_until="networkidle")
        page.locator("#prompt textarea").fill("a red and blue cube")
        page.locator("#preset").get_by_text("tiny", exact=True).click()
        page.locator("#generate").click()

        # While it runs: the progress bar moves and the training render appears.
        page.wait_for_function(
            "() => Number(document.querySelector('#progress .sjc-bar')?.dataset.step) > 0", timeout=60_000
        )
        # When it ends: the mesh viewer's canvas and the turntable video.
        page.locator("#viewer canvas").wait_for(state="visible", timeout=120_000)
        page.wait_for_function(
            "() => { const v = document.querySelector('#video video');"
            " return v && v.readyState >= 2 && v.videoWidth > 0 }",
            timeout=60_000,
        )
        assert "finished 300 steps" in page.locator("#status").inner_text()
        assert "3D IoU" in page.locator("#metrics").inner_text()
        downloads = page.locator("#downloads").inner_text()
        for name in ("mesh.glb", "mesh.obj", "turntable.mp4", "a-red-and-blue-cube-seed0.zip"):
            assert name in downloads.replace("\n", ""), downloads

        # The viewer draws the mesh: its canvas is not one flat colour. Give WebGL a moment to draw.
        canvas = page.locator("#viewer canvas").first
        spread, colours = 0.0, 0
        for _ in range(20):
            page.wait_for_timeout(500)
            spread, colours = image_stats(canvas.screenshot())
            if spread > 10 and colours > 20:
                break
        assert spread > 10 and colours > 20, f"the viewer's canvas looks blank (spread {spread:.1f}, {colours} colours)"

        # The gallery lists the run, and opening it from there shows the same result.
        assert "a-red-and-blue-cube-seed0" in page.locator("#gallery").inner_html()
        page.locator("#gallery").scroll_into_view_if_needed()
        page.wait_for_function(
            "() => [...document.querySelectorAll('#gallery img')].some(i => i.complete && i.naturalWidth > 0)",
            timeout=30_000,
        )

        page.locator("#gallery img").first.click()  # opening a run from the gallery shows the same result view
        page.wait_for_function(
            "() => document.querySelector('#metrics').innerText.includes('a-red-and-blue-cube-seed0')"
        )
        assert "3D IoU" in page.locator("#metrics").inner_text()

        shot = tmp_path / "page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert image_stats(shot.read_bytes())[1] > 50
        if target := os.environ.get("SJC_WEB_SCREENSHOT"):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, target)
        page.close()


def test_the_page_lifts_an_uploaded_picture(browser, tmp_path):
    from test_image3d import write_picture

    runs = tmp_path / "runs"
    picture = write_picture(tmp_path / "cube.png", "a red and blue cube", size=128)
    with running_server(runs) as (url, _):
        page = browser.new_page(viewport={"width": 1400, "height": 2200})
        page.goto(url, wait_until="networkidle")
        page.get_by_text("Image to 3D: a picture of the object").click()  # opens the accordion
        page.locator("#picture input[type=file]").set_input_files(str(picture))
        page.locator("#picture img").wait_for(state="visible", timeout=30_000)  # the upload shows the picture
        page.locator("#prompt textarea").fill("a red and blue cube")
        page.locator("#preset").get_by_text("tiny", exact=True).click()
        page.locator("#generate").click()
        page.wait_for_function(
            "() => document.querySelector('#status')?.innerText.includes('finished 300 steps')", timeout=120_000
        )
        folders = [d for d in runs.iterdir() if (d / "config.json").is_file()]
        assert len(folders) == 1 and (folders[0] / "reference-picture.png").is_file()
        view = json.loads((folders[0] / "reference.json").read_text())["view"]
        assert (view["azimuth"], view["elevation"]) == (0.0, 0.0)
        shot = tmp_path / "image-page.png"
        page.screenshot(path=str(shot), full_page=True)
        if target := os.environ.get("SJC_WEB_IMAGE_SCREENSHOT"):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, target)
        page.close()


def test_the_page_asks_for_a_login_and_opens_after_it(browser, tmp_path):
    runs = tmp_path / "runs"
    with running_server(runs, "--auth", "alice:s3cret") as (url, _):
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(url, wait_until="networkidle")
        assert page.locator("#prompt textarea").count() == 0  # nothing of the page before the login
        page.get_by_label("username").fill("alice")
        page.get_by_label("password").fill("wrong")
        page.get_by_role("button", name="Login").click()
        page.get_by_text("Incorrect Credentials").wait_for(timeout=20_000)
        page.get_by_label("username").fill("alice")
        page.get_by_label("password").fill("s3cret")
        page.get_by_role("button", name="Login").click()
        page.locator("#prompt textarea").wait_for(state="visible", timeout=30_000)
        shot = tmp_path / "after-login.png"
        page.screenshot(path=str(shot))
        assert page.locator("#generate").is_visible()
