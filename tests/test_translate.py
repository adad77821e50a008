"""The OpenAI-compatible translator against a real chat-completions server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from digest.config import settings_for_tests
from digest.domain import Paper
from digest.translate import (
    OpenAITranslator,
    build_translator,
    check_answer,
    clean_answer,
    language_name,
    system_prompt,
    target_share,
)
from tests.fakes.openai_api import (
    Empty,
    English,
    FakeOpenAI,
    Garbage,
    ServerError,
    Shortened,
    Slow,
    Throttle,
    Truncated,
    serve_openai,
)
from tests.reference_digest import REFERENCE_LANGUAGE, load_reference_digest

WHEN = datetime(2025, 1, 10, 12, 0, tzinfo=UTC)
LATEX_ABSTRACT = (
    "We bound the error by $\\mathcal{O}(n^{-1/2})$ and show that $$\\sum_{i=1}^n x_i \\le "
    "\\epsilon$$ holds for \\emph{every} input. Code: https://github.com/example/repo_v2?x=1. "
    "Experiments with GPT-4o on ImageNet confirm the bound for Yoshua Bengio's setting."
)


def _paper(arxiv_id: str = "2501.00001", *, title: str = "", abstract: str = "") -> Paper:
    return Paper(
        arxiv_id=arxiv_id,
        version=1,
        title=title or f"A study of robust anomaly detection number {arxiv_id}",
        authors=("Ada Lovelace", "Alan Turing"),
        abstract=abstract
        or (
            "We propose a simple method for detecting anomalies in videos and show that it "
            "improves the accuracy of the baseline on three benchmarks by a wide margin."
        ),
        published=WHEN,
        updated=WHEN,
        primary_category="cs.CV",
    )


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAI]:
    """The fake chat-completions server."""
    async with serve_openai() as fake:
        yield fake


def _translator(fake: FakeOpenAI, **kwargs: object) -> OpenAITranslator:
    options: dict[str, object] = {
        "base_url": fake.url,
        "model": "qwen2.5:7b",
        "attempts": 3,
        "wait_initial": 0.0,
        "wait_max": 0.0,
        "timeout": 5.0,
    }
    options.update(kwargs)
    return OpenAITranslator(**options)  # type: ignore[arg-type]


async def test_reference_translations_come_back_exactly(openai: FakeOpenAI) -> None:
    """Each reference paper gets the reference's Chinese title and abstract, one request each."""
    entries = load_reference_digest()
    for entry in entries:
        openai.teach(entry.paper.title, entry.title_zh)
        openai.teach(entry.paper.abstract, entry.abstract_zh)
    async with _translator(openai) as translator:
        results = [await translator.translate(e.paper, REFERENCE_LANGUAGE) for e in entries]
    for entry, result in zip(entries, results, strict=True):
        assert result.error is None
        assert result.translation is not None
        assert result.translation.title == entry.title_zh
        assert result.translation.abstract == entry.abstract_zh
    assert len(openai.requests) == 2 * len(entries)


async def test_request_carries_latex_and_urls_untouched_and_prompt_protects_them(
    openai: FakeOpenAI,
) -> None:
    """The abstract is sent verbatim; the prompt names LaTeX, formulas, URLs and proper names."""
    paper = _paper(abstract=LATEX_ABSTRACT, title="Bounds for  $k$-means\n  via \\textsc{Lloyd}")
    async with _translator(openai, api_key="sk-test-123") as translator:
        result = await translator.translate(paper, "zh")
    assert result.translation is not None
    sent = {r.text for r in openai.requests}
    assert LATEX_ABSTRACT in sent
    assert "Bounds for $k$-means via \\textsc{Lloyd}" in sent  # one line, TeX kept
    # The model (here the fake, obeying the prompt) kept them, and nothing undid that.
    for kept in ("$\\mathcal{O}(n^{-1/2})$", "https://github.com/example/repo_v2?x=1", "GPT-4o"):
        assert kept in result.translation.abstract
    request = openai.requests[0]
    prompt = request.system
    assert "Simplified Chinese" in prompt
    for must in ("LaTeX", "formulas", "URLs", "proper names", "translation only"):
        assert must in prompt
    assert request.body["model"] == "qwen2.5:7b"
    assert request.body["temperature"] == 0
    assert request.headers["Authorization"] == "Bearer sk-test-123"


async def test_no_api_key_sends_no_authorization_header(openai: FakeOpenAI) -> None:
    """A local Ollama needs no key: no empty `Bearer` header is sent."""
    async with _translator(openai) as translator:
        result = await translator.translate(_paper(), "zh")
    assert result.translation is not None
    assert all("Authorization" not in r.headers for r in openai.requests)


