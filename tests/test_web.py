"""The web server on 127.0.0.1 with a real aiohttp client: sign-up pages, links from emails."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from aiohttp import web

from digest.app import serve
from digest.channels import send_all
from digest.cycle import render_snapshot
from digest.domain import Paper, Target
from digest.mail import OPTION_CONFIRM_SENT, OPTION_CONFIRMED
from digest.mail.signup import RateLimiter
from digest.summary import SUMMARY_KEY
from digest.web import SECURITY_HEADERS, WebServer, build_web_app
from storage.sql_store import SqlStore
from tests.fakes.arxiv_server import ArxivStandIn
from tests.fakes.smtp import EmailStack, email_settings, email_stack, smtp_server
from tests.local import free_port

ALICE = "alice@lab.example.org"
HOSTILE_KEYWORD = '<b>x</b> & "y"'


class Page(HTMLParser):
    """Forms, inputs, links and visible text of a page."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.forms: list[dict[str, str]] = []
        self.inputs: list[dict[str, str]] = []
        self.links: list[str] = []
        self.labels: dict[str, str] = {}
        self.text_chunks: list[str] = []
        self._label_for: str | None = None
        self._skip = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Record forms, inputs, links and label targets."""
        values = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(values)
        elif tag in {"input", "textarea", "button"}:
            self.inputs.append({"tag": tag, **values})
        elif tag == "a":
            self.links.append(values.get("href", ""))
        elif tag == "label":
            self._label_for = values.get("for")
        elif tag in {"style", "title"}:
            self._skip = True

    def handle_endtag(self, tag: str) -> None:
        """Close labels and skipped elements."""
        if tag == "label":
            self._label_for = None
        if tag in {"style", "title"}:
            self._skip = False

    def handle_data(self, data: str) -> None:
        """Visible text; label text by the id it labels."""
        if self._skip:
            return
        self.text_chunks.append(data)
        if self._label_for:
            self.labels[self._label_for] = self.labels.get(self._label_for, "") + data

    @property
    def text(self) -> str:
        """Visible text, whitespace collapsed."""
        return " ".join(" ".join(self.text_chunks).split())

    def checkboxes(self) -> dict[str, bool]:
        """Checkbox value -> checked."""
        return {
            i["value"]: "checked" in i
            for i in self.inputs
            if i.get("type") == "checkbox" and "value" in i
        }


@pytest.fixture
async def stack(sqlite_store: SqlStore) -> AsyncIterator[EmailStack]:
    """The email feature running with two tracked keywords and a hostile one."""
    for query in ("diffusion models", "anomaly detection", HOSTILE_KEYWORD):
        sqlite_store.add_keyword(query, from_config=True)
        sqlite_store.mark_backfilled(query, datetime(2025, 1, 1, tzinfo=UTC))
    async with email_stack(sqlite_store) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client without a cookie jar: every request stands alone, as mail providers do."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def get_page(http: aiohttp.ClientSession, url: str, status: int = 200) -> Page:
    """GET a page, check its status and security headers, parse it."""
    async with http.get(url, allow_redirects=False) as response:
        body = await response.text()
        assert response.status == status, body
        for name, value in SECURITY_HEADERS.items():
            assert response.headers[name] == value
        return Page(body)


async def post_page(
    http: aiohttp.ClientSession, url: str, data: object, status: int = 200
) -> tuple[Page, aiohttp.ClientResponse]:
    """POST a form, check the status, parse the page."""
    async with http.post(url, data=data, allow_redirects=False) as response:
        body = await response.text()
        assert response.status == status, body
        return Page(body), response


def link_in(stack: EmailStack, address: str, path: str, *, index: int = -1) -> str:
    """The first absolute link to `path` in the index-th plain-text email to `address`."""
    msg = stack.smtp.handler.to(address)[index].message
    body = msg.get_body(("plain",))
    assert body is not None
    found = re.search(rf"{re.escape(stack.url)}{path}\?token=\S+", body.get_content())
    assert found is not None, body.get_content()
    return found.group(0)


async def subscribe_and_confirm(
    stack: EmailStack, http: aiohttp.ClientSession, keywords: list[str]
) -> None:
    """Fill the form, follow the emailed link and press Confirm."""
    data = [("address", ALICE), *(("keyword", k) for k in keywords)]
    await post_page(http, f"{stack.url}/subscribe", data)
    confirm = await get_page(http, link_in(stack, ALICE, "/confirm"))
    [form] = confirm.forms
    token = next(i["value"] for i in confirm.inputs if i.get("name") == "token")
    await post_page(http, stack.url + form["action"], {"token": token})


def deliver_paper(stack: EmailStack, keyword: str, arxiv_id: str = "2501.00001") -> None:
    """Harvest one paper that matches `keyword` (a pending delivery for its subscribers)."""
    moment = datetime.now(UTC)
    paper = Paper(arxiv_id, 1, f"On {keyword}", ("Ada",), "Abstract.", moment, moment, "cs.LG")
    stack.store.commit_harvest(
        papers=[paper], matches={keyword: [arxiv_id]}, deliverable=[arxiv_id], now=moment
    )


async def send_digests(stack: EmailStack) -> None:
    """What the cycle's delivery step does for email targets."""
    for batch in stack.store.pending_batches(now=datetime.now(UTC) + timedelta(seconds=1)):
        outcomes = await send_all(stack.channel, batch)
        stack.store.record_outcomes(outcomes, now=datetime.now(UTC))


