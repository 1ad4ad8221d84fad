"""card.review end to end: the real review app (`lorafleet review serve --registry`, uvicorn on loopback),
two scripted reviewers grading through its HTTP pages, and the adapter card in a real registry folder
picking up the grades summary and agreement a few seconds later. No engine needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from lorafleet.card import AdapterCard, BaseModelRef, LoraInfo
from lorafleet.registry import Registry
from lorafleet.review_summary import review_lines
from tests.fixtures.models import REPO
from tests.integration.test_review_correlation import ADMIN, PASSWORD, eval_like_items, lorafleet
from tests.unit.core.peft_files import write_fake_peft
from tests.unit.human_review.pg import free_port


def start_app(data: Path, registry: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, LORAFLEET_REVIEW_ADMIN_TOKEN=ADMIN, LORAFLEET_REVIEW_CARD_INTERVAL="0.5")
    proc = subprocess.Popen([sys.executable, "-m", "lorafleet", "--data-dir", str(data), "review", "serve",
                             "--port", str(port), "--registry", str(registry)], cwd=REPO, env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(url + "/login", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("review app did not start")


def wait_for(registry: Registry, ref: str, grades: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        review = registry.resolve(ref).card.review
        if review.get("grades") == grades:
            return review
        time.sleep(0.2)
    raise AssertionError(f"card.review of {ref} never reached {grades} grades: {review}")


def test_repro_grades_given_over_http_reach_the_card_of_their_version(tmp_path: Path) -> None:
    data = tmp_path / "data"
    registry = Registry(data / "registry")
    for _ in range(2):
        card = AdapterCard(name="support", version="v1", base=BaseModelRef(id="tiny"),
                           lora=LoraInfo(rank=8, alpha=16, target_modules=["q_proj"]))
        registry.register("support", write_fake_peft(tmp_path / "peft"), card)
    for user in ("ann", "ben"):
        lorafleet(data, "review", "users", "add", user, "--password-stdin", stdin=PASSWORD + "\n")
    rubric = REPO / "examples" / "rubrics" / "general.yaml"
    lorafleet(data, "review", "queues", "create", "eval-q", "--rubric", str(rubric), "--overlap", "2",
              "--member", "ann", "--member", "ben")
    items = eval_like_items(20)  # adapter support@v1
    items += [{**i, "id": i["id"].replace(":tuned:", ":v2:"), "adapter": "support@v2"} for i in eval_like_items(5, 1)]
    src = tmp_path / "items.jsonl"
    src.write_text("".join(json.dumps(i) + "\n" for i in items))
    # imported while the app is down: the outbox rows wait in the database for the app's writer
    lorafleet(data, "review", "import", str(src), "--queue", "eval-q")

    proc, url = start_app(data, registry.root, tmp_path / "review.log")
    try:
        for user, seed in (("ann", "0"), ("ben", "1")):
            reviewer = subprocess.run(
                [sys.executable, "scripts/scripted_reviewer.py", "--url", url, "--user", user, "--queue", "eval-q",
                 "-n", "25", "--rule", "rougeL", "--criterion", "accuracy", "--noise", "0.3", "--seed", seed],
                input=PASSWORD + "\n", capture_output=True, text=True, cwd=REPO, timeout=300)
            assert reviewer.returncode == 0, reviewer.stderr
        v1 = wait_for(registry, "support@v1", 40)
        v2 = wait_for(registry, "support@v2", 10)
    finally:
        proc.terminate()
        proc.wait(15)
    acc = v1["criteria"]["accuracy"]
    assert (acc["n"], acc["items"], acc["reviewers"], acc["alpha_items"]) == (40, 20, 2, 20)
    # both reviewers follow ROUGE-L (plus a little noise): they agree on accuracy, not on the random criteria
    assert acc["alpha"] > 0.5 and acc["alpha"] > v1["criteria"]["relevance"]["alpha"]
    assert v1["eval_runs"] == [items[0]["metadata"]["run_id"]] and v1["queues"]["eval-q"]["sources"] == {"eval": 20}
    assert (v2["items"], v2["grades"]) == (5, 10)
    assert review_lines(v1)[0].startswith("40 grades of 20/20 items by 2 reviewer(s)")
