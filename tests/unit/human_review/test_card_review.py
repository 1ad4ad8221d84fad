"""card.review: grades reach the card of the exact adapter version they were given on, under the registry
lock, with the right numbers; versions stay apart; nothing is written without a registry; concurrent
grades and other card writers lose nothing — on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
import random
import re
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from lorafleet.evaluate.card_link import append_eval_run
from lorafleet.human_review import card_outbox, card_review, crud, db, leases
from lorafleet.human_review.app import create_app
from lorafleet.human_review.models import CardUpdate
from lorafleet.human_review.schemas import GradeIn
from lorafleet.human_review.settings import ReviewSettings
from sqlalchemy import select

from lorafleet import correlation
from lorafleet.card import AdapterCard, BaseModelRef, LoraInfo
from lorafleet.registry import Registry
from lorafleet.review_summary import parse_review, review_lines
from lorafleet.samples import ReviewItem
from tests.unit.core.peft_files import write_fake_peft
from tests.unit.human_review.conftest import add_queue, add_user, csrf_of, login

OTHER = {"relevance": 4, "coherence": 4, "safety": 5}


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """`support` v1 and v2 in a fresh registry."""
    reg = Registry(tmp_path / "registry")
    for _ in range(2):
        card = AdapterCard(name="support", version="v1", base=BaseModelRef(id="tiny"),
                           lora=LoraInfo(rank=8, alpha=16, target_modules=["q_proj"]))
        reg.register("support", write_fake_peft(tmp_path / "peft"), card)
    assert reg.versions("support") == ["v1", "v2"]
    return reg


def put(factory, queue: str, n: int, adapter: str | None, *, prefix: str, source: str = "eval",  # noqa: ANN001
        run_id: str = "run-1") -> None:
    rows = [ReviewItem(id=f"{prefix}{i}", prompt=f"q{i}", response=f"a{i}", adapter=adapter, source=source,
                       metadata={"run_id": run_id} if source == "eval" else {}) for i in range(n)]
    with db.session_scope(factory) as s:
        crud.ingest(s, queue=crud.get_queue(s, name=queue), items=rows)


def grade_next(factory, queue: str, reviewer: int, accuracy: int) -> str | None:  # noqa: ANN001
    """Lease the reviewer's next item and grade it through leases.submit (the submit path); its item id."""
    with factory() as s:
        q = crud.get_queue(s, name=queue)
        lease = leases.next_item(s, queue=q, reviewer_id=reviewer, lease_seconds=60)
        if lease is None:
            return None
        leases.submit(s, queue=q, item=lease.item, reviewer_id=reviewer,
                      grade=GradeIn(scores={**OTHER, "accuracy": accuracy}))
        return lease.item.ext_id


def review_of(registry: Registry, ref: str) -> dict:
    return registry.resolve(ref).card.review