# -- pages -------------------------------------------------------------------------------------


async def test_healthz(stack: EmailStack, http: aiohttp.ClientSession) -> None:
    """/healthz answers JSON 200 when the database does."""
    async with http.get(f"{stack.url}/healthz") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ok"


async def test_subscribe_form_lists_tracked_keywords_escaped_and_labelled(
    stack: EmailStack, http: aiohttp.ClientSession
) -> None:
    """Each tracked keyword is a labelled checkbox; hostile text is escaped, not markup."""
    async with http.get(f"{stack.url}/subscribe") as response:
        raw = await response.text()
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    page = Page(raw)
    assert set(page.checkboxes()) == {"diffusion models", "anomaly detection", HOSTILE_KEYWORD}
    assert "<b>x</b>" not in raw
    assert "&lt;b&gt;x&lt;/b&gt; &amp; &#34;y&#34;" in raw
    for box in (i for i in page.inputs if i.get("type") == "checkbox"):
        assert page.labels[box["id"]].strip() == box["value"]
    email_input = next(i for i in page.inputs if i.get("name") == "address")
    assert email_input["type"] == "email"
    assert page.labels[email_input["id"]].strip() == "Email address"
    assert not any(i["tag"] == "textarea" for i in page.inputs)  # custom queries are off
    assert "<script" not in raw


async def test_custom_queries_field_only_when_allowed(sqlite_store: SqlStore) -> None:
    """email.allow_custom_queries adds the free-form field and accepts its queries."""
    async with (
        email_stack(sqlite_store, email={"allow_custom_queries": True}) as stack,
        aiohttp.ClientSession() as http,
    ):
        page = await get_page(http, f"{stack.url}/subscribe")
        assert any(i["tag"] == "textarea" and i["name"] == "queries" for i in page.inputs)
        data = {"address": ALICE, "queries": 'ti:"graph neural"\n\nquantum gravity\n'}
        await post_page(http, f"{stack.url}/subscribe", data)
        view = await stack.service.view(ALICE)
        assert set(view.pending) == {'ti:"graph neural"', "quantum gravity"}


async def test_bad_input_re_shows_the_form_with_the_reason(
    stack: EmailStack, http: aiohttp.ClientSession
) -> None:
    """A bad address or an untracked keyword: 400, the reason, the values kept (escaped)."""
    page, _ = await post_page(
        http,
        f"{stack.url}/subscribe",
        [("address", 'not-an-address"><script>'), ("keyword", "diffusion models")],
        status=400,
    )
    assert "is not a usable email address" in page.text
    address = next(i for i in page.inputs if i.get("name") == "address")
    assert address["value"] == 'not-an-address"><script>'
    assert address["aria-describedby"] == "form-error"
    assert page.checkboxes()["diffusion models"] is True
    page, _ = await post_page(
        http, f"{stack.url}/subscribe", {"address": ALICE, "keyword": "forged"}, status=400
    )
    assert "not one of the tracked keywords" in page.text
    page, _ = await post_page(http, f"{stack.url}/subscribe", {"address": ALICE}, status=400)
    assert "Choose at least one keyword" in page.text
    assert stack.smtp.messages == []


