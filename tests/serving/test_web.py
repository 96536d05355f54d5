"""The web page in a real browser: Debian's chromium, headless, driven by playwright.

Draw a stroke and score it (verdict, percentile, reconstruction, error map), upload a digit,
generate a grid, open a champion's model card, send a denoise strength to a model that declares
denoising; screenshots are saved under tmp_path (printed).
Nothing is downloaded: playwright drives the system browser at /usr/bin/chromium, and the page
itself must not reach past the service's own origin (no CDN).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HOW_TO_INSTALL = (
    "needs Debian's chromium at /usr/bin/chromium and the playwright package: run `make install` "
    "(it runs `apt-get install -y chromium` where apt is usable), or "
    "`apt-get update && apt-get install -y chromium`"
)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        pytest.skip(f"no chromium: {HOW_TO_INSTALL}")
    sync_api = pytest.importorskip("playwright.sync_api", reason=HOW_TO_INSTALL)
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")),
            args=LAUNCH_ARGS,
            headless=True,
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture()
def page(browser, server, tmp_path):
    context = browser.new_context(viewport={"width": 1200, "height": 1400})
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{server.url}/ui/")
    page.wait_for_selector("#models tbody tr")
    yield page
    shots = sorted(str(p) for p in tmp_path.glob("*.png"))
    print(f"\nscreenshots: {shots}")
    foreign = [u for u in requests if not (u.startswith(server.url) or u.startswith("data:"))]
    context.close()
    assert not foreign, f"the page reached outside its origin: {foreign}"
    assert not errors, f"JavaScript errors: {errors}"


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def _draw_seven(page) -> None:
    box = page.locator("#pad").bounding_box()
    x, y = box["x"], box["y"]
    page.mouse.move(x + 70, y + 60)
    page.mouse.down()
    for px, py in ((120, 58), (170, 56), (210, 60), (180, 130), (150, 200), (130, 240)):
        page.mouse.move(x + px, y + py, steps=5)
    page.mouse.up()


def _canvas_ink(page, selector: str) -> float:
    return page.eval_on_selector(
        selector,
        """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i] + d[i+1] + d[i+2];
                  return s; }""",
    )


def test_draw_score_upload_generate_and_open_a_model_card(page, tmp_path, real_digits):
    # the champions and their cards are listed
    rows = page.locator("#models tbody tr")
    assert rows.count() == 3
    assert "genops-anomaly v2" in page.locator("#models").inner_text()

    # draw a stroke, score it: score, verdict, percentile, reconstruction and error map
    _draw_seven(page)
    page.click("#score-btn")
    expect(page.locator("#recon-note")).not_to_be_empty()
    score = float(page.inner_text("#score-value"))
    assert page.inner_text("#verdict") == ("anomalous" if score > 1 else "normal")
    assert page.inner_text("#threshold") == "1.000"
    assert "normal range" in page.inner_text("#raw-score")  # the raw statistic, beside it
    assert "%" in page.inner_text("#percentile")
    assert "genops-anomaly v2" in page.inner_text("#score-by")
    assert _canvas_ink(page, "#recon") > 0 and _canvas_ink(page, "#errmap") > 0
    assert page.inner_text("#score-error") == ""
    assert page.is_disabled("#denoise-strength")  # an autoencoder declares no denoising
    page.screenshot(path=str(tmp_path / "1-score-drawing.png"), full_page=True)

    # upload a real digit (PNG): scored by the server's own decoder
    digit = np.round(real_digits[0][4500, 0].numpy() * 255).astype(np.uint8)
    png = tmp_path / "digit.png"
    buffer = io.BytesIO()
    Image.fromarray(digit).save(buffer, format="PNG")
    png.write_bytes(buffer.getvalue())
    before = page.inner_text("#score-value")
    page.set_input_files("#upload", str(png))
    expect(page.locator("#score-value")).not_to_have_text(before, timeout=20000)
    assert page.inner_text("#score-error") == ""

    # generate a grid with model, label, seed and n
    page.select_option("#gen-label", "7")
    page.fill("#gen-seed", "42")
    page.fill("#gen-n", "9")
    assert page.is_disabled("#gen-steps")  # an autoencoder has no sampling steps
    page.click("#gen-btn")
    page.wait_for_selector("#grid:not([hidden])")
    assert page.eval_on_selector("#grid", "img => img.complete && img.naturalWidth") > 0
    assert page.get_attribute("#grid", "data-model") == "genops-generation:3"
    page.screenshot(path=str(tmp_path / "2-generate.png"), full_page=True)

    # open the anomaly champion's model card
    page.click("button.card-link[data-role='anomaly']")
    card = page.frame_locator("#card-frame")
    heading = card.locator("h1")
    heading.wait_for()
    assert "Model card: genops-anomaly v2" in heading.inner_text()
    assert card.locator("img").count() >= 1  # the inlined sample grid
    page.locator("#card-panel").screenshot(path=str(tmp_path / "3-model-card.png"))


def test_the_denoise_strength_control_sends_the_field_reconstruct_takes(page, tmp_path):
    """The served models are autoencoders (no denoising), so /metadata is shown to the page as
    declaring it and /reconstruct's request is caught: the field the API takes is sent, and
    the server's reconstruction (asked for without it) is drawn."""

    def declare_denoising(route):
        response = route.fetch()
        body = response.json()
        for model in body["models"].values():
            model["capabilities"]["denoising"] = True
        route.fulfill(response=response, json=body)

    sent: list[dict] = []

    def reconstruct(route):
        body = json.loads(route.request.post_data)
        sent.append(dict(body))
        body.pop("denoise_strength", None)
        route.fulfill(response=route.fetch(post_data=json.dumps(body)))

    page.route("**/metadata", declare_denoising)
    page.route("**/reconstruct", reconstruct)
    page.reload()
    page.wait_for_selector("#models tbody tr")
    assert page.is_enabled("#denoise-strength")
    page.fill("#denoise-strength", "0.4")
    _draw_seven(page)
    page.click("#score-btn")
    expect(page.locator("#recon-note")).to_contain_text("denoised at strength 0.4")
    assert sent and sent[-1]["denoise_strength"] == 0.4 and "pixels" in sent[-1]
    assert _canvas_ink(page, "#recon") > 0 and page.inner_text("#score-error") == ""
    page.fill("#denoise-strength", "1.5")
    page.click("#score-btn")
    expect(page.locator("#score-error")).to_contain_text("between 0 and 1")
    page.fill("#denoise-strength", "")
    page.click("#score-btn")
    expect(page.locator("#recon-note")).to_contain_text("reconstruction;")
    assert "denoise_strength" not in sent[-1]
    page.screenshot(path=str(tmp_path / "4-denoise.png"), full_page=True)