def test_repro_grades_reach_card_review_with_the_right_numbers(factory, registry: Registry) -> None:  # noqa: ANN001
    """Before: card.review stayed {} whatever was graded. Now n, mean (CI), α and counts per criterion."""
    ann, ben = add_user(factory, "ann"), add_user(factory, "ben")
    add_queue(factory, "eval-q", overlap=2, members=["ann", "ben"])
    put(factory, "eval-q", 12, "support@v1", prefix="v1-")
    rng = random.Random(0)
    given: dict[str, dict[int, int]] = {}
    for reviewer in (ann, ben) * 12:
        level = rng.randint(1, 5)
        ext = grade_next(factory, "eval-q", reviewer, level)
        given.setdefault(ext, {})[reviewer] = level
    assert review_of(registry, "support@v1") == {}  # the submit only noted the version; the writer writes
    report = card_review.flush(factory, registry)
    assert report.written == ["support@v1"]
    review = review_of(registry, "support@v1")
    acc = review["criteria"]["accuracy"]
    levels = [v for g in given.values() for v in g.values()]
    assert acc["n"] == 24 and acc["items"] == 12 and acc["reviewers"] == 2 and acc["scale"] == [1, 5]
    assert acc["mean"] == round(sum(levels) / 24, 4)
    lo, hi = acc["mean_ci"]
    assert lo < acc["mean"] < hi
    expected = correlation.alpha_ci([[g[ann], g[ben]] for g in given.values()], level="ordinal",
                                    reps=card_review.ALPHA_REPS, min_items=card_review.MIN_ALPHA_ITEMS)
    assert acc["alpha"] == round(expected.value, 4) and acc["alpha_items"] == 12
    assert review["criteria"]["safety"]["mean"] == 5.0 and review["criteria"]["safety"]["alpha"] == 1.0
    assert (review["items"], review["graded_items"], review["grades"], review["reviewers"]) == (12, 12, 24, 2)
    q = review["queues"]["eval-q"]
    assert q["sources"] == {"eval": 12} and q["eval_runs"] == ["run-1"] and q["rubric"] == "general"
    assert review["eval_runs"] == ["run-1"] and review["adapter"] == "support@v1"
    assert review["capture"]["items"] == 0
    assert parse_review(review).criteria["accuracy"].n == 24
    with db.session_scope(factory) as s:
        assert s.scalars(select(CardUpdate)).all() == []  # written: the outbox is empty


def test_two_versions_are_kept_apart_and_captured_samples_counted_on_their_own(factory, registry) -> None:  # noqa: ANN001
    ann = add_user(factory, "ann")
    add_queue(factory, "mixed", members=["ann"])
    put(factory, "mixed", 4, "support@v1", prefix="a-")
    put(factory, "mixed", 3, "support@v2", prefix="b-", source="capture")
    put(factory, "mixed", 2, "support@prod", prefix="c-")  # an alias: which version answered is unknown
    put(factory, "mixed", 2, "smollm2-135m-instruct", prefix="d-")  # the base: no card
    graded = {}
    while (ext := grade_next(factory, "mixed", ann, 2)) is not None:
        graded[ext] = 2
    assert len(graded) == 11
    card_review.flush(factory, registry)
    v1, v2 = review_of(registry, "support@v1"), review_of(registry, "support@v2")
    assert (v1["items"], v1["grades"], v1["capture"]["items"]) == (4, 4, 0)
    assert (v2["items"], v2["grades"], v2["capture"]["grades"]) == (3, 3, 3)
    assert v2["capture"]["criteria"]["accuracy"]["mean"] == 2.0
    assert v2["queues"]["mixed"]["sources"] == {"capture": 3} and v2["eval_runs"] == []
    with db.session_scope(factory) as s:  # aliases and the base were never queued for a card
        assert card_outbox.pending(s) == []


def test_an_alpha_needs_two_grades_per_item(factory, registry) -> None:  # noqa: ANN001
    ann = add_user(factory, "ann")
    add_queue(factory, "q", members=["ann"])
    put(factory, "q", 6, "support@v1", prefix="i")
    for level in (1, 2, 3, 4, 5, 5):
        grade_next(factory, "q", ann, level)
    card_review.flush(factory, registry)
    acc = review_of(registry, "support@v1")["criteria"]["accuracy"]
    assert acc["n"] == 6 and acc["alpha"] is None and acc["alpha_items"] == 0
    assert "not enough data" in acc["alpha_note"]


def test_no_registry_configured_writes_nothing_and_says_so_once(review_settings, factory, registry,  # noqa: ANN001
                                                                caplog) -> None:
    caplog.set_level(logging.WARNING, logger="lorafleet.human_review.app")
    app = create_app(review_settings)
    assert app.state.card_writer is None
    warned = [r for r in caplog.records if "no registry configured" in r.getMessage()]
    assert len(warned) == 1
    add_user(factory, "ann")
    add_queue(factory, "q", members=["ann"])
    put(factory, "q", 1, "support@v1", prefix="i")
    with TestClient(app, base_url="http://127.0.0.1") as client:
        _grade_in_browser(client, "q")
    assert review_of(registry, "support@v1") == {}
    assert len([r for r in caplog.records if "no registry configured" in r.getMessage()]) == 1


