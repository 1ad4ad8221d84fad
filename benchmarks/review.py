"""Review app latency: p50/p95 of "next item" and "submit" with many items and concurrent reviewers,
on SQLite (WAL) and on PostgreSQL, side by side in one run.

The app runs as its own process (`lorafleet review serve`) on a loopback port; N reviewer threads log
in through the form and loop: GET /q/bench/next (lease + grading page) → POST the grade.

    .venv/bin/python benchmarks/review.py                      # 100,000 items, 20 reviewers, both backends
    .venv/bin/python benchmarks/review.py --items 5000 --ops 10 # quick run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from sqlalchemy import insert

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lorafleet.human_review import crud, db, security  # noqa: E402
from lorafleet.human_review.models import Item, Slot, User  # noqa: E402
from lorafleet.human_review.rubrics import load_rubric  # noqa: E402
from lorafleet.human_review.schemas import QueueCreate  # noqa: E402
from lorafleet.human_review.service import open_db  # noqa: E402
from lorafleet.human_review.settings import ReviewSettings  # noqa: E402

from tests.unit.human_review.pg import PgServer, free_port  # noqa: E402

PASSWORD = "benchmark-password"
FORM = {"score_relevance": "4", "score_accuracy": "5", "score_coherence": "4", "score_safety": "5"}


def seed(url: str, data_dir: Path, *, items: int, reviewers: int, overlap: int) -> float:
    """Users, one queue and `items` items (bulk inserted); returns seconds taken."""
    t0 = time.perf_counter()
    factory = open_db(ReviewSettings(data_dir=data_dir, review_database_url=url))
    pw = security.hash_password(PASSWORD)
    names = [f"r{i}" for i in range(reviewers)]
    with db.session_scope(factory) as s:
        for name in names:
            s.add(User(name=name, role="reviewer", password_hash=pw, created_at=time.time()))
        s.flush()
        crud.create_queue(s, queue_in=QueueCreate(name="bench", overlap=overlap, members=names),
                          rubric=load_rubric(REPO / "examples" / "rubrics" / "general.yaml"))
        qid = crud.get_queue(s, name="bench").id
    chunk = 5000
    for start in range(0, items, chunk):
        rows = [{"id": i + 1, "queue_id": qid, "ext_id": f"i{i}", "public_id": f"{i:024x}",
                 "data": {"id": f"i{i}", "prompt": f"question {i}", "response": f"answer {i} " * 20,
                          "reference": f"ref {i}", "source": "eval", "scores": {}, "metadata": {}},
                 "is_gold": False, "created_at": time.time()} for i in range(start, min(items, start + chunk))]
        slots = [{"queue_id": qid, "item_id": r["id"], "slot_no": n, "state": "free", "flipped": False}
                 for r in rows for n in range(overlap)]
        with db.session_scope(factory) as s:
            s.execute(insert(Item), rows)
            s.execute(insert(Slot), slots)
    factory.kw["bind"].dispose()
    return time.perf_counter() - t0


def start_server(url: str, data_dir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "LORAFLEET_LEASE_SECONDS": "600"}
    proc = subprocess.Popen([sys.executable, "-m", "lorafleet", "--data-dir", str(data_dir), "review", "serve",
                             "--port", str(port), "--database-url", url], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/login", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode())
    raise RuntimeError("review server did not start")


def reviewer(base: str, name: str, ops: int, think: float, start: threading.Barrier,
             out: dict[str, list[float]], errors: list[str]) -> None:
    with httpx.Client(base_url=base, timeout=60) as c:
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', c.get("/login").text).group(1)
        c.post("/login", data={"name": name, "password": PASSWORD, "csrf_token": csrf})
        start.wait()  # logins (argon2, slow on purpose) are not part of the measurement
        for _ in range(ops):
            t0 = time.perf_counter()
            page = c.get("/q/bench/next", follow_redirects=True)
            t1 = time.perf_counter()
            if page.status_code != 200 or "/items/" not in str(page.url):
                errors.append(f"next: {page.status_code}")
                return
            csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
            time.sleep(think)  # reading and grading; 0 = a closed-loop stress test
            t1 = time.perf_counter()
            r = c.post(page.url.path + "/grade", data={**FORM, "csrf_token": csrf})
            t2 = time.perf_counter()
            if r.status_code != 303:
                errors.append(f"submit: {r.status_code}")
                return
            out["next"].append(t1 - t0)
            out["submit"].append(t2 - t1)


def measure(url: str, data_dir: Path, args: argparse.Namespace) -> dict:
    seconds = seed(url, data_dir, items=args.items, reviewers=args.reviewers, overlap=args.overlap)
    port = free_port()
    proc = start_server(url, data_dir, port)
    try:
        out: dict[str, list[float]] = {"next": [], "submit": []}
        errors: list[str] = []
        barrier = threading.Barrier(args.reviewers + 1)
        threads = [threading.Thread(target=reviewer, args=(f"http://127.0.0.1:{port}", f"r{i}", args.ops,
                                                           args.think, barrier, out, errors))
                   for i in range(args.reviewers)]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    if errors:
        raise RuntimeError(f"{len(errors)} reviewer(s) failed: {errors[:3]}")

    def pct(xs: list[float], q: float) -> float:
        return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] * 1000

    return {"seed_s": round(seconds, 1), "grades": len(out["submit"]),
            "grades_per_s": round(len(out["submit"]) / wall, 1),
            "next_p50_ms": round(pct(out["next"], 50), 1), "next_p95_ms": round(pct(out["next"], 95), 1),
            "submit_p50_ms": round(pct(out["submit"], 50), 1), "submit_p95_ms": round(pct(out["submit"], 95), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--reviewers", type=int, default=20)
    ap.add_argument("--ops", type=int, default=25, help="next+submit rounds per reviewer")
    ap.add_argument("--overlap", type=int, default=2)
    ap.add_argument("--think", type=float, default=1.0,
                    help="seconds each reviewer spends on a page before submitting (0: closed-loop stress)")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = {}
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory(prefix="review-bench-") as tmp:
            data_dir = Path(tmp)
            if backend == "sqlite":
                results[backend] = measure(f"sqlite:///{data_dir / 'review.db'}", data_dir, args)
            else:
                pg = PgServer().start()
                try:
                    results[backend] = measure(pg.new_database(), data_dir, args)
                finally:
                    pg.stop()
        print(f"{backend}: {results[backend]}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"\n{args.items:,} items, overlap {args.overlap}, {args.reviewers} concurrent reviewers, "
          f"{args.ops} grades each, think time {args.think} s (HTTP, loopback, one uvicorn worker; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})\n")
    cols = ["next_p50_ms", "next_p95_ms", "submit_p50_ms", "submit_p95_ms", "grades_per_s", "seed_s"]
    print("| backend | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for backend, r in results.items():
        print(f"| {backend} | " + " | ".join(str(r[c]) for c in cols) + " |")
    if len(results) == 2:
        a, b = results.values()
        print(f"\npostgresql / sqlite p95: next {b['next_p95_ms'] / a['next_p95_ms']:.2f}x, "
              f"submit {b['submit_p95_ms'] / a['submit_p95_ms']:.2f}x")


if __name__ == "__main__":
    main()
