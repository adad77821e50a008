"""Subscribe -> confirm -> receive digest -> one-click unsubscribe, in a real headless chromium.

Debian's chromium driven by Playwright (never `playwright install`); the digest comes from the
real daily cycle against the arXiv stand-in, through the real EmailChannel to aiosmtpd. The
digest HTML is screenshotted into tests/artifacts/ (desktop, phone, dark mode) for people to
look at; the checks themselves are made in the browser (layout width, colours, links).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from digest.arxiv_source import ArxivSource
from digest.cycle import run_cycle
from digest.domain import Batch, Delivery, Target
from digest.mail.links import EmailLinks
from digest.mail.render import render_digest
from digest.query import parse_query
from storage.sql_store import SqlStore
from tests.fakes.arxiv_server import ArxivStandIn
from tests.fakes.smtp import email_settings, email_stack
from tests.reference_digest import REFERENCE_LANGUAGE, load_reference_digest

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("DAILY_PAPERS_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HAVE_CHROMIUM = CHROMIUM.exists()  # checked once at import, not inside the event loop
ARTIFACTS = Path(__file__).parent / "artifacts"
ALICE = "alice@lab.example.org"
KEYWORD = "multimodal"
SIGN_UP_TIME = datetime(2025, 1, 11, 1, 0, tzinfo=UTC)
CYCLE_TIME = datetime(2025, 1, 11, 2, 0, tzinfo=UTC)  # the reference papers are from Jan 10
PHONE = {"width": 390, "height": 844}  # a common phone viewport in CSS pixels


@dataclass
class Clock:
    """A settable clock shared by the web pages and the cycle."""

    moment: datetime

    def __call__(self) -> datetime:
        return self.moment


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's chromium, headless, through Playwright."""
    if not HAVE_CHROMIUM:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (./scripts/test does)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


async def no_sideways_scroll(page: Page) -> bool:
    """True when the page fits the viewport's width (nothing to scroll sideways on a phone)."""
    return bool(
        await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    )


async def background_of(page: Page, selector: str) -> tuple[int, int, int]:
    """The computed background colour of the first element matching `selector`."""
    css = await page.eval_on_selector(selector, "e => getComputedStyle(e).backgroundColor")
    r, g, b = (int(v) for v in re.findall(r"\d+", css)[:3])
    return r, g, b


async def screenshot_digest(browser: Browser, html: str, name: str) -> None:
    """Write desktop, phone and dark-mode screenshots of an email's HTML; check phone fit."""
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"{name}.html").write_text(html, encoding="utf-8")
    for variant, options in {
        "desktop": {"viewport": {"width": 1024, "height": 900}},
        "phone": {"viewport": PHONE, "device_scale_factor": 2, "is_mobile": True},
        "dark": {"viewport": PHONE, "color_scheme": "dark"},
    }.items():
        context = await browser.new_context(**options)  # type: ignore[arg-type]
        page = await context.new_page()
        await page.set_content(html)
        # The whole page on the desktop; the first screen on phones (what a reader sees when
        # opening the mail, and small enough to look at and fast to write).
        await page.screenshot(
            path=str(ARTIFACTS / f"{name}-{variant}.png"), full_page=variant == "desktop"
        )
        if variant != "desktop":
            assert await no_sideways_scroll(page), f"{name} scrolls sideways on a phone"
        card = await background_of(page, ".card")
        if variant == "dark":
            assert sum(card) < 3 * 80, card  # dark card in dark mode
        else:
            assert sum(card) > 3 * 230, card
        await context.close()


async def test_subscribe_confirm_digest_and_one_click_unsubscribe(
    browser: Browser, sqlite_store: SqlStore, tmp_path: Path
) -> None:
    """A reader signs up in the browser, gets the cycle's digest, and leaves with one click."""
    clock = Clock(SIGN_UP_TIME)
    entries = load_reference_digest()
    with ArxivStandIn([]) as arxiv:
        async with email_stack(
            sqlite_store,
            clock=clock,
            service={"data_dir": str(tmp_path)},
            arxiv={"api_url": arxiv.url, "categories": ["cs.CV"], "retries": 0},
            keywords={"queries": [KEYWORD]},
            readme={"enabled": False},
            delivery={"retry_base_minutes": 0},
        ) as stack:
            sqlite_store.add_keyword(KEYWORD, from_config=True)
            context = await browser.new_context()
            page = await context.new_page()

            # 1. Sign up on the form.
            await page.goto(f"{stack.url}/subscribe")
            await page.get_by_label("Email address").fill(ALICE)
            await page.get_by_label(KEYWORD).check()
            await page.get_by_role("button", name="Send confirmation link").click()
            await page.get_by_role("heading", name="Check your inbox").wait_for()
            [confirmation] = stack.smtp.handler.to(ALICE)

            # 2. Follow the emailed link and confirm.
            body = confirmation.message.get_body(("plain",))
            assert body is not None
            link = re.search(r"http://\S+/confirm\?token=\S+", body.get_content())
            assert link is not None
            await page.goto(link.group(0))
            await page.get_by_role("button", name="Confirm subscription").click()
            await page.get_by_role("heading", name="You are subscribed").wait_for()
            assert KEYWORD in await page.inner_text("main")

            # 3. arXiv announces papers; the daily cycle mails the digest.
            arxiv.add_papers(e.paper for e in entries)
            clock.moment = CYCLE_TIME
            with ArxivSource.from_settings(stack.settings) as source:
                report = await run_cycle(
                    settings=stack.settings,
                    store=sqlite_store,
                    source=source,
                    channels={"email": stack.channel},
                    now=clock,
                )
            assert report.ok, report.error
            digests = [m for m in stack.smtp.handler.to(ALICE) if m is not confirmation]
            assert len(digests) == 1
            digest = digests[0].message
            html_part = digest.get_body(("html",))
            assert html_part is not None
            html = html_part.get_content()
            expected = [e.paper for e in entries if parse_query(KEYWORD).matches(e.paper)]
            assert expected
            assert digest["Subject"].startswith(f"{len(expected)} new arXiv paper")
            await screenshot_digest(browser, html, "digest")

            # Every paper's title links to arXiv in the rendered digest.
            await page.set_content(html)
            for paper in expected:
                href = await page.get_by_role("link", name=paper.title, exact=True).get_attribute(
                    "href"
                )
                assert href == f"https://arxiv.org/abs/{paper.versioned_id}"

            # 4. One click: the digest's Unsubscribe link, then the button on the page.
            await page.get_by_role("link", name="Unsubscribe", exact=True).click()
            await page.get_by_role("button", name="Unsubscribe").click()
            await page.get_by_role("heading", name="You are unsubscribed").wait_for()
            assert sqlite_store.list_subscriptions(Target("email", ALICE)) == []
            await context.close()

            # A second cycle sends nothing more to the address.
            with ArxivSource.from_settings(stack.settings) as source:
                await run_cycle(
                    settings=stack.settings,
                    store=sqlite_store,
                    source=source,
                    channels={"email": stack.channel},
                    now=clock,
                )
            assert len(stack.smtp.handler.to(ALICE)) == 2