async def test_subscribe_confirm_flow_over_http(
    stack: EmailStack, http: aiohttp.ClientSession
) -> None:
    """POST the form, GET the emailed link (changes nothing), POST Confirm: subscribed."""
    page, _ = await post_page(
        http, f"{stack.url}/subscribe", [("address", ALICE), ("keyword", "diffusion models")]
    )
    assert "Check your inbox" in page.text
    link = link_in(stack, ALICE, "/confirm")
    confirm = await get_page(http, link)
    assert "diffusion models" in confirm.text
    assert not (await stack.service.view(ALICE)).active  # opening the link is not consent
    token = next(i["value"] for i in confirm.inputs if i.get("name") == "token")
    done, _ = await post_page(http, f"{stack.url}/confirm", {"token": token})
    assert "You are subscribed" in done.text
    assert (await stack.service.view(ALICE)).active == ("diffusion models",)
    again, _ = await post_page(http, f"{stack.url}/confirm", {"token": token})
    assert "Already confirmed" in again.text
    assert any(href.startswith("/manage?token=") for href in done.links)


async def test_the_form_is_rate_limited_per_client(sqlite_store: SqlStore) -> None:
    """Past the per-client limit: 429 with Retry-After, and no email."""
    sqlite_store.add_keyword("diffusion models")
    limiter = RateLimiter(limit=2, window=600)
    async with (
        email_stack(sqlite_store, form_limiter=limiter) as stack,
        aiohttp.ClientSession() as http,
    ):
        for i in range(2):
            data = {"address": f"r{i}@lab.example.org", "keyword": "diffusion models"}
            await post_page(http, f"{stack.url}/subscribe", data)
        data = {"address": "r9@lab.example.org", "keyword": "diffusion models"}
        page, response = await post_page(http, f"{stack.url}/subscribe", data, status=429)
        assert 0 < int(response.headers["Retry-After"]) <= 600
        assert "Too many" in page.text
        assert stack.smtp.handler.to("r9@lab.example.org") == []


async def test_digest_links_work_against_the_running_server(
    stack: EmailStack, http: aiohttp.ClientSession
) -> None:
    """List-Unsubscribe one-click POST (no cookies) unsubscribes, idempotently; manage works."""
    await subscribe_and_confirm(stack, http, ["diffusion models"])
    deliver_paper(stack, "diffusion models")
    await send_digests(stack)
    digest = stack.smtp.handler.to(ALICE)[-1].message
    assert digest["Subject"].startswith("1 new arXiv paper")
    https = re.findall(r"<([^>]+)>", digest["List-Unsubscribe"])[0]
    assert https.startswith(f"{stack.url}/unsubscribe?token=")

    # The manage link from the HTML part: keywords ticked, change them.
    html = digest.get_body(("html",)).get_content()  # type: ignore[union-attr]
    manage_url = next(u for u in Page(html).links if u.startswith(f"{stack.url}/manage?"))
    manage = await get_page(http, manage_url)
    assert manage.checkboxes()["diffusion models"] is True
    assert manage.checkboxes()["anomaly detection"] is False
    token = next(i["value"] for i in manage.inputs if i.get("name") == "token")
    saved, _ = await post_page(
        http,
        f"{stack.url}/manage",
        [("token", token), ("keyword", "diffusion models"), ("keyword", "anomaly detection")],
    )
    assert "Your keywords are saved." in saved.text
    assert set((await stack.service.view(ALICE)).active) == {
        "diffusion models",
        "anomaly detection",
    }

    # GET shows a button and changes nothing.
    shown = await get_page(http, https)
    assert [f["method"] for f in shown.forms] == ["post"]
    assert (await stack.service.view(ALICE)).active
    # RFC 8058: the provider POSTs List-Unsubscribe=One-Click to the URL, with no cookies.
    for _ in range(2):
        page, _ = await post_page(http, https, {"List-Unsubscribe": "One-Click"})
        assert "You are unsubscribed" in page.text
    assert stack.store.list_subscriptions(Target("email", ALICE)) == []
    assert stack.store.get_target_option(Target("email", ALICE), OPTION_CONFIRMED) is None
    deliver_paper(stack, "diffusion models", "2501.00002")
    before = len(stack.smtp.messages)
    await send_digests(stack)
    assert len(stack.smtp.messages) == before  # nothing more is sent


