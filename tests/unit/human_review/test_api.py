"""The JSON API: ingest (idempotent, authorised per queue), stats, exports — SQLite and PostgreSQL."""

from __future__ import annotations

import json

import httpx

from lorafleet.formats import read_records
from lorafleet.samples import ReviewClient, ReviewItem
from tests.unit.human_review.conftest import ADMIN_TOKEN, add_queue, add_user, csrf_of, ingest, items, login

SCORES = {"relevance": 5, "accuracy": 4, "coherence": 5, "safety": 5}


def test_ingest_is_idempotent_by_item_id(client, factory) -> None:  # noqa: ANN001
    add_queue(factory, "q")
    r = ingest(client, "q", items(3))
    assert r.status_code == 200 and r.json() == {"created": 3, "existing": 0}
    r = ingest(client, "q", items(5))
    assert r.json() == {"created": 2, "existing": 3}


def test_queue_tokens_only_reach_their_own_queue(client, factory) -> None:  # noqa: ANN001
    token = add_queue(factory, "mine")
    add_queue(factory, "theirs")
    assert ingest(client, "mine", items(1), token=token).status_code == 200
    denied = ingest(client, "theirs", items(1), token=token)
    missing = ingest(client, "no-such-queue", items(1), token=token)
    # same answer for "not yours" and "does not exist": a token learns nothing about other queues
    assert denied.status_code == missing.status_code == 403
    assert denied.json()["error"]["message"] == missing.json()["error"]["message"]
    assert ingest(client, "mine", items(1), token="rvq_wrong").status_code == 401
    assert client.post("/api/v1/items", json={"queue": "mine", "items": items(1)}).status_code == 401
    assert client.get("/api/v1/queues/mine/export", headers={"Authorization": f"Bearer {token}"}).status_code == 403


def test_queue_check_endpoint_and_the_core_client_say_which_is_wrong(client, factory, tmp_path) -> None:  # noqa: ANN001
    token = add_queue(factory, "capture")
    add_queue(factory, "theirs")

    def get(name: str, tok: str):  # noqa: ANN202
        return client.get(f"/api/v1/queues/{name}", headers={"Authorization": f"Bearer {tok}"})

    ok = get("capture", token)
    assert ok.status_code == 200 and ok.json()["name"] == "capture" and ok.json()["mode"] == "rubric"
    assert get("capture", ADMIN_TOKEN).status_code == 200
    assert get("theirs", token).status_code == 403
    assert get("capture", "rvq_rotated").status_code == 401
    missing = get("nope", ADMIN_TOKEN)  # the admin token may see every queue: a plain 404
    assert missing.status_code == 404 and "lorafleet review queues create nope" in missing.json()["error"]["message"]
    assert ingest(client, "nope", items(1)).status_code == 404

    transport = httpx.MockTransport(lambda req: _forward(client, req))

    def check(name: str, tok: str):  # noqa: ANN202
        return ReviewClient("http://review", tok, tmp_path / "spool.jsonl", transport=transport).check_queue(name)

    assert check("capture", token).ok
    assert check("nope", ADMIN_TOKEN).refusal.reason == "queue_missing"
    assert check("capture", "rvq_rotated").refusal.reason == "unauthorized"
    assert check("theirs", token).refusal.reason == "forbidden"
    # and a push into the missing queue is refused and kept, not "sent"
    rc = ReviewClient("http://review", ADMIN_TOKEN, tmp_path / "spool2.jsonl", transport=transport)
    result = rc.push("nope", [ReviewItem(id="c1", prompt="hi", response="yo", source="capture")])
    assert result.sent == 0 and result.refusals[0].reason == "queue_missing" and rc.pending() == 1


def test_bad_items_get_a_400_in_openai_error_shape(client, factory) -> None:  # noqa: ANN001
    add_queue(factory, "q")
    r = ingest(client, "q", [{"id": "x", "prompt": "p"}])  # neither response nor responses
    assert r.status_code == 400
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    pairwise_into_rubric = ingest(client, "q", items(1, pairwise=True))
    assert pairwise_into_rubric.status_code == 400 and "pairwise" in pairwise_into_rubric.json()["error"]["message"]


def test_the_core_review_client_pushes_through_the_api(client, factory, tmp_path) -> None:  # noqa: ANN001
    token = add_queue(factory, "live")
    transport = httpx.MockTransport(lambda req: _forward(client, req))
    rc = ReviewClient("http://review", token, tmp_path / "spool.jsonl", transport=transport)
    batch = [ReviewItem(id=f"c{i}", prompt="hi", response="yo", source="capture") for i in range(3)]
    assert rc.push("live", batch).empty and rc.pending() == 0
    assert rc.push("live", batch).sent == 3  # a resend is a no-op for the app
    stats = client.get("/api/v1/queues/live/stats", headers={"Authorization": f"Bearer {token}"}).json()
    assert stats["queue"]["items"] == 3


def _forward(client, request: httpx.Request) -> httpx.Response:  # noqa: ANN001
    r = client.request(request.method, request.url.path, content=request.content, headers=dict(request.headers))
    return httpx.Response(r.status_code, content=r.content, headers=r.headers)