async def test_translated_digest_reads_well_on_a_phone_and_in_dark_mode(
    browser: Browser,
) -> None:
    """The reference digest with its Chinese lines renders without sideways scrolling."""
    entries = load_reference_digest()
    batch = Batch(
        target=Target("email", ALICE),
        deliveries=tuple(Delivery(1, "multimodal models", e.paper) for e in entries),
        language=REFERENCE_LANGUAGE,
        translations={e.paper.arxiv_id: (e.title_zh, e.abstract_zh) for e in entries},
    )
    links = EmailLinks.from_settings(email_settings(None, base_url="https://papers.lab.org"))
    rendered = render_digest(
        batch, links=links, now=CYCLE_TIME, timezone="UTC", list_name="papers.lab.org"
    )
    await screenshot_digest(browser, rendered.html, "digest-translated")


async def test_a_300_paper_digest_fits_gmail_and_keeps_its_footer_on_every_screen(
    browser: Browser,
) -> None:
    """300 papers: under 100,000 bytes of HTML, "and N more" links, footer reachable on both."""
    reference = load_reference_digest()
    keywords = ("multimodal models", "vision language models")
    deliveries: list[Delivery] = []
    translations: dict[str, tuple[str, str]] = {}
    for n in range(300):
        entry = reference[n % len(reference)]
        arxiv_id = f"2501.{10000 + n}"
        moment = CYCLE_TIME - timedelta(minutes=n)
        paper = replace(
            entry.paper,
            arxiv_id=arxiv_id,
            title=f"{entry.paper.title} ({n + 1})",
            published=moment,
            updated=moment,
        )
        deliveries.append(Delivery(1 + n % 2, keywords[n % 2], paper))
        translations[arxiv_id] = (entry.title_zh, entry.abstract_zh)
    batch = Batch(
        target=Target("email", ALICE),
        deliveries=tuple(deliveries),
        language=REFERENCE_LANGUAGE,
        translations=translations,
    )
    links = EmailLinks.from_settings(email_settings(None, base_url="https://papers.lab.org"))
    rendered = render_digest(
        batch, links=links, now=CYCLE_TIME, timezone="UTC", list_name="papers.lab.org"
    )
    html = rendered.html
    assert len(html.encode("utf-8")) < 100_000
    await screenshot_digest(browser, html, "digest-300")

    for variant, options in {
        "desktop": {"viewport": {"width": 1024, "height": 900}},
        "phone": {"viewport": PHONE, "device_scale_factor": 2, "is_mobile": True},
    }.items():
        context = await browser.new_context(**options)  # type: ignore[arg-type]
        page = await context.new_page()
        await page.set_content(html)
        shown = await page.locator(".paper").count()
        assert 5 <= shown < 300
        note = page.get_by_role("link", name="See all 300 papers of 2025-01-11")
        assert (await note.get_attribute("href") or "").startswith("https://papers.lab.org/day?")
        more = page.get_by_role("link", name=re.compile(r"^and \d+ more papers for "))
        texts = await more.all_inner_texts()
        counts = {
            k: int(n)
            for n, k in (re.findall(r"and (\d+) more papers for (.+)", t)[0] for t in texts)
        }
        assert sum(counts.values()) == 300 - shown
        for href in [await more.nth(i).get_attribute("href") for i in range(await more.count())]:
            assert (href or "").startswith("https://papers.lab.org/day?token=")
        # The footer closes the email: below the last paper, in view once scrolled there.
        last_more = more.last
        for name, path in (("Change keywords", "/manage?"), ("Unsubscribe", "/unsubscribe?")):
            link = page.get_by_role("link", name=name, exact=True)
            assert path in (await link.get_attribute("href") or "")
            await link.scroll_into_view_if_needed()
            assert await link.is_visible()
            link_box, more_box = await link.bounding_box(), await last_more.bounding_box()
            assert link_box is not None
            assert more_box is not None
            assert link_box["y"] > more_box["y"]
            assert link_box["x"] + link_box["width"] <= options["viewport"]["width"]  # type: ignore[index]
        if variant == "phone":
            assert await no_sideways_scroll(page)
            await page.screenshot(path=str(ARTIFACTS / "digest-300-phone-end.png"))
        await context.close()