def test_a_registry_that_is_not_a_folder_is_refused_at_start(review_settings, tmp_path: Path) -> None:  # noqa: ANN001
    from lorafleet.errors import ConfigError

    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        create_app(review_settings.model_copy(update={"review_registry": tmp_path / "a-file"}))


def _grade_in_browser(client: TestClient, queue: str, accuracy: int = 4) -> None:
    login(client, "ann")
    page = client.get(f"/q/{queue}/next")
    assert page.status_code == 200, page.text
    action = re.search(r'action="([^"]+/grade)" id="grade-form"', page.text).group(1)
    scores = {**OTHER, "accuracy": accuracy}
    form = {"csrf_token": csrf_of(page.text), **{f"score_{k}": str(v) for k, v in scores.items()}}
    assert client.post(action, data=form, follow_redirects=False).status_code == 303


def test_repro_a_grade_given_in_the_browser_lands_on_the_card(review_settings, factory, registry) -> None:  # noqa: ANN001
    """The page's grade submit → outbox → the app's background writer → card.review of that version."""
    settings = review_settings.model_copy(update={"review_registry": registry.root, "review_card_interval": 0.05})
    add_user(factory, "ann")
    add_queue(factory, "q", members=["ann"])
    put(factory, "q", 1, "support@v2", prefix="i")
    app = create_app(settings)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        _grade_in_browser(client, "q", accuracy=3)
    # stopping the app flushes once more: grades given just before shutdown are not left behind
    review = review_of(registry, "support@v2")
    assert review["criteria"]["accuracy"]["mean"] == 3.0 and review["grades"] == 1
    assert review_of(registry, "support@v1") == {}


def test_the_write_goes_through_the_registry_lock(factory, registry, monkeypatch) -> None:  # noqa: ANN001
    calls = []
    real = Registry.update_card_with

    def spy(self, ref, fn):  # noqa: ANN001, ANN202
        calls.append(ref)
        return real(self, ref, fn)

    monkeypatch.setattr(Registry, "update_card_with", spy)
    ann = add_user(factory, "ann")
    add_queue(factory, "q", members=["ann"])
    put(factory, "q", 2, "support@v1", prefix="i")
    grade_next(factory, "q", ann, 4)
    card_review.flush(factory, registry)
    assert calls == ["support@v1"]


def test_repro_concurrent_grades_and_card_writers_lose_no_update(factory, registry) -> None:  # noqa: ANN001
    """Reviewers grade in parallel while the writer flushes and an eval run appends to the same card under
    the lock: at the end the card counts every grade and keeps every eval run."""
    reviewers = [add_user(factory, f"r{i}") for i in range(4)]
    add_queue(factory, "q", overlap=2, members=[f"r{i}" for i in range(4)])
    put(factory, "q", 20, "support@v1", prefix="i")
    stop = threading.Event()
    errors: list[BaseException] = []

    def reviewer(rid: int) -> None:
        try:
            while grade_next(factory, "q", rid, 1 + rid) is not None:
                pass
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def writer() -> None:
        while not stop.is_set():
            card_review.flush(factory, registry)

    def eval_runs() -> None:
        for i in range(15):
            append_eval_run(registry, "support@v1", {"run_id": f"run-{i}"})

    threads = [threading.Thread(target=reviewer, args=(r,)) for r in reviewers]
    side = [threading.Thread(target=writer), threading.Thread(target=eval_runs)]
    for t in threads + side:
        t.start()
    for t in threads:
        t.join()
    side[1].join()
    stop.set()
    side[0].join()
    assert not errors
    card_review.flush(factory, registry)
    card = registry.resolve("support@v1").card
    assert card.review["grades"] == 40 and card.review["criteria"]["accuracy"]["n"] == 40
    assert [r["run_id"] for r in card.eval_runs] == [f"run-{i}" for i in range(15)]