async def test_one_click_accepts_multipart_form_data(
    stack: EmailStack, http: aiohttp.ClientSession
) -> None:
    """RFC 8058 allows multipart/form-data bodies too."""
    await subscribe_and_confirm(stack, http, ["diffusion models"])
    url = f"{stack.url}/unsubscribe?token={stack.service.unsubscribe_token(ALICE)}"
    form = aiohttp.FormData()
    form.add_field("List-Unsubscribe", "One-Click")
    form.add_field("ignored", b"\x00\x01", filename="x.bin")
    page, _ = await post_page(http, url, form)
    assert "You are unsubscribed" in page.text
    assert stack.store.list_subscriptions(Target("email", ALICE)) == []


async def test_manage_page_can_unsubscribe_everything(
    stack: EmailStack, http: aiohttp.ClientSession
) -> None:
    """Saving with no keyword ticked, or the manage page's button, ends the subscription."""
    await subscribe_and_confirm(stack, http, ["diffusion models"])
    manage = await get_page(http, f"{stack.url}/manage?token={stack.service.manage_token(ALICE)}")
    unsubscribe_form = next(f for f in manage.forms if f["action"].startswith("/unsubscribe"))
    page, _ = await post_page(
        http, stack.url + unsubscribe_form["action"], {"List-Unsubscribe": "One-Click"}
    )
    assert "You are unsubscribed" in page.text
    await subscribe_and_confirm(stack, http, ["diffusion models"])
    token = stack.service.manage_token(ALICE)
    page, _ = await post_page(http, f"{stack.url}/manage", {"token": token})
    assert "You are unsubscribed" in page.text
    assert stack.store.list_subscriptions(Target("email", ALICE)) == []


@pytest.mark.parametrize("path", ["/confirm", "/manage", "/unsubscribe"])
async def test_bad_tokens_get_a_clear_400_page(
    stack: EmailStack, http: aiohttp.ClientSession, path: str
) -> None:
    """Missing, forged and wrong-purpose tokens: 400 with an explanation, nothing changes."""
    wrong = stack.service.manage_token(ALICE) if path != "/manage" else "abc.def"
    for query in ("", "?token=", "?token=abc.def", f"?token={wrong}"):
        page = await get_page(http, f"{stack.url}{path}{query}", status=400)
        assert "This link does not work" in page.text
    _, response = await post_page(http, f"{stack.url}{path}?token=x.y", {"token": "x.y"}, 400)
    assert response.status == 400