BAD_ANSWERS = [
    pytest.param(ServerError(500), "HTTP 500", id="500"),
    pytest.param(ServerError(503), "HTTP 503", id="503"),
    pytest.param(Throttle(retry_after="0"), "HTTP 429", id="429"),
    pytest.param(Empty(), "empty answer", id="empty"),
    pytest.param(Truncated(), "finish_reason=length", id="truncated"),
    pytest.param(Shortened(), "truncated answer", id="much-shorter"),
    pytest.param(English(), "still English", id="still-english"),
    pytest.param(Garbage(), "not JSON", id="garbage-html"),
    pytest.param(
        Garbage(body='{"error": "overloaded"}', content_type="application/json"),
        "not a chat completion",
        id="garbage-json",
    ),
]


@pytest.mark.parametrize(("answer", "reason"), BAD_ANSWERS)
async def test_bad_answer_is_retried_then_accepted(
    openai: FakeOpenAI, answer: object, reason: str
) -> None:
    """One bad answer for the abstract costs one more request; the retry's answer is kept."""
    paper = _paper()
    openai.script(answer, when="We propose")  # type: ignore[arg-type]
    async with _translator(openai) as translator:
        result = await translator.translate(paper, "zh")
    assert result.translation is not None
    assert result.translation.abstract == openai.translation_of(paper.abstract)
    assert openai.texts().count(paper.abstract) == 2


@pytest.mark.parametrize(("answer", "reason"), BAD_ANSWERS)
async def test_bad_answers_are_retried_boundedly_then_skipped(
    openai: FakeOpenAI, answer: object, reason: str
) -> None:
    """A provider that keeps answering badly gets `attempts` requests, then the paper is skipped."""
    paper = _paper()
    openai.always(answer, when="We propose")  # type: ignore[arg-type]
    async with _translator(openai, attempts=3) as translator:
        result = await translator.translate(paper, "zh")
    assert result.translation is None
    assert not result.fatal
    assert result.error is not None
    assert reason in result.error
    assert openai.texts().count(paper.abstract) == 3


@pytest.mark.parametrize(
    ("status", "fatal", "hint"),
    [
        (401, True, "TRANSLATION_API_KEY"),
        (403, True, "API key"),
        (404, True, "translation.model"),
        (400, False, "HTTP 400"),
    ],
)
async def test_refusals_are_not_retried(
    openai: FakeOpenAI, status: int, fatal: bool, hint: str
) -> None:
    """A refused key or unknown model stops at once (fatal); a rejected text is just skipped."""
    openai.always(ServerError(status))
    async with _translator(openai, api_key="sk-wrong") as translator:
        result = await translator.translate(_paper(), "zh")
    assert result.translation is None
    assert result.fatal is fatal
    assert result.error is not None
    assert hint in result.error
    assert "sk-wrong" not in result.error
    assert len(openai.requests) == 1  # the title, once: the abstract is not even tried


async def test_retry_after_is_obeyed_within_the_backoff_cap(openai: FakeOpenAI) -> None:
    """A 429's Retry-After sets the wait before the retry, capped at the configured maximum."""
    openai.script(Throttle(retry_after="0.3"), Throttle(retry_after="0.3"))
    async with _translator(openai, wait_max=5.0) as translator:
        started = time.perf_counter()
        result = await translator.translate(_paper(), "zh")
        waited = time.perf_counter() - started
    assert result.translation is not None
    assert 0.3 <= waited < 3.0
    openai.script(Throttle(retry_after="3600"))
    async with _translator(openai, wait_max=0.0) as translator:
        started = time.perf_counter()
        result = await translator.translate(_paper("2501.00002"), "zh")
        assert time.perf_counter() - started < 2.0
    assert result.translation is not None


async def test_a_hanging_provider_times_out_and_is_skipped(openai: FakeOpenAI) -> None:
    """A request past `timeout` counts as failed; the paper is skipped, nothing raises."""
    openai.always(Slow(30.0))
    async with _translator(openai, timeout=0.2, attempts=2) as translator:
        started = time.perf_counter()
        result = await translator.translate(_paper(), "zh")
    assert time.perf_counter() - started < 3.0
    assert result.translation is None
    assert len(openai.requests) == 2  # the title's two attempts; the abstract is not tried


async def test_connection_refused_is_a_skipped_result() -> None:
    """Nobody listening: the translator reports the failure instead of raising it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    translator = OpenAITranslator(
        base_url=f"http://127.0.0.1:{port}/v1", model="m", wait_initial=0.0, wait_max=0.0
    )
    async with translator:
        result = await translator.translate(_paper(), "zh")
    assert result.translation is None
    assert result.error


async def test_requests_in_flight_stay_within_concurrency(openai: FakeOpenAI) -> None:
    """However many papers the caller starts at once, `concurrency` requests are in flight."""
    openai.always(Slow(0.05))
    papers = [_paper(f"2501.{i:05d}") for i in range(6)]
    async with _translator(openai, concurrency=2) as translator:
        results = await asyncio.gather(*(translator.translate(p, "zh") for p in papers))
    assert all(r.translation is not None for r in results)
    assert openai.max_in_flight == 2


async def test_injected_session_is_left_open(openai: FakeOpenAI) -> None:
    """A session handed in belongs to the caller: closing the translator keeps it open."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with _translator(openai, session=session) as translator:
            result = await translator.translate(_paper(), "de")
        assert not session.closed
    assert result.translation is not None