def test_a_change_during_a_write_keeps_the_version_queued(factory) -> None:  # noqa: ANN001
    with db.session_scope(factory) as s:
        card_outbox.enqueue(s, ["support@v1"])
    with db.session_scope(factory) as s:
        ((adapter, seq),) = card_outbox.pending(s)
    with db.session_scope(factory) as s:
        card_outbox.enqueue(s, ["support@v1"])  # a grade arrives while the card is being written
    with db.session_scope(factory) as s:
        assert card_outbox.done(s, adapter=adapter, seq=seq) is False
    with db.session_scope(factory) as s:
        assert card_outbox.pending(s) == [("support@v1", seq + 1)]


def test_a_stale_summary_never_overwrites_a_newer_one(factory, registry) -> None:  # noqa: ANN001
    ann = add_user(factory, "ann")
    add_queue(factory, "q", members=["ann"])
    put(factory, "q", 2, "support@v1", prefix="i")
    grade_next(factory, "q", ann, 4)
    with factory() as s:
        old = card_review.version_review(s, "support@v1", now=100.0)
    grade_next(factory, "q", ann, 2)
    card_review.flush(factory, registry)
    assert card_review.write_card(registry, "support@v1", old, as_of=100.0) is False
    assert review_of(registry, "support@v1")["grades"] == 2


def test_versions_missing_from_the_registry_leave_the_outbox(factory, registry) -> None:  # noqa: ANN001
    ann = add_user(factory, "ann")
    add_queue(factory, "q", members=["ann"])
    put(factory, "q", 1, "other@v7", prefix="i")
    grade_next(factory, "q", ann, 4)
    report = card_review.flush(factory, registry)
    assert report.not_in_registry == ["other@v7"] and report.written == []
    with db.session_scope(factory) as s:
        assert card_outbox.pending(s) == []


def test_a_deleted_queue_stops_counting(factory, registry) -> None:  # noqa: ANN001
    ann = add_user(factory, "ann")
    for name in ("keep", "gone"):
        add_queue(factory, name, members=["ann"])
        put(factory, name, 2, "support@v1", prefix=f"{name}-")
        grade_next(factory, name, ann, 4)
    card_review.flush(factory, registry)
    assert review_of(registry, "support@v1")["grades"] == 2
    with db.session_scope(factory) as s:
        crud.delete_queue(s, queue=crud.get_queue(s, name="gone"))
    card_review.flush(factory, registry)
    review = review_of(registry, "support@v1")
    assert review["grades"] == 1 and list(review["queues"]) == ["keep"]


def test_sync_all_rewrites_every_version_after_the_app_was_down(factory, registry) -> None:  # noqa: ANN001
    ann = add_user(factory, "ann")
    add_queue(factory, "q", members=["ann"])
    put(factory, "q", 2, "support@v1", prefix="a")
    put(factory, "q", 2, "support@v2", prefix="b")
    while grade_next(factory, "q", ann, 5) is not None:
        pass
    with db.session_scope(factory) as s:  # as if the outbox had been lost: sync-cards still finds them
        s.query(CardUpdate).delete()
    report = card_review.sync_all(factory, registry)
    assert report.written == ["support@v1", "support@v2"]
    assert review_of(registry, "support@v2")["grades"] == 2


def test_review_lines_render_the_summary(factory, registry) -> None:  # noqa: ANN001
    ann = add_user(factory, "ann")
    add_queue(factory, "q", members=["ann"])
    put(factory, "q", 3, "support@v1", prefix="i")
    while grade_next(factory, "q", ann, 4) is not None:
        pass
    card_review.flush(factory, registry)
    lines = review_lines(review_of(registry, "support@v1"))
    assert lines[0].startswith("3 grades of 3/3 items by 1 reviewer(s)")
    assert any(line.strip().startswith("accuracy  n=3 (3 items)  mean 4.00") for line in lines)
    assert any("queue q (general)" in line and "eval runs run-1" in line for line in lines)
    assert review_lines({}) == ["none yet (no graded review items name this version)"]
    (odd,) = review_lines({"criteria": {"accuracy": {"n": 80}}})  # hand-written: shown, never a crash
    assert odd.startswith("unreadable (criteria.accuracy.items: Field required)") and '"n": 80' in odd