async def test_app_without_email_serves_health_and_mounted_routes(sqlite_store: SqlStore) -> None:
    """Email off: sign-up pages are 404; extra routes (the Slack endpoint) are mounted."""

    async def slack_events(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    settings = email_settings(None, email={"enabled": False})
    app = build_web_app(
        settings=settings, store=sqlite_store, routes=[web.post("/slack/events", slack_events)]
    )
    async with (
        WebServer(app=app, host="127.0.0.1", port=0) as server,
        aiohttp.ClientSession() as http,
    ):
        assert server.port != 0
        async with http.get(f"{server.url}/subscribe") as response:
            assert response.status == 404
        async with http.post(f"{server.url}/slack/events") as response:
            assert (await response.json()) == {"ok": True}
        async with http.get(f"{server.url}/healthz") as response:
            assert response.status == 200


async def test_serve_runs_the_web_server_with_email_sign_up(tmp_path: Path) -> None:
    """`daily-papers serve` with email on: /healthz and the sign-up form answer on web.port."""
    port = free_port()
    with ArxivStandIn([]) as arxiv:
        async with smtp_server() as smtp:
            settings = email_settings(
                smtp,
                base_url=f"http://127.0.0.1:{port}",
                service={"data_dir": str(tmp_path)},
                arxiv={"api_url": arxiv.url, "retries": 0},
                keywords={"queries": ["diffusion models"]},
                readme={"enabled": False},
                web={"port": port},
            )
            stop = asyncio.Event()
            task = asyncio.create_task(serve(settings, stop=stop))
            try:
                async with aiohttp.ClientSession() as http:
                    for _ in range(200):  # up to ~10 s for start-up on a loaded machine
                        try:
                            async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                                assert response.status == 200
                                break
                        except aiohttp.ClientConnectionError:
                            await asyncio.sleep(0.05)
                    else:
                        pytest.fail("serve did not start the web server")
                    page = await get_page(http, f"http://127.0.0.1:{port}/subscribe")
                    assert "diffusion models" in page.checkboxes()
            finally:
                stop.set()
                await asyncio.wait_for(task, 10)


async def test_old_confirm_link_after_unsubscribing_confirms_nothing(
    stack: EmailStack, http: aiohttp.ClientSession
) -> None:
    """Unsubscribed, then the old confirmation link is used: nothing is re-activated."""
    await subscribe_and_confirm(stack, http, ["diffusion models"])
    await stack.service.unsubscribe(stack.service.unsubscribe_token(ALICE))
    link = link_in(stack, ALICE, "/confirm", index=0)
    token = link.rsplit("token=", 1)[1]
    page, _ = await post_page(http, f"{stack.url}/confirm", {"token": token})
    assert "Nothing to confirm" in page.text
    assert stack.store.list_subscriptions(Target("email", ALICE)) == []


# -- links that do not work, re-subscribing, private queries (issue 13) ------------------------


def _non_ascii_signature(token: str) -> str:
    """The token with one character of its signature replaced by a non-ASCII one."""
    body, _, mac = token.partition(".")
    return f"{body}.é{mac[1:]}"


async def test_a_non_ascii_signature_gets_the_bad_link_page_on_every_token_route(
    stack: EmailStack, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """`é` in a token's signature: the same 400 page on all six token routes, no traceback."""
    service = stack.service
    tokens = {
        "/confirm": _non_ascii_signature(
            service.signer.sign("confirm", ALICE, now=service.now(), ttl=timedelta(hours=1))
        ),
        "/manage": _non_ascii_signature(service.manage_token(ALICE)),
        "/unsubscribe": _non_ascii_signature(service.unsubscribe_token(ALICE)),
        "/day": _non_ascii_signature(
            service.signer.sign("day", ALICE, now=service.now(), ttl=None, day="2025-01-11")
        ),
    }
    for path, token in tokens.items():
        url = f"{stack.url}{path}?token={quote(token)}"
        page = await get_page(http, url, status=400)
        assert "This link does not work" in page.text
        if path == "/day":
            continue  # a page to read, no form
        form, _ = await post_page(http, url, {"token": token}, status=400)
        assert "This link does not work" in form.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_broken_unsubscribe_link_says_what_to_do_and_never_offers_to_subscribe(
    stack: EmailStack, http: aiohttp.ClientSession
) -> None:
    """Each kind of link explains itself: unsubscribe links never expire, confirm ones do."""
    unsubscribe = stack.service.unsubscribe_token(ALICE)[:-3] + "xyz"
    page = await get_page(http, f"{stack.url}/unsubscribe?token={unsubscribe}", status=400)
    assert "never expire" in page.text
    assert "Unsubscribe link at the bottom of any digest" in page.text
    assert "/subscribe" not in page.links
    assert "stop working after a while" not in page.text
    confirm = await get_page(http, f"{stack.url}/confirm?token=abc.def", status=400)
    assert "Confirmation links work for 48 hours" in confirm.text
    assert "/subscribe" in confirm.links
    manage = await get_page(http, f"{stack.url}/manage?token=abc.def", status=400)
    assert "every digest carries a fresh one" in manage.text


async def test_an_old_manage_link_after_unsubscribing_needs_a_new_confirmation(
    stack: EmailStack, http: aiohttp.ClientSession
) -> None:
    """Unsubscribed, then the manage link of an old digest: nothing starts until re-confirmed."""
    await subscribe_and_confirm(stack, http, ["diffusion models"])
    old_manage = stack.service.manage_token(ALICE)  # what the last digest carried
    await stack.service.unsubscribe(stack.service.unsubscribe_token(ALICE))
    # Hours later (the first confirmation's hourly limit has passed).
    earlier = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    stack.store.set_target_option(Target("email", ALICE), OPTION_CONFIRM_SENT, earlier)
    mails_before = len(stack.smtp.handler.to(ALICE))

    page, _ = await post_page(
        http, f"{stack.url}/manage", [("token", old_manage), ("keyword", "diffusion models")]
    )
    assert "Check your inbox" in page.text
    view = await stack.service.view(ALICE)
    assert (view.active, view.pending, view.confirmed) == ((), ("diffusion models",), False)
    deliver_paper(stack, "diffusion models")
    await send_digests(stack)
    mails = stack.smtp.handler.to(ALICE)[mails_before:]
    assert [m.message["Subject"] for m in mails] == ["Confirm your arXiv digest subscription"]

    # The manage page itself says that saving will ask for a confirmation first.
    shown = await get_page(http, f"{stack.url}/manage?token={old_manage}")
    assert "not confirmed" in shown.text
    # Clicking the new link starts digests again.
    confirm = await get_page(http, link_in(stack, ALICE, "/confirm"))
    token = next(i["value"] for i in confirm.inputs if i.get("name") == "token")
    await post_page(http, f"{stack.url}/confirm", {"token": token})
    assert (await stack.service.view(ALICE)).active == ("diffusion models",)


async def test_a_strangers_own_query_stays_off_the_public_page_and_the_readme(
    sqlite_store: SqlStore, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """allow_custom_queries: a confirmed free-form query is private until the operator adds it."""
    sqlite_store.add_keyword("diffusion models", from_config=True)
    async with email_stack(
        sqlite_store,
        email={"allow_custom_queries": True},
        service={"data_dir": str(tmp_path)},
    ) as running:
        data = [("address", ALICE), ("keyword", "diffusion models"), ("queries", "my secret topic")]
        await post_page(http, f"{running.url}/subscribe", data)
        confirm = await get_page(http, link_in(running, ALICE, "/confirm"))
        token = next(i["value"] for i in confirm.inputs if i.get("name") == "token")
        await post_page(http, f"{running.url}/confirm", {"token": token})
        assert set((await running.service.view(ALICE)).active) == {
            "diffusion models",
            "my secret topic",
        }

        form = await get_page(http, f"{running.url}/subscribe")
        assert list(form.checkboxes()) == ["diffusion models"]
        await render_snapshot(settings=running.settings, store=sqlite_store, now=datetime.now(UTC))
        readme = running.settings.readme_path.read_text(encoding="utf-8")
        assert "## diffusion models" in readme
        assert "secret" not in readme
        # Its owner still sees (and keeps) it on the manage page, custom queries on or off.
        manage = await get_page(
            http, f"{running.url}/manage?token={running.service.manage_token(ALICE)}"
        )
        assert manage.checkboxes() == {"diffusion models": True, "my secret topic": True}

        sqlite_store.add_keyword("My Secret Topic")  # the operator publishes it
        form = await get_page(http, f"{running.url}/subscribe")
        assert "my secret topic" in form.checkboxes()
        await render_snapshot(settings=running.settings, store=sqlite_store, now=datetime.now(UTC))
        assert "## my secret topic" in running.settings.readme_path.read_text(encoding="utf-8")


async def test_a_digest_too_long_for_one_email_links_to_the_readers_whole_day(
    stack: EmailStack, http: aiohttp.ClientSession
) -> None:
    """300 papers: the "and N more" link opens every paper mailed that day, and only that."""
    await subscribe_and_confirm(stack, http, ["diffusion models"])
    moment = datetime.now(UTC)
    papers = [
        Paper(
            f"2501.{n:05d}",
            1,
            f"Diffusion paper number {n:03d}",
            ("Ada",),
            "Abstract words. " * 60,
            moment - timedelta(minutes=n),
            moment - timedelta(minutes=n),
            "cs.LG",
        )
        for n in range(300)
    ]
    ids = [p.arxiv_id for p in papers]
    stack.store.commit_harvest(
        papers=papers, matches={"diffusion models": ids}, deliverable=ids, now=moment
    )
    await send_digests(stack)
    digest = stack.smtp.handler.to(ALICE)[-1].message
    html = digest.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert len(html.encode("utf-8")) < 100_000
    email_page = Page(html)
    more = [u for u in email_page.links if u.startswith(f"{stack.url}/day?token=")]
    assert more
    shown = sum(f"Diffusion paper number {n:03d}" in email_page.text for n in range(300))
    assert shown < 300
    assert f"and {300 - shown} more papers for diffusion models" in email_page.text

    day = await get_page(http, more[0])
    assert day.text.count("Diffusion paper number") == 300
    assert "300 new papers mailed to alice@lab.example.org" in day.text
    assert "/manage?token=" in " ".join(day.links)
    # Nobody else's day: the token is bound to the address and the day, and signed.
    token = more[0].rsplit("token=", 1)[1]
    await get_page(http, f"{stack.url}/day?token={token[:-2]}xx", status=400)
    other_day = stack.service.signer.sign(
        "day", ALICE, now=stack.service.now(), ttl=timedelta(days=1), day="2020-01-01"
    )
    empty = await get_page(http, f"{stack.url}/day?token={other_day}")
    assert "No papers were mailed" in empty.text


@pytest.mark.parametrize("tldr", [True, False])
async def test_the_day_page_shows_what_the_digest_showed(
    sqlite_store: SqlStore, http: aiohttp.ClientSession, tldr: bool
) -> None:
    """/day shows each paper's stored translation and, with [summary] on, its TL;DR, as the
    digest did (one rule: digest.summary.with_stored_texts); with [summary] off, no TL;DR."""
    sqlite_store.add_keyword("diffusion models", from_config=True)
    sqlite_store.mark_backfilled("diffusion models", datetime(2025, 1, 1, tzinfo=UTC))
    async with email_stack(
        sqlite_store,
        summary={"enabled": tldr},
        translation={"language": "zh", "base_url": "http://127.0.0.1:9/v1"},
    ) as running:
        await subscribe_and_confirm(running, http, ["diffusion models"])
        moment = datetime.now(UTC)
        paper = Paper(
            "2501.00042", 1, "Diffusion things", ("Ada",), "Words.", moment, moment, "cs.LG"
        )
        sqlite_store.commit_harvest(
            papers=[paper],
            matches={"diffusion models": [paper.arxiv_id]},
            deliverable=[paper.arxiv_id],
            now=moment,
        )
        sqlite_store.save_translation(paper.arxiv_id, "zh", "扩散的东西", "词语。")
        sqlite_store.save_translation(
            paper.arxiv_id, SUMMARY_KEY, "", "Diffusion, made <b>fast</b>."
        )
        await send_digests(running)
        day_token = running.service.signer.sign(
            "day",
            ALICE,
            now=running.service.now(),
            ttl=timedelta(days=1),
            day=moment.astimezone(ZoneInfo(running.settings.service.timezone)).date().isoformat(),
        )
        day = await get_page(http, f"{running.url}/day?token={day_token}")
        assert "扩散的东西" in day.text
        # Escaped: as markup, the visible text would read "made fast".
        assert ("TL;DR: Diffusion, made <b>fast</b>." in day.text) is tldr
