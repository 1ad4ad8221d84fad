"""Browser-facing pages through HTTP: auth, CSRF, roles, queue access, escaping, idempotent submit."""

from __future__ import annotations

from tests.unit.human_review.conftest import PASSWORD, add_queue, add_user, csrf_of, ingest, items, login

FORM = {"score_relevance": "4", "score_accuracy": "4", "score_coherence": "4", "score_safety": "5"}
XSS = '<script>alert("x")</script><img src=x onerror="alert(1)">'


def test_session_cookie_is_httponly_and_samesite(client, factory) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    token = csrf_of(client.get("/login").text)
    r = client.post("/login", data={"name": "ann", "password": PASSWORD, "csrf_token": token}, follow_redirects=False)
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


def test_pages_need_a_login(client) -> None:  # noqa: ANN001
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"


def test_forms_without_the_csrf_token_are_rejected(client, factory) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    client.get("/login")
    assert client.post("/login", data={"name": "ann", "password": PASSWORD}).status_code == 403
    csrf = login(client, "ann")
    add_queue(factory, "q", members=["ann"])
    ingest(client, "q", items(1))
    page = client.get("/q/q/next")
    assert client.post(page.url.path + "/grade", data=FORM).status_code == 403
    assert client.post(page.url.path + "/grade", data={**FORM, "csrf_token": "forged"}).status_code == 403
    assert client.post("/logout").status_code == 403
    assert client.post(page.url.path + "/grade", data={**FORM, "csrf_token": csrf}).status_code == 200


def test_login_is_rate_limited(client, factory) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    token = csrf_of(client.get("/login").text)
    codes = [client.post("/login", data={"name": "ann", "password": "wrong-password", "csrf_token": token}).status_code
             for _ in range(6)]
    assert codes == [401] * 5 + [429]
    # even the right password waits now
    r = client.post("/login", data={"name": "ann", "password": PASSWORD, "csrf_token": token}, follow_redirects=False)
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0


def test_reviewers_see_only_their_queues_and_no_admin_pages(client, factory) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    add_queue(factory, "mine", members=["ann"])
    add_queue(factory, "secret-project")
    ingest(client, "secret-project", items(1))
    login(client, "ann")
    home = client.get("/").text
    assert "mine" in home and "secret-project" not in home
    assert client.get("/q/secret-project/next").status_code == 404
    assert client.get("/admin/q/mine").status_code == 403
    assert client.get("/admin/q/secret-project").status_code == 403


def test_item_urls_are_opaque_and_scoped_to_their_queue(client, factory) -> None:  # noqa: ANN001
    add_user(factory, "boss", role="admin")
    add_queue(factory, "a")
    add_queue(factory, "b")
    ingest(client, "a", items(1))
    login(client, "boss")
    page = client.get("/q/a/next")
    public_id = page.url.path.rsplit("/", 1)[-1]
    assert len(public_id) == 24 and not public_id.isdigit()
    assert client.get(f"/q/b/items/{public_id}").status_code == 404  # another queue's item id does not resolve


def test_model_output_is_escaped(client, factory) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    add_queue(factory, "q", members=["ann"])
    ingest(client, "q", [{"id": "x", "prompt": XSS, "response": XSS, "reference": XSS}])
    login(client, "ann")
    html = client.get("/q/q/next").text
    assert "<script>alert" not in html and "<img src=x" not in html
    assert html.count("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;") == 3


def test_double_submit_and_back_button_never_create_two_grades(client, factory) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    add_queue(factory, "q", overlap=2, members=["ann"])
    ingest(client, "q", items(2))
    csrf = login(client, "ann")
    page = client.get("/q/q/next")
    assert client.get("/q/q/next").url.path == page.url.path  # refresh: same item
    for _ in range(3):
        r = client.post(page.url.path + "/grade", data={**FORM, "csrf_token": csrf}, follow_redirects=False)
        assert r.status_code == 303
    # back button: the graded item's page now redirects to the next one, never the same item
    nxt = client.get(page.url.path)
    assert nxt.url.path != page.url.path
    stats = client.get("/api/v1/queues/q/stats", headers={"Authorization": "Bearer rva_test_admin_token"}).json()
    assert stats["queue"]["grades"] == 1


def test_pairwise_page_is_blind(client, factory) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    add_queue(factory, "pq", pairwise=True, members=["ann"])
    ingest(client, "pq", [{**it, "adapter": "support@v2"} for it in items(1, pairwise=True)])
    login(client, "ann")
    html = client.get("/q/pq/next").text
    assert "Response A" in html and "Response B" in html
    assert "support@v2" not in html and "base answer" in html and "tuned answer" in html


def test_logout_releases_the_lease(client, factory) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    add_user(factory, "ben")
    add_queue(factory, "q", members=["ann", "ben"])
    ingest(client, "q", items(1))
    csrf = login(client, "ann")
    held = client.get("/q/q/next").url.path
    client.post("/logout", data={"csrf_token": csrf})
    login(client, "ben")
    assert client.get("/q/q/next").url.path == held


def test_the_open_page_renews_its_lease_with_the_csrf_header(client, factory) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    add_queue(factory, "q", members=["ann"])
    ingest(client, "q", items(1))
    csrf = login(client, "ann")
    page = client.get("/q/q/next")
    assert client.post(page.url.path + "/renew").status_code == 403
    assert client.post(page.url.path + "/renew", headers={"X-CSRF-Token": csrf}).json() == {"ok": True}


def test_admin_page_shows_progress_agreement_and_adjudication(client, factory) -> None:  # noqa: ANN001
    add_user(factory, "boss", role="admin")
    add_user(factory, "ann")
    add_queue(factory, "q", overlap=2, members=["ann"])
    ingest(client, "q", [{"id": "<b>odd-id</b>", "prompt": "p", "response": "r"}])
    for name, level in (("ann", "1"), ("boss", "5")):
        client.cookies.clear()
        csrf = login(client, name)
        page = client.get("/q/q/next")
        client.post(page.url.path + "/grade", data={**FORM, "score_accuracy": level, "csrf_token": csrf})
    html = client.get("/admin/q/q").text
    assert "2/2 grades" in html and "Krippendorff" in html and "To adjudicate" in html
    assert "accuracy ±4" in html and "&lt;b&gt;odd-id&lt;/b&gt;" in html  # item ids are escaped too


def test_a_form_that_does_not_fit_the_rubric_is_a_400_not_a_crash(client, factory) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    add_queue(factory, "pq", pairwise=True, members=["ann"])
    add_queue(factory, "q", members=["ann"])
    ingest(client, "pq", items(1, pairwise=True))
    ingest(client, "q", items(1))
    csrf = login(client, "ann")
    page = client.get("/q/pq/next")
    assert client.post(page.url.path + "/grade", data={"choice": "Z", "csrf_token": csrf}).status_code == 400
    page = client.get("/q/q/next")
    r = client.post(page.url.path + "/grade", data={**FORM, "score_safety": "five", "csrf_token": csrf})
    assert r.status_code == 400 and "Traceback" not in r.text
