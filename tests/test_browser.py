"""Neo4j Browser 5.24 in a real headless Chromium (Debian's chromium and
chromium-driver, driven by selenium): MemBrane's style and the saved question
"everything about an entity" on a graph ingested from examples/.

Nothing downloads a browser: the binaries are /usr/bin/chromium and
/usr/bin/chromedriver (`apt-get install chromium chromium-driver`; .ci/run
installs them). MEMBRANE_UPDATE_SCREENSHOT=1 also writes the README picture,
docs/browser-graph.png, stamped with the sha256 of browser/membrane.grass.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from membrane.graph.questions import saved_questions
from tests.conftest import IN_CI
from tests.support.explore import ingest_both
from tests.support.pipeline import ROOT

GRASS = ROOT / "browser" / "membrane.grass"
PICTURE = ROOT / "docs" / "browser-graph.png"
PICTURE_MAX_BYTES = 300_000
STYLE_KEY = "membrane-style-sha256"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# This network is closed: no sync, no updates, no QUIC, no first-run fetches.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)
ENTITY_KEY = "raspberry pi"
EXPECTED_CAPTIONS = {"Raspberry Pi", "Nextcloud", "Debian 12", "homelab.txt"}

# Monaco (the Browser's editor) closes brackets and quotes as they are typed;
# a paste event puts text in as it is.
_PASTE = """
const [text] = arguments;
const area = document.querySelector('#monaco-main-editor textarea');
area.focus();
const data = new DataTransfer();
data.setData('text/plain', text);
area.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true}));
"""
# Every drawn node with its caption lines joined (the Browser wraps long captions).
_CAPTIONS = """
return Array.from(document.querySelectorAll('svg g.node')).map(
  node => Array.from(node.querySelectorAll('text.caption')).map(t => t.textContent.trim()).join(' '));
"""


def style_digest() -> str:
    return hashlib.sha256(GRASS.read_bytes()).hexdigest()


def test_the_readme_picture_was_taken_with_the_current_style() -> None:
    """docs/browser-graph.png is under 300 KB and was taken with browser/membrane.grass as it is now
    (regenerate it: MEMBRANE_UPDATE_SCREENSHOT=1 pytest tests/test_browser.py)."""
    from PIL import Image

    assert PICTURE.stat().st_size < PICTURE_MAX_BYTES
    with Image.open(PICTURE) as image:
        assert image.format == "PNG"
        assert image.text.get(STYLE_KEY) == style_digest(), "the style changed: regenerate the picture"


def test_the_style_file_is_json_grass_for_every_label_membrane_writes() -> None:
    """The shipped style captions entities by name, captures (small, grey) by file name, relationships by type,
    and is JSON, which Browser's post_connect_cmd and `:style` both take on one line."""
    style = json.loads(GRASS.read_text(encoding="utf-8"))
    assert style["node.Entity"]["caption"] == "{name}"
    assert style["node.Capture"]["caption"] == "{path}"
    assert int(style["node.Capture"]["diameter"].removesuffix("px")) < int(style["node.Entity"]["diameter"][:-2])
    assert style["relationship"]["caption"] == "<type>"
    assert ";" not in GRASS.read_text(encoding="utf-8")


# ---------------------------------------------------------------- the browser


def _browser_url() -> str:
    url = os.environ.get("MEMBRANE_TEST_NEO4J_BROWSER_URL")
    if not url:
        message = 'MEMBRANE_TEST_NEO4J_BROWSER_URL is not set: eval "$(scripts/neo4j-local env)"'
        pytest.fail(message, pytrace=False) if IN_CI else pytest.skip(message)
    return url


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium from Debian with a fresh profile, through chromedriver."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        message = f"{', '.join(missing)} missing: apt-get install chromium chromium-driver"
        pytest.fail(message, pytrace=False) if IN_CI else pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        service=Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")), options=options
    )
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, what: str, condition: Callable[[Any], Any], timeout: float = 60) -> Any:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, ignored_exceptions=(WebDriverException,)).until(condition)
    except Exception as exc:
        driver.save_screenshot("/tmp/membrane-browser-failure.png")
        raise AssertionError(
            f"Neo4j Browser: timed out waiting for {what} (screenshot /tmp/membrane-browser-failure.png)"
        ) from exc