def _grade_all(client, queue: str, form: dict, n: int) -> None:  # noqa: ANN001
    csrf = csrf_of(client.get("/").text)
    for _ in range(n):
        page = client.get(f"/q/{queue}/next")
        action = page.url.path + "/grade"
        r = client.post(action, data={**form, "csrf_token": csrf}, follow_redirects=False)
        assert r.status_code == 303, r.text


def test_exports_grades_training_and_pairs(client, factory, tmp_path) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    add_queue(factory, "q", members=["ann"])
    add_queue(factory, "pq", members=["ann"], pairwise=True)
    ingest(client, "q", [{**it, "adapter": "support@v3"} for it in items(2)])
    ingest(client, "pq", items(1, pairwise=True))
    login(client, "ann")
    _grade_all(client, "q", {f"score_{k}": v for k, v in SCORES.items()}, 1)  # approved as is
    _grade_all(client, "q", {"score_relevance": 2, "score_accuracy": 1, "score_coherence": 3, "score_safety": 5,
                             "correction": "the fixed answer"}, 1)
    page = client.get("/q/pq/next")
    tuned_side = "A" if page.text.index("tuned answer") < page.text.index("base answer") else "B"
    client.post(page.url.path + "/grade", data={"choice": tuned_side, "csrf_token": csrf_of(page.text)})

    auth = {"Authorization": "Bearer rva_test_admin_token"}
    exported = client.get("/api/v1/queues/q/export?format=grades", headers=auth).text
    grades = [json.loads(x) for x in exported.splitlines()]
    assert [g["reviewer"] for g in grades] == ["ann", "ann"] and grades[0]["adapter"] == "support@v3"
    training = client.get("/api/v1/queues/q/export?format=training", headers=auth).text
    path = tmp_path / "train.jsonl"
    path.write_text(training)
    records = list(read_records(path))  # core's reader accepts it as chat data
    answers = sorted(r.record.messages[-1].content for r in records)
    assert len(records) == 2 and "the fixed answer" in answers
    assert {r.raw["provenance"] for r in records} == {"approved", "corrected"}
    assert all(r.raw["queue"] == "q" and r.raw["reviewer"] == "ann" and r.raw["adapter"] == "support@v3"
               for r in records)
    pairs = [json.loads(x) for x in client.get("/api/v1/queues/pq/export?format=pairs", headers=auth).text.splitlines()]
    assert pairs == [{"prompt": [{"role": "user", "content": "question 0"}], "chosen": "tuned answer 0",
                      "rejected": "base answer 0", "chosen_target": "support@v2", "rejected_target": "base",
                      "queue": "pq", "item": "i0", "reviewer": "ann"}]


def test_stats_report_agreement_gold_and_disagreements(client, factory) -> None:  # noqa: ANN001
    for name in ("ann", "ben"):
        add_user(factory, name)
    add_queue(factory, "q", overlap=2, members=["ann", "ben"])
    ingest(client, "q", items(6, metadata={"gold": {"accuracy": 5}}))
    for name, accuracy in (("ann", 5), ("ben", 2)):
        client.cookies.clear()
        login(client, name)
        _grade_all(client, "q", {"score_relevance": 4, "score_accuracy": accuracy, "score_coherence": 4,
                                 "score_safety": 5}, 6)
    stats = client.get("/api/v1/queues/q/stats", headers={"Authorization": "Bearer rva_test_admin_token"}).json()
    assert stats["queue"]["grades"] == 12
    gold = {g["reviewer"]: g["accuracy"] for g in stats["gold"]}
    assert gold == {"ann": 1.0, "ben": 0.0}
    acc = next(a for a in stats["agreement"] if a["criterion"] == "accuracy")
    assert acc["items"] == 6 and acc["alpha"] < 0
    assert len(stats["disagreements"]) == 6 and stats["disagreements"][0]["spread"] == {"accuracy": 3}


def test_admin_api_creates_queues_and_queue_tokens_cannot(client, factory) -> None:  # noqa: ANN001
    rubric = {"name": "tiny", "criteria": [{"name": "ok", "scale": [1, 2], "anchors": {1: "no", 2: "yes"}}]}
    admin = {"Authorization": "Bearer rva_test_admin_token"}
    r = client.post("/api/v1/queues", json={"name": "fromeval", "overlap": 2, "rubric": rubric}, headers=admin)
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    assert ingest(client, "fromeval", items(2), token=token).json() == {"created": 2, "existing": 0}
    r = client.post("/api/v1/queues", json={"name": "other", "rubric": rubric},
                    headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403
    bad = client.post("/api/v1/queues", json={"name": "bad", "rubric": {"name": "x", "criteria": [{"name": "ok"}]}},
                      headers=admin)
    assert bad.status_code == 400 and "rubric.criteria.0.anchors" in bad.json()["error"]["message"]
    assert client.post("/api/v1/queues", json={"name": "fromeval", "rubric": rubric}, headers=admin).status_code == 409