def test_sync_cards_cli_writes_the_cards(capsys, tmp_path: Path) -> None:  # noqa: ANN001
    from lorafleet.human_review.service import open_db

    from lorafleet.cli.main import main

    data = tmp_path / "data"
    reg = Registry(data / "registry")
    card = AdapterCard(name="support", version="v1", base=BaseModelRef(id="tiny"),
                       lora=LoraInfo(rank=8, alpha=16, target_modules=["q_proj"]))
    reg.register("support", write_fake_peft(tmp_path / "peft"), card)
    factory = open_db(ReviewSettings(data_dir=data))
    ann = add_user(factory, "ann")
    add_queue(factory, "q", members=["ann"])
    put(factory, "q", 2, "support@v1", prefix="i")
    put(factory, "q", 1, "gone@v3", prefix="g")
    while grade_next(factory, "q", ann, 5) is not None:
        pass
    factory.kw["bind"].dispose()

    def cli(*argv: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as info:
            main(["--data-dir", str(data), *argv])
        out, err = capsys.readouterr()
        return int(info.value.code or 0), out, err

    code, out, err = cli("review", "sync-cards", "--json")
    assert code == 0, err
    assert json.loads(out) == {"registry": str(data / "registry"), "written": ["support@v1"],
                               "not_in_registry": ["gone@v3"], "failed": {}}
    assert reg.resolve("support@v1").card.review["criteria"]["accuracy"]["mean"] == 5.0
    (tmp_path / "file").write_text("x")
    code, _, err = cli("review", "sync-cards", "--registry", str(tmp_path / "file"))
    assert code == 2 and "not a directory" in err and "Traceback" not in err


def test_migration_backfills_the_adapter_of_items_ingested_before(db_url: str) -> None:
    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config

    engine = db.make_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(db.MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
    queues = sa.table("queues", *(sa.column(c) for c in ("id", "name", "mode", "overlap", "token_hash",
                                                           "created_at")), sa.column("rubric", sa.JSON))
    old_items = sa.table("items", *(sa.column(c) for c in ("id", "queue_id", "ext_id", "public_id", "is_gold",
                                                             "created_at")), sa.column("data", sa.JSON))
    with engine.begin() as conn:
        conn.execute(queues.insert().values(id=1, name="q", mode="rubric", overlap=1, rubric={},
                                            token_hash="x", created_at=0.0))
        conn.execute(old_items.insert(), [
            {"id": 1, "queue_id": 1, "ext_id": "a", "public_id": "p1", "is_gold": False, "created_at": 0.0,
             "data": {"id": "a", "prompt": "p", "response": "r", "adapter": "support@v1"}},
            {"id": 2, "queue_id": 1, "ext_id": "b", "public_id": "p2", "is_gold": False, "created_at": 0.0,
             "data": {"id": "b", "prompt": "p", "response": "r"}}])
    db.migrate(engine)
    with engine.connect() as conn:
        rows = dict(conn.execute(sa.text("SELECT ext_id, adapter FROM items ORDER BY ext_id")).all())
    engine.dispose()
    assert rows == {"a": "support@v1", "b": None}
    factory = db.session_factory(db.make_engine(db_url))
    with db.session_scope(factory) as s:  # graded before the upgrade: its card gets written on first start
        assert card_outbox.pending(s) == [("support@v1", 1)]
    factory.kw["bind"].dispose()


def test_one_unwritable_card_never_stalls_the_others(factory, registry, monkeypatch) -> None:  # noqa: ANN001
    ann = add_user(factory, "ann")
    add_queue(factory, "q", members=["ann"])
    put(factory, "q", 1, "support@v1", prefix="a")
    put(factory, "q", 1, "support@v2", prefix="b")
    while grade_next(factory, "q", ann, 4) is not None:
        pass
    real = Registry.update_card_with

    def flaky(self, ref, fn):  # noqa: ANN001, ANN202
        if ref == "support@v1":
            raise TimeoutError("the registry lock is held")
        return real(self, ref, fn)

    monkeypatch.setattr(Registry, "update_card_with", flaky)
    report = card_review.flush(factory, registry)
    assert report.written == ["support@v2"] and "TimeoutError" in report.failed["support@v1"]
    assert review_of(registry, "support@v1") == {}
    monkeypatch.setattr(Registry, "update_card_with", real)
    assert card_review.flush(factory, registry).written == ["support@v1"]  # kept in the outbox, written later
    assert review_of(registry, "support@v1")["grades"] == 1


def test_eval_pairwise_items_name_the_version_on_each_side() -> None:
    """Before: A/B items carried no adapter, so no card could count them. Now the candidate's exact version,
    and metadata.served says which version answered each side."""
    from lorafleet.evaluate.client import Completion
    from lorafleet.evaluate.dataset import Sample
    from lorafleet.evaluate.review_push import review_items
    from lorafleet.evaluate.suite import ReviewSpec

    from lorafleet.formats import Message

    samples = [Sample(id="s1", messages=[Message(role="user", content="hi")], references=["hello"])]
    outputs = {"base": {"s1": Completion(output="yo", served_model="smollm2-135m-instruct")},
               "support@latest": {"s1": Completion(output="hello", served_model="support@v2")}}
    spec = ReviewSpec(pairwise=["base", "support@latest"], queue="eval")
    (item,) = review_items("run-9", "suite", spec, samples, outputs, [])
    assert item.adapter == "support@v2"
    assert item.metadata["served"] == {"base": "smollm2-135m-instruct", "support@latest": "support@v2"}
    outputs["support@latest"]["s1"] = Completion(output="hello")  # the endpoint named no model: unknown
    (item,) = review_items("run-9", "suite", spec, samples, outputs, [])
    assert item.adapter is None


def test_pairwise_grades_become_a_win_rate_per_version(factory, registry) -> None:  # noqa: ANN001
    from lorafleet.human_review.models import Grade, Item

    ann, ben = add_user(factory, "ann"), add_user(factory, "ben")
    add_queue(factory, "ab", pairwise=True, overlap=2, members=["ann", "ben"])
    served = {"base": "smollm2-135m-instruct", "support@latest": "support@v2"}
    rows = [ReviewItem(id=f"p{i}", prompt="q", responses={"base": "b", "support@latest": "t"}, adapter="support@v2",
                       source="eval", metadata={"run_id": "run-9", "pairwise": list(served), "served": served})
            for i in range(6)]
    with db.session_scope(factory) as s:
        crud.ingest(s, queue=crud.get_queue(s, name="ab"), items=rows)
    choices = ["support@latest"] * 7 + ["base"] * 2 + ["tie", "both_bad", "support@latest"]
    with db.session_scope(factory) as s:
        ids = [i.id for i in s.scalars(select(Item).order_by(Item.id))]
        for n, choice in enumerate(choices):
            s.add(Grade(queue_id=1, item_id=ids[n // 2], reviewer_id=(ann, ben)[n % 2], scores={}, choice=choice,
                        created_at=0.0))
    card_review.sync_all(factory, registry)
    review = review_of(registry, "support@v2")
    ab = review["pairwise"]["ab"]
    assert (ab["wins"], ab["losses"], ab["ties"], ab["both_bad"], ab["comparisons"]) == (8, 2, 1, 1, 12)
    assert ab["win_rate"] == 0.8 and ab["opponents"] == ["smollm2-135m-instruct"] and ab["reviewers"] == 2
    lo, hi = correlation.wilson_ci(8, 10)
    assert ab["win_rate_ci"] == [round(lo, 4), round(hi, 4)]
    assert review["grades"] == 0 and review["queues"] == {} and review["eval_runs"] == ["run-9"]
    lines = review_lines(review)
    assert any(line.startswith("  pairwise ab vs smollm2-135m-instruct: win rate 0.80") for line in lines)