def test_check_answer_table() -> None:
    """The output checks: empty, cut off, untranslated or English answers are refused."""
    english = _paper().abstract
    assert check_answer(english, "", "zh", finish_reason="stop") == "empty answer"
    assert "length" in check_answer(english, "我们提出", "zh", finish_reason="length")
    assert "truncated" in check_answer(english, "我们提出", "zh", finish_reason="stop")
    assert "still English" in check_answer(english, english, "ja", finish_reason="stop")
    assert check_answer(english, english, "de", finish_reason="stop")
    assert check_answer(english, english.upper(), "fr", finish_reason="stop")
    german = (
        "Wir schlagen eine einfache Methode zur Erkennung von Anomalien in Videos vor und zeigen, "
        "dass sie die Genauigkeit der Baseline auf drei Benchmarks deutlich verbessert."
    )
    assert check_answer(english, german, "de", finish_reason="stop") == ""
    assert check_answer("FOCUS", "FOCUS", "de", finish_reason=None) == ""  # a name stays a name
    assert check_answer("VideoRAG", "VideoRAG：视频检索", "zh", finish_reason="stop") == ""
    formula = "Bounds for $k$-means via \\textsc{Lloyd}"
    assert check_answer(formula, "通过\\textsc{Lloyd}的$k$-means界", "zh", finish_reason=None) == ""
    assert check_answer("Deep Nets for Vision", "Deep Nets for Vision", "zh", finish_reason=None)
    title = "Zero-shot Shark Tracking and Biometric Identification in Aerial Imagery"
    german = "Zero-Shot-Hai-Tracking und biometrische Identifikation in Luftbildern"
    assert check_answer(title, german, "de", finish_reason=None) == ""
    assert check_answer(title, title, "de", finish_reason=None)


def test_still_english_is_judged_by_the_share_of_the_target_language() -> None:
    """A title keeping an English name is accepted; an answer mostly left in English is not."""
    title = "Imagine while Reasoning in Space: Multimodal Visualization-of-Thought"
    chinese = "在空间推理中的多模态可视化思维：Imagine while Reasoning in Space"
    assert target_share(title, chinese, "zh") == pytest.approx(0.62, abs=0.02)
    assert check_answer(title, chinese, "zh", finish_reason="stop") == ""
    german = "Imagine while Reasoning in Space: Multimodale Visualisierung des Denkens"
    assert check_answer(title, german, "de", finish_reason="stop") == ""
    assert target_share(title, title, "zh") == 0.0
    assert "still English" in check_answer(title, title, "zh", finish_reason="stop")
    half = "在空间推理中的：Imagine while Reasoning in Space: Multimodal Visualization-of-Thought"
    assert "(only 36% of it is Simplified Chinese)" in check_answer(
        title, half, "zh", finish_reason=None
    )
    # Names the prompt says to keep count for neither side.
    kept = "GPT-4o与LVLMs在ImageNet上的比较"
    assert target_share("Comparing GPT-4o and LVLMs on ImageNet", kept, "zh") == 1.0
    for entry in load_reference_digest():  # every reference translation, with room to spare
        assert target_share(entry.paper.title, entry.title_zh, "zh") > 0.7
        assert target_share(entry.paper.abstract, entry.abstract_zh, "zh") > 0.7


def test_clean_answer_strips_wrappers() -> None:
    """Reasoning, code fences and surrounding quotes around a translation are removed."""
    assert clean_answer("<think>zh, keep $x$</think>\n\n“视频 异常”", one_line=True) == "视频 异常"
    assert clean_answer("```text\n第一段\n\n第二段\n```", one_line=False) == "第一段\n\n第二段"
    assert clean_answer('"甲" 和 "乙"', one_line=True) == '"甲" 和 "乙"'
    assert clean_answer("《标题》", one_line=True) == "《标题》"


def test_language_names_for_the_prompt() -> None:
    """Codes become names the model understands; an unknown code is passed on as it is."""
    assert language_name("zh") == "Simplified Chinese"
    assert language_name("pt-BR") == "Brazilian Portuguese"
    assert language_name("de-AT") == "German"
    assert "'tlh'" in system_prompt("tlh")


def test_build_translator_from_settings() -> None:
    """Unconfigured translation builds nothing; a language or local base URL builds a client."""
    assert build_translator(settings_for_tests()) is None
    local = settings_for_tests(translation={"base_url": "http://127.0.0.1:11434/v1"})
    assert isinstance(build_translator(local), OpenAITranslator)
    settings = settings_for_tests(translation={"language": "zh", "retries": 4})
    translator = build_translator(settings)
    assert isinstance(translator, OpenAITranslator)
    assert translator._attempts == 5
    assert translator._wait_max == 0.0  # test mode: no waits between retries
