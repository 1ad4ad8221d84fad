"""The review app in a real browser: keyboard-only grading, blind pairwise, inert XSS, CSRF, screenshots."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from lorafleet.human_review import crud, db
from lorafleet.human_review.rubrics import load_rubric
from lorafleet.human_review.schemas import QueueCreate, UserCreate
from lorafleet.human_review.service import open_db

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "browser-test-password"
XSS = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
PROMPTS = [
    ("My parcel is two weeks late, what can I do?", "shipping: Sorry about the delay! I've opened a trace with "
     "the carrier; you'll get an update within 24 hours, or a full refund if it does not arrive.",
     "shipping — apologise, open a carrier trace, offer a refund after 21 days."),
    ("How do I change the e-mail on my account?", "account: Go to Settings → Profile → E-mail, enter the new "
     "address and confirm the link we send you.", "account — Settings → Profile → E-mail, then confirm."),
    ("I was charged twice for order 1182.", "billing: I can see the duplicate charge and have refunded it; it "
     "shows up in 3–5 business days.", "billing — confirm duplicate, refund, 3–5 days."),
]


@pytest.fixture(scope="module")
def seeded(live):  # noqa: ANN001, ANN201
    factory = open_db(live.settings)
    with db.session_scope(factory) as s:
        crud.create_user(s, user_in=UserCreate(name="rita", role="reviewer", password=PASSWORD))
        crud.create_queue(s, queue_in=QueueCreate(name="support-v3", overlap=1, members=["rita"]),
                          rubric=load_rubric(REPO / "examples" / "rubrics" / "general.yaml"))
        crud.create_queue(s, queue_in=QueueCreate(name="ab-v2-vs-v3", mode="pairwise", members=["rita"]), rubric=None)
        crud.create_queue(s, queue_in=QueueCreate(name="xss", members=["rita"]),
                          rubric=load_rubric(REPO / "examples" / "rubrics" / "general.yaml"))
    factory.kw["bind"].dispose()
    items = [{"id": f"s{i}", "prompt": p, "response": r, "reference": ref, "adapter": "support-intents@v3",
              "source": "eval"} for i, (p, r, ref) in enumerate(PROMPTS)]
    assert live.api("POST", "/api/v1/items", json={"queue": "support-v3", "items": items}).status_code == 200
    pair = {"id": "p0", "prompt": PROMPTS[0][0], "responses": {
        "support-intents@v2": "Please wait.", "support-intents@v3": PROMPTS[0][1]}}
    assert live.api("POST", "/api/v1/items", json={"queue": "ab-v2-vs-v3", "items": [pair]}).status_code == 200
    xss = {"id": "x0", "prompt": XSS, "response": XSS, "reference": XSS}
    assert live.api("POST", "/api/v1/items", json={"queue": "xss", "items": [xss]}).status_code == 200
    return live


@pytest.fixture(scope="module")
def img(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: docs/img/ when LORAFLEET_SCREENSHOTS=1 (refresh the README's), else a temp dir."""
    if os.environ.get("LORAFLEET_SCREENSHOTS") == "1":
        return REPO / "docs" / "img"
    return tmp_path_factory.mktemp("screenshots")


def _login(page, live) -> None:  # noqa: ANN001
    page.goto(live.url + "/login")
    page.fill("input[name=name]", "rita")
    page.fill("input[name=password]", PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(live.url + "/")


def test_grade_three_items_with_the_keyboard_only(page, seeded, img) -> None:  # noqa: ANN001
    _login(page, seeded)
    page.goto(seeded.url + "/q/support-v3/next")
    for n, keys in enumerate(["5454", "4345", "5555"]):
        page.wait_for_selector("fieldset.criterion.focused")
        if n == 0:
            page.keyboard.press("?")
            assert page.is_visible("#help")
            page.keyboard.press("?")
        for key in keys:  # each digit grades the focused criterion and moves on
            page.keyboard.press(key)
        if n == 0:
            page.keyboard.press("ArrowUp")  # from safety (last) back to coherence, and change it
            page.keyboard.press("4")
            page.screenshot(path=str(img / "review-grading.png"), full_page=True)
        with page.expect_navigation():
            page.keyboard.press("Enter")
    assert "Nothing left for you" in page.content()
    grades = [json.loads(x) for x in seeded.api("GET", "/api/v1/queues/support-v3/export").text.splitlines()]
    assert [g["scores"] for g in grades] == [
        {"relevance": 5, "accuracy": 4, "coherence": 4, "safety": 4},
        {"relevance": 4, "accuracy": 3, "coherence": 4, "safety": 5},
        {"relevance": 5, "accuracy": 5, "coherence": 5, "safety": 5},
    ]


def test_pairwise_choice_is_blind_and_recorded(page, seeded, img) -> None:  # noqa: ANN001
    _login(page, seeded)
    page.goto(seeded.url + "/q/ab-v2-vs-v3/next")
    page.wait_for_selector("fieldset.criterion.focused")
    assert "support-intents@" not in page.content()
    sides = page.locator(".side pre").all_inner_texts()
    better = "1" if sides[0] == PROMPTS[0][1] else "2"  # 1 = A, 2 = B
    page.keyboard.press(better)
    page.screenshot(path=str(img / "review-pairwise.png"), full_page=True)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    pairs = [json.loads(x) for x in
             seeded.api("GET", "/api/v1/queues/ab-v2-vs-v3/export?format=pairs").text.splitlines()]
    assert [(p["chosen_target"], p["rejected_target"]) for p in pairs] == [("support-intents@v3", "support-intents@v2")]


def test_xss_payload_stays_inert_and_a_form_without_csrf_is_rejected(page, seeded) -> None:  # noqa: ANN001
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    _login(page, seeded)
    page.goto(seeded.url + "/q/xss/next")
    page.wait_for_selector("#response")
    assert page.inner_text("#response") == XSS  # shown as text
    assert page.evaluate("window.__pwned") is None and not dialogs
    assert page.locator("main img").count() == 0
    # strip the CSRF token from the live form and submit it: the server refuses
    page.evaluate("document.querySelector('#grade-form input[name=csrf_token]').remove()")
    for key in "5555":
        page.keyboard.press(key)
    with page.expect_navigation() as nav:
        page.keyboard.press("Enter")
    assert nav.value.status == 403
    assert "CSRF" in page.content()