def _connect(driver: Any, url: str, bolt: str, user: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    def fill(d: Any) -> bool:
        # The form is in the DOM before Browser lets it be typed into ("element not interactable" in CI);
        # the whole fill is retried until it goes through.
        for testid, value in (("boltaddress", bolt), ("username", user), ("password", password)):
            field = d.find_element(By.CSS_SELECTOR, f'input[data-testid="{testid}"]')
            field.clear()
            field.send_keys(value)
        return True

    driver.get(url)
    _wait(driver, "the connect form to take input", fill)
    driver.find_element(By.CSS_SELECTOR, 'button[data-testid="connect"]').click()
    _wait(
        driver,
        "the connection",
        lambda d: "Connected to Neo4j" in d.page_source or "You are connected" in d.page_source,
    )


def _frame_commands(driver: Any) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, '[data-testid="frameCommand"]')]


def _run(driver: Any, text: str) -> None:
    from selenium.webdriver.common.by import By

    driver.execute_script(_PASTE, text)
    driver.find_element(By.CSS_SELECTOR, '[data-testid="editor-Run"]').click()


def _post_connect_style(neo4j: Any) -> bool:
    """Whether the server tells Browser to apply MemBrane's style on connect (scripts/neo4j-local does);
    fails when it applies another version of the style."""
    rows = neo4j.execute_query(
        "CALL dbms.clientConfig() YIELD name, value WHERE name = 'browser.post_connect_cmd' RETURN value"
    ).records
    command = rows[0]["value"] if rows else ""
    if not command.startswith("style {"):
        return False
    preloaded = json.loads(command.removeprefix("style "))
    assert preloaded == json.loads(GRASS.read_text(encoding="utf-8")), "restart scripts/neo4j-local: its style is stale"
    return True


@pytest.mark.neo4j
@pytest.mark.slow
def test_browser_draws_an_entity_with_its_sources_in_membrane_style(
    tmp_path: Path, chromium: Any, neo4j: Any, neo4j_settings: dict[str, Any], neo4j_server: Any
) -> None:
    """Connected with the rig's password and the style applied, "everything about an entity" on the examples'
    graph draws the entity, its neighbours and its capture with MemBrane's captions."""
    url = _browser_url()
    ingest_both(tmp_path, neo4j_settings, extra=False)
    _connect(chromium, url, neo4j_server.uri, neo4j_server.user, neo4j_server.password)
    if _post_connect_style(neo4j):
        _wait(
            chromium,
            "the style Browser applies on connect",
            lambda d: any(c.startswith(":style") for c in _frame_commands(d)),
            timeout=20,
        )
    _run(chromium, ":clear")
    _run(chromium, ":style " + GRASS.read_text(encoding="utf-8"))
    _wait(chromium, "the :style frame", lambda d: any(c.startswith(":style") for c in _frame_commands(d)))
    question = saved_questions()["entity"]
    # As a person uses the favourite: its :param line with their value, then the favourite itself.
    assert question.param_commands == (":param key => 'nextcloud'",)
    _run(chromium, question.param_commands[0].replace("'nextcloud'", json.dumps(ENTITY_KEY)))
    _wait(chromium, "the :param frame", lambda d: any(c.startswith(":param key") for c in _frame_commands(d)))
    _run(chromium, question.text)
    captions = _wait(
        chromium,
        "the graph with its captions",
        lambda d: (found := set(d.execute_script(_CAPTIONS))) >= EXPECTED_CAPTIONS and found,
    )
    assert captions <= EXPECTED_CAPTIONS | {"Alice"}, captions
    time.sleep(2)  # the force layout settles before the picture
    _save_picture(chromium, tmp_path / "browser-graph.png")


def _save_picture(driver: Any, out: Path) -> None:
    """The visualisation's frame as a palette PNG stamped with the style's digest; also the README picture
    when MEMBRANE_UPDATE_SCREENSHOT=1."""
    from PIL import Image, PngImagePlugin
    from selenium.webdriver.common.by import By

    frame = driver.find_elements(By.CSS_SELECTOR, '[data-testid="frame"]')[0]
    with Image.open(io.BytesIO(frame.screenshot_as_png)) as shot:
        image = shot.convert("RGB").quantize(colors=128)
    info = PngImagePlugin.PngInfo()
    info.add_text(STYLE_KEY, style_digest())
    image.save(out, format="PNG", pnginfo=info, optimize=True)
    assert out.stat().st_size < PICTURE_MAX_BYTES
    if os.environ.get("MEMBRANE_UPDATE_SCREENSHOT") == "1":
        shutil.copy(out, PICTURE)
