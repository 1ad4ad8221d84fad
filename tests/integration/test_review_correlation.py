"""Metric ↔ grade correlation end to end: the real review app (`lorafleet review serve`, uvicorn on
loopback), eval-like items carrying ROUGE-L scores, scripts/scripted_reviewer.py grading through the
app's HTTP pages by a known rule plus noise, the grades export, `eval correlate` and the stats API."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from lorafleet.evaluate.metrics.registry import compute_metrics, families_for

from lorafleet.correlation import correlation_table
from tests.fixtures.models import REPO
from tests.unit.human_review.pg import free_port

PASSWORD = "scripted reviewer pw"
ADMIN = "rva_correlation_admin"
TEXT = ("the order ships within three days and arrives by courier to your door after payment clears "
        "refunds take five working days once the parcel is back in our warehouse")
WORDS = TEXT.split()
RUN_ID = "demo-20260101-000000-abcd"


def lorafleet(data_dir: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LORAFLEET_REVIEW_ADMIN_TOKEN=ADMIN)
    r = subprocess.run([sys.executable, "-m", "lorafleet", "--data-dir", str(data_dir), *args], input=stdin,
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture
def review_app(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`lorafleet review serve` as a subprocess on a free loopback port; stopped by its pid afterwards."""
    data = tmp_path / "data"
    port = free_port()
    env = dict(os.environ, LORAFLEET_REVIEW_ADMIN_TOKEN=ADMIN)
    log = open(tmp_path / "review.log", "wb")  # noqa: SIM115 - closed after the server stops
    proc = subprocess.Popen([sys.executable, "-m", "lorafleet", "--data-dir", str(data), "review", "serve",
                             "--host", "127.0.0.1", "--port", str(port)], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if proc.poll() is not None:
                raise RuntimeError(f"review app exited: {(tmp_path / 'review.log').read_text()}")
            try:
                if httpx.get(url + "/login", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError("review app did not start")
        yield url, data
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def eval_like_items(n: int, seed: int = 0) -> list[dict]:
    """Items as an eval run pushes them: id <run>:<target>:<sample>, a reference, ROUGE-L scores from
    lorafleet's own metric; each response keeps a random share of the reference's words."""
    rng = random.Random(seed)
    refs, preds = [], []
    for _ in range(n):
        ref = rng.sample(WORDS, 12)
        keep = rng.random()
        preds.append(" ".join(w if rng.random() < keep else rng.choice(["maybe", "soon", "call", "us"]) for w in ref))
        refs.append(" ".join(ref))
    rouge = compute_metrics(families_for(["rougeL"]), preds, [[r] for r in refs])["rougeL"].per_sample
    return [{"id": f"{RUN_ID}:tuned:s{i}", "prompt": f"where is my order {i}?", "response": preds[i],
             "reference": refs[i], "adapter": "support@v1", "source": "eval", "scores": {"rougeL": float(rouge[i])},
             "metadata": {"run_id": RUN_ID, "suite": "demo", "target": "tuned", "sample_id": f"s{i}"}}
            for i in range(n)]


def test_repro_scripted_reviewer_grades_over_http_and_the_rule_shows_in_the_correlation(review_app, tmp_path) -> None:  # noqa: ANN001
    url, data = review_app
    lorafleet(data, "review", "users", "add", "ann", "--password-stdin", stdin=PASSWORD + "\n")
    rubric = REPO / "examples" / "rubrics" / "general.yaml"
    lorafleet(data, "review", "queues", "create", "demo-eval", "--rubric", str(rubric), "--member", "ann")
    items = eval_like_items(40)
    items_file = tmp_path / "items.jsonl"
    items_file.write_text("".join(json.dumps(i) + "\n" for i in items))
    lorafleet(data, "review", "import", str(items_file), "--queue", "demo-eval")

    reviewer = subprocess.run(
        [sys.executable, "scripts/scripted_reviewer.py", "--url", url, "--user", "ann", "--queue", "demo-eval",
         "-n", "40", "--rule", "rougeL", "--criterion", "accuracy", "--noise", "0.5", "--seed", "0"],
        input=PASSWORD + "\n", capture_output=True, text=True, cwd=REPO, timeout=300)
    assert reviewer.returncode == 0, reviewer.stderr
    assert json.loads(reviewer.stdout)["graded"] == 40

    grades = tmp_path / "grades.jsonl"
    lorafleet(data, "review", "export", "demo-eval", "--format", "grades", "-o", str(grades))
    rows = [json.loads(line) for line in grades.read_text().splitlines()]
    assert len(rows) == 40 and all(r["metric_scores"]["rougeL"] == pytest.approx(
        next(i for i in items if i["id"] == r["item"])["scores"]["rougeL"]) for r in rows)
    table = correlation_table([(r["metric_scores"], r["scores"]) for r in rows])
    accuracy = table.get("rougeL", "accuracy")
    assert accuracy.n == 40 and accuracy.spearman > 0.7 and accuracy.spearman_ci[0] > 0
    relevance = table.get("rougeL", "relevance")  # graded at random by the script
    assert relevance.spearman_ci[0] < 0 < relevance.spearman_ci[1]

    stats = httpx.get(f"{url}/api/v1/queues/demo-eval/stats", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    cell = next(c for c in stats["correlation"]["rows"] if c["metric"] == "rougeL" and c["criterion"] == "accuracy")
    assert cell["spearman"] == pytest.approx(accuracy.spearman) and cell["spearman_ci"][0] > 0

    # the same export, joined to an eval run folder by the review item ids
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"run_id": RUN_ID, "suite": {"name": "demo"}, "endpoint": "x",
                                                   "created_at": "2026-01-01T00:00:00Z", "status": "complete"}))
    (run / "scores.jsonl").write_text("".join(json.dumps({"target": "tuned", "id": i["metadata"]["sample_id"],
                                                          "scores": i["scores"]}) + "\n" for i in items))
    out = lorafleet(data, "eval", "correlate", str(run), "--grades", str(grades), "--json").stdout
    saved = json.loads(out)
    joined = next(c for c in saved["table"]["rows"] if c["metric"] == "rougeL" and c["criterion"] == "accuracy")
    assert saved["matched_rows"] == 40 and joined["spearman"] == pytest.approx(accuracy.spearman)
    assert (run / "correlation.json").is_file()
