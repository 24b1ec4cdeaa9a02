"""The web demo in a real headless Chromium (Debian's `chromium`, driven by Playwright; `.ci/run` installs it):
a prompt gives a drawn, rotatable skeleton (canvas pixels and a screenshot), an uploaded image is estimated, a pose
is edited and described, a blank prompt shows the service's own error, and nothing is loaded from another host.

The screenshots are written to $UNIPOSE_SCREENSHOT_DIR when it is set (to look at them), else to pytest's tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("ray.serve", reason="the serving stack is the `serve` extra (part of `dev`)")
playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is part of the `dev` extra")

from test_serve import IMAGE, Service  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium (`apt-get install chromium`; .ci/run "
                                                         "installs it)")

# Pixels that belong to the skeleton: the bones' blue (left), red (right) and dark grey (centre) strokes.
COUNT_SKELETON_PIXELS = """() => {
  const c = document.getElementById('skeleton');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let left = 0, right = 0, centre = 0;
  for (let i = 0; i < d.length; i += 4) {
    const [r, g, b] = [d[i], d[i + 1], d[i + 2]];
    if (b > 150 && r < 90) left++;
    else if (r > 150 && b < 90 && g < 120) right++;
    else if (r < 90 && g < 90 && b < 110) centre++;
  }
  return {left, right, centre};
}"""


@pytest.fixture(scope="module")
def service():
    started = Service("--max-batch", "4", "--max-new-tokens", "16")
    yield started
    started.stop()
    started.kill_leftovers()


@pytest.fixture(scope="module")
def page(service):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1100, "height": 720})
        page.requests_seen = []  # type: ignore[attr-defined]
        page.on("request", lambda r: page.requests_seen.append(r.url))
        page.goto(service.url + "/")
        page.wait_for_function("document.getElementById('service').textContent.includes('unipose-tiny')")
        yield page
        browser.close()


def screenshot_dir(tmp_path: Path) -> Path:
    directory = Path(os.environ.get("UNIPOSE_SCREENSHOT_DIR") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def skeleton_pixels(page) -> dict[str, int]:
    return page.evaluate(COUNT_SKELETON_PIXELS)


def submit(page, button: str, drawn: str | None = None) -> None:
    page.click(button)
    page.wait_for_function("!document.querySelector('#generate').disabled")
    if drawn:
        page.wait_for_function(f"document.getElementById('skeleton').dataset.drawn === '{drawn}'")


def test_prompt_draws_a_rotatable_skeleton(page, service, tmp_path) -> None:
    before = skeleton_pixels(page)
    assert before == {"left": 0, "right": 0, "centre": 0}  # nothing drawn before the first pose
    page.fill("#prompt", "a person squatting with both arms raised")
    submit(page, "#generate", "pose")
    assert page.is_hidden("#error")
    drawn = skeleton_pixels(page)
    assert drawn["left"] > 300 and drawn["right"] > 300 and drawn["centre"] > 200, drawn
    timings = page.inner_text("#timings")
    assert "round trip" in timings and "model (batch of 1)" in timings and "prefill_pose" in timings
    page.locator("#skeleton").screenshot(path=str(screenshot_dir(tmp_path) / "web_demo_generate.png"))
    page.screenshot(path=str(screenshot_dir(tmp_path) / "web_demo_page.png"))
    front = page.evaluate("document.getElementById('skeleton').toDataURL()")
    box = page.locator("#skeleton").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 150, y + 40, steps=5)
    page.mouse.up()
    assert page.evaluate("document.getElementById('skeleton').toDataURL()") != front  # the view turned
    assert skeleton_pixels(page)["left"] > 300
    page.locator("#skeleton").screenshot(path=str(screenshot_dir(tmp_path) / "web_demo_rotated.png"))


def test_image_upload_edit_and_describe(page, tmp_path) -> None:
    page.set_input_files("#image", str(IMAGE))
    page.evaluate("document.getElementById('skeleton').dataset.drawn = 'stale'")
    submit(page, "#estimate", "pose")
    assert page.is_hidden("#error") and skeleton_pixels(page)["left"] > 300
    page.fill("#instruction", "raise your left arm above your head")
    submit(page, "#edit", "edit")  # the source pose faded behind the edited one
    assert page.is_hidden("#error")
    page.locator("#skeleton").screenshot(path=str(screenshot_dir(tmp_path) / "web_demo_edit.png"))
    submit(page, "#describe")
    assert page.is_hidden("#error") and len(page.inner_text("#text").strip()) > 3


def test_blank_prompt_shows_the_service_error(page, tmp_path) -> None:
    page.fill("#prompt", "   ")
    submit(page, "#generate")
    page.wait_for_selector("#error", state="visible")
    error = page.inner_text("#error")
    assert "422 InvalidTextError" in error and "expected non-empty text" in error
    page.screenshot(path=str(screenshot_dir(tmp_path) / "web_demo_error.png"))


def test_everything_loads_from_the_service_only(page, service) -> None:
    assert page.requests_seen and all(url.startswith(service.url) for url in page.requests_seen), page.requests_seen


def test_a_conversation_in_the_chat_panel(page, tmp_path) -> None:
    """Two turns over /v1/chat (the page holds the history): a generated pose is drawn and then described through
    <pose> (sent by its codes); a bad turn shows the service's typed error and leaves the conversation as it was."""
    page.evaluate("document.getElementById('skeleton').dataset.drawn = 'stale'")
    page.fill("#chat-text", "Generate pose of the description: a person squatting with both arms raised.")
    submit(page, "#send", "pose")
    assert page.is_hidden("#error") and skeleton_pixels(page)["left"] > 300
    assert page.locator("#chat-log li").count() == 2 and "<pose>" in page.inner_text("#chat-log li.assistant")
    assert "model (one turn)" in page.inner_text("#timings")
    page.fill("#chat-text", "Generate description of the pose <pose>.")
    with page.expect_request(lambda r: r.url.endswith("/v1/chat")) as caught:
        submit(page, "#send")
    sent = json.loads(caught.value.post_data)
    assert [turn["text"] for turn in sent["history"]] == [
        "Generate pose of the description: a person squatting with both arms raised."]
    codes = sent["history"][0]["reply"]["pose_codes"]
    assert len(codes) == 1 and len(codes[0]) == 80 and sent["poses"] == [{"codes": codes[0]}]
    assert page.is_hidden("#error") and page.locator("#chat-log li").count() == 4
    assert len(page.locator("#chat-log li.assistant").nth(1).inner_text().strip()) > 3
    page.locator(".controls").screenshot(path=str(screenshot_dir(tmp_path) / "web_demo_chat.png"))
    page.fill("#chat-text", "Describe <poseC> please.")
    submit(page, "#send")
    page.wait_for_selector("#error", state="visible")
    assert "422 InvalidTextError" in page.inner_text("#error") and "<poseC>" in page.inner_text("#error")
    assert page.locator("#chat-log li").count() == 4
    page.click("#new-chat")
    assert page.locator("#chat-log li").count() == 0 and page.is_hidden("#error")
