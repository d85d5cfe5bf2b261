"""The review page in a real browser: headless Chromium (Debian package) driven by Playwright.

The server is the real CLI (`python -m jobs.label review --no-ray`, uvicorn) on 127.0.0.1; the
test clicks and types like a reviewer and checks what reached the SQLite label store.
Needs `apt-get install -y chromium` and `pip install playwright` (never `playwright install`:
the Debian browser is used through executable_path).
"""

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app.labeling.store import LabelStore
from tests.ports import free_port

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "browser-test-token-42"
REPO = Path(__file__).resolve().parents[2]

if not (os.path.exists(CHROMIUM) and shutil.which(CHROMIUM)):
    pytest.skip(f"{CHROMIUM} missing: apt-get install -y chromium", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright missing: pip install playwright")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    db = str(tmp_path_factory.mktemp("review") / "labels.db")
    with LabelStore(db, ["neg", "pos"]) as s:
        s.set_guideline("Label the sentiment of the sentence.")
        s.enqueue([{"item_id": "i0", "payload": {"text": "a fine film"}, "suggestion": "pos", "confidence": 0.62,
                    "route_reason": "low_confidence"},
                   {"item_id": "i1", "payload": {"text": "so-so"}, "suggestion": "neg", "confidence": 0.51,
                    "route_reason": "low_confidence"},
                   {"item_id": "i2", "payload": {"text": "loved it"}, "suggestion": "neg", "confidence": 0.93,
                    "route_reason": "qc"}])
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "FLYWHEEL_REVIEW_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "jobs.label", "review", "--db", db, "--labels", "neg,pos",
                             "--host", "127.0.0.1", "--port", str(port), "--no-ray"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"review server did not start: {proc.communicate()[1][-2000:]}")
            time.sleep(0.2)
    yield base, db
    proc.terminate()
    proc.wait(timeout=15)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def snapshot(db):
    with LabelStore(db) as s:
        return s.items(("pending", "in_review", "labelled")), s.labels()


def login(browser, base, who):
    ctx = browser.new_context()
    page = ctx.new_page()
    page.set_default_timeout(10_000)
    page.goto(base + "/")
    assert page.url == base + "/login"  # no session: redirected to the login form
    page.fill("#reviewer", who)
    page.fill("#token", TOKEN)
    with page.expect_navigation():
        page.click("#login")
    assert page.url == base + "/" and page.text_content("#reviewer") == who
    return ctx, page


def test_review_in_a_real_browser(server, browser):
    base, db = server
    anon = browser.new_context()
    assert anon.request.get(base + "/", max_redirects=0).status == 303
    assert anon.request.post(base + "/next", form={"csrf": "x"}).status == 401
    assert anon.request.get(base + "/api/progress").status == 401
    assert anon.request.get(base + "/api/progress", headers={"Authorization": f"Bearer {TOKEN}"}).json()["status"] == {
        "pending": 3, "in_review": 0, "labelled": 0}
    anon.close()

    alice_ctx, alice = login(browser, base, "alice")
    before = snapshot(db)
    for path, status in (("/next", 405), ("/submit", 405), ("/item?lease=nope", 410), ("/", 200)):
        assert alice.goto(base + path).status == status  # GET never leases, labels or skips
    assert alice_ctx.request.post(base + "/next", form={}).status == 403  # no CSRF token
    assert alice_ctx.request.post(base + "/next", form={"csrf": "0" * 64}).status == 403  # wrong token
    assert snapshot(db) == before and before[1] == []

    with alice.expect_navigation():
        alice.click("#next")
    assert alice.text_content("#item-id") == "i0"
    assert alice.text_content("#suggestion") == "pos" and alice.text_content("#confidence") == "62.0%"
    assert alice.text_content("[data-field=text]") == "a fine film"
    held = snapshot(db)
    alice.reload()  # re-reading the item page changes nothing, not even the lease
    assert snapshot(db) == held and alice.text_content("#n-in_review") == "1"

    bob_ctx, bob = login(browser, base, "bob")
    with bob.expect_navigation():
        bob.keyboard.press("n")
    assert bob.text_content("#item-id") == "i1"  # never alice's item
    assert bob.goto(alice.url).status == 410  # not even through alice's URL
    bob.go_back()

    with alice.expect_navigation():
        alice.click("#accept")  # accept the suggestion "pos" for i0
    assert alice.text_content("#message") == "Saved item i0." and alice.text_content("#item-id") == "i2"
    with alice.expect_navigation():
        alice.keyboard.press("2")  # correct i2 to label 2 = "pos"
    assert alice.text_content("#message") == "Saved item i2." and alice.text_content("#n-labelled") == "2"

    with bob.expect_navigation():
        bob.keyboard.press("s")
    assert bob.text_content("#message") == "Skipped item i1; it is back in the queue."

    items, labels = snapshot(db)
    assert [(x["item_id"], x["value"], x["source"], x["annotator"], x["guideline_version"]) for x in labels] == [
        ("i0", "pos", "human", "alice", 1), ("i2", "pos", "human", "alice", 1)]
    assert {x["item_id"]: x["status"] for x in items} == {"i0": "labelled", "i1": "pending", "i2": "labelled"}
    alice_ctx.close()
    bob_ctx.close()
