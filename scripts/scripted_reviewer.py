#!/usr/bin/env python
"""A scripted reviewer: logs in to the review app over its real HTTP interface and grades a queue by a
known rule plus seeded noise, so the correlation between a metric and the grades is known in advance.

It works through the same pages a person uses: GET /login (CSRF token), POST /login, GET /q/QUEUE/next
(leases an item and shows its grade form), POST the form with the session's CSRF token; the app then
leases the next item. Like a person it sees only the page (prompt, response, reference), never the
item's metric scores: it recomputes the rule's metric from what the page shows.

Rules (for --criterion; every other criterion gets a uniform random level, so it correlates with nothing):
  rougeL   level = round(lo + (hi − lo) · ROUGE-L F1(response, reference) + N(0, noise)), clipped to the
           scale; items without a reference are skipped. Pairwise queues: the side with the higher
           ROUGE-L (plus noise) wins, a tie when they are within 0.05.
  random   a uniform random level (the null: correlations hold 0).

    python scripts/scripted_reviewer.py --url http://127.0.0.1:8001 --user ann --queue demo-eval \\
        -n 40 --rule rougeL --criterion accuracy --noise 0.5 --seed 0 < password.txt

The password comes from stdin (first line) or $LORAFLEET_REVIEWER_PASSWORD. Prints a JSON summary.
Exit 0 on success, 2 when login fails or the queue cannot be opened.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser

import httpx


@dataclass
class GradePage:
    """What the grade form shows: where to post, the CSRF token, the radio groups, the texts."""

    action: str | None = None
    skip_action: str | None = None
    csrf: str | None = None
    radios: dict[str, list[str]] = field(default_factory=dict)
    responses: list[str] = field(default_factory=list)
    reference: str | None = None


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = GradePage()
        self._pre: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form" and a.get("id") == "grade-form":
            self.page.action = a.get("action")
        elif tag == "input" and a.get("name") == "csrf_token" and self.page.csrf is None:
            self.page.csrf = a.get("value")
        elif tag == "input" and a.get("type") == "radio" and a.get("name"):
            self.page.radios.setdefault(a["name"], []).append(a.get("value") or "")
        elif tag == "button" and a.get("id") == "skip":
            self.page.skip_action = a.get("formaction")
        elif tag == "pre":
            classes = (a.get("class") or "").split()
            self._pre = "response" if "response" in classes else "reference" if "reference" in classes else None
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._pre:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre" and self._pre:
            text = "".join(self._text)
            if self._pre == "response":
                self.page.responses.append(text)
            else:
                self.page.reference = text
            self._pre = None


def parse(html: str) -> GradePage:
    """The grade form of a page (action None: not a grade page, e.g. the queue is done)."""
    p = _Parser()
    p.feed(html)
    return p.page


class Reviewer:
    """Grades by `rule` on `criterion`, with Gaussian noise of `noise` levels, seeded."""

    def __init__(self, rule: str, criterion: str | None, noise: float, seed: int) -> None:
        if rule not in ("rougeL", "random"):
            raise SystemExit(f"unknown rule {rule!r}: use rougeL or random")
        self.rule, self.criterion, self.noise = rule, criterion, noise
        self.rng = random.Random(seed)
        self._scorer = None

    def rouge_l(self, response: str, reference: str) -> float:
        if self._scorer is None:
            from rouge_score import rouge_scorer  # the library lorafleet's rougeL metric wraps

            self._scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        return self._scorer.score(reference, response)["rougeL"].fmeasure

    def form(self, page: GradePage) -> dict[str, str] | None:
        """The form fields to submit, or None to skip the item (the rule cannot judge it)."""
        if "choice" in page.radios:
            return self._pairwise(page)
        criteria = [n for n in page.radios if n.startswith("score_")]
        target = f"score_{self.criterion}" if self.criterion else (criteria[0] if criteria else None)
        if target not in page.radios:
            raise SystemExit(f"the queue's rubric has no criterion {self.criterion!r}: "
                             f"it has {', '.join(c[6:] for c in criteria)}")
        fields = {name: self.rng.choice(page.radios[name]) for name in criteria}
        levels = sorted(int(v) for v in page.radios[target])
        if self.rule == "random":
            return fields
        if not page.reference or not page.responses:
            return None
        lo, hi = levels[0], levels[-1]
        raw = lo + (hi - lo) * self.rouge_l(page.responses[0], page.reference) + self.rng.gauss(0, self.noise)
        fields[target] = str(min(hi, max(lo, round(raw))))
        return fields

    def _pairwise(self, page: GradePage) -> dict[str, str] | None:
        if self.rule == "random":
            return {"choice": self.rng.choice(page.radios["choice"])}
        if not page.reference or len(page.responses) != 2:
            return None
        a, b = (self.rouge_l(r, page.reference) + self.rng.gauss(0, self.noise / 4) for r in page.responses)
        return {"choice": "tie" if abs(a - b) < 0.05 else ("A" if a > b else "B")}


def login(client: httpx.Client, user: str, password: str) -> None:
    page = client.get("/login")
    csrf = parse(page.text).csrf
    r = client.post("/login", data={"name": user, "password": password, "csrf_token": csrf or ""})
    if r.status_code != 200 or r.url.path == "/login":
        raise SystemExit(f"login as {user!r} failed (HTTP {r.status_code}): check the user name and password")


def review(url: str, user: str, password: str, queue: str, n: int, reviewer: Reviewer, *,
           client: httpx.Client | None = None) -> dict[str, object]:
    """Grade up to n items of the queue; returns a summary (graded, skipped, the rule).

    `client`: an httpx.Client that follows redirects (tests pass the app's TestClient); else one for `url`.
    """
    graded = skipped = 0
    with client or httpx.Client(base_url=url.rstrip("/"), follow_redirects=True, timeout=30) as client:
        login(client, user, password)
        r = client.get(f"/q/{queue}/next")
        if r.status_code != 200:
            raise SystemExit(f"queue {queue!r}: HTTP {r.status_code} (is {user!r} a member?)")
        while graded < n:
            page = parse(r.text)
            if page.action is None:
                break  # the done page: nothing left for this reviewer
            fields = reviewer.form(page)
            if fields is None:
                r = client.post(page.skip_action or page.action.rsplit("/", 1)[0] + "/skip",
                                data={"csrf_token": page.csrf or ""})
                skipped += 1
            else:
                r = client.post(page.action, data={**fields, "csrf_token": page.csrf or ""})
                graded += 1
            if r.status_code != 200:
                raise SystemExit(f"grading failed (HTTP {r.status_code}): {r.text[:300]}")
        logout_csrf = parse(client.get("/").text).csrf
        client.post("/logout", data={"csrf_token": logout_csrf or ""})  # hands back the lease still held
    return {"queue": queue, "reviewer": user, "graded": graded, "skipped": skipped, "rule": reviewer.rule,
            "criterion": reviewer.criterion, "noise": reviewer.noise}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default=os.environ.get("LORAFLEET_REVIEW_URL", "http://127.0.0.1:8001"))
    ap.add_argument("--user", required=True)
    ap.add_argument("--queue", required=True)
    ap.add_argument("-n", type=int, default=50, help="Items to grade at most.")
    ap.add_argument("--rule", default="rougeL", choices=["rougeL", "random"])
    ap.add_argument("--criterion", default=None, help="Criterion the rule sets (default: the rubric's first).")
    ap.add_argument("--noise", type=float, default=0.5, help="Gaussian noise, in grade levels.")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    password = os.environ.get("LORAFLEET_REVIEWER_PASSWORD")
    if not password:
        password = sys.stdin.readline().rstrip("\n")
    try:
        summary = review(args.url, args.user, password, args.queue, args.n,
                         Reviewer(args.rule, args.criterion, args.noise, args.seed))
    except SystemExit as exc:
        print(f"scripted reviewer: {exc}", file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:
        print(f"scripted reviewer: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
