"""Translating a title and abstract: the `Translator` port and its OpenAI-compatible adapter.

`OpenAITranslator` talks to any chat-completions endpoint (OpenAI, a local Ollama or vLLM,
DeepSeek, Qwen) through aiohttp. Title and abstract are sent verbatim, each as its own request,
under a system prompt that asks for the translation only and for LaTeX, formulas, URLs, code and
proper names to be left exactly as they are. Every answer is checked: an empty, truncated or
still-English answer, a 429, a 5xx, a timeout or a body that is not a chat completion is retried
(bounded, via stamina), then the paper is skipped and stays untranslated until the next cycle.
The adapter never raises into its caller: every call ends in a `TranslationResult`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self

import aiohttp
import stamina

from digest.config import Settings
from digest.domain import Paper
from digest.pacing import parse_retry_after
from digest.render import collapse_ws

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
MAX_TOKENS_FLOOR = 256  # room for a title plus a model's habit of a trailing note
# An answer shorter than this share of its source (in characters) was cut off: a Chinese or
# Japanese abstract is about a third of the English one (0.26-0.45 in the reference digest), a
# German or French one about as long as the English.
MIN_LENGTH_RATIO_DENSE = 0.12
MIN_LENGTH_RATIO = 0.4
LENGTH_CHECK_FROM = 100  # characters; shorter texts (most titles) vary too much to judge
# "Still untranslated" is judged by how much of an answer is in the target language, once what
# the prompt says to keep as it is (TeX, URLs, and names copied from the source) is set aside.
# A correct title that keeps an English method name ("在空间推理中的多模态可视化思维：Imagine
# while Reasoning in Space") is about 60% Chinese; an answer sent back in English is 0%.
MIN_TARGET_SHARE = 0.4
# One Chinese, Japanese or Korean character says about as much as three Latin letters (a
# translated abstract has about a third of the English characters, see above).
DENSE_WEIGHT = 3
# A source with fewer ordinary words than this has nothing to judge by: a name stays a name
# ("FOCUS", "VideoRAG").
MIN_WORDS_TO_JUDGE = 2

# Target languages written in a script other than Latin, and how to recognise that script.
_SCRIPTS: dict[str, tuple[str, ...]] = {
    "zh": ("CJK",),
    "ja": ("CJK", "HIRAGANA", "KATAKANA"),
    "ko": ("HANGUL", "CJK"),
    "ru": ("CYRILLIC",),
    "uk": ("CYRILLIC",),
    "bg": ("CYRILLIC",),
    "sr": ("CYRILLIC",),
    "el": ("GREEK",),
    "ar": ("ARABIC",),
    "fa": ("ARABIC",),
    "he": ("HEBREW",),
    "hi": ("DEVANAGARI",),
    "th": ("THAI",),
}
_DENSE = frozenset({"zh", "ja", "ko"})  # scripts that need far fewer characters than English

LANGUAGE_NAMES = {
    "zh": "Simplified Chinese",
    "zh-tw": "Traditional Chinese",
    "zh-hant": "Traditional Chinese",
    "ja": "Japanese",
    "ko": "Korean",
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "it": "Italian",
    "pt": "Portuguese",
    "pt-br": "Brazilian Portuguese",
    "nl": "Dutch",
    "pl": "Polish",
    "ru": "Russian",
    "uk": "Ukrainian",
    "tr": "Turkish",
    "vi": "Vietnamese",
    "id": "Indonesian",
    "ar": "Arabic",
    "fa": "Persian",
    "he": "Hebrew",
    "hi": "Hindi",
    "th": "Thai",
    "el": "Greek",
    "sv": "Swedish",
    "cs": "Czech",
}

SYSTEM_PROMPT = """\
You translate the titles and abstracts of scientific papers from English into {language}.
Answer with the translation only: no preamble, no notes, no quotation marks, no Markdown.
Leave these exactly as they are, character for character:
- LaTeX commands and math, inline or displayed ($...$, $$...$$, \\(...\\), \\command{{...}}),
- formulas, numbers with their units, and code,
- URLs and e-mail addresses,
- proper names: people, institutions, and the names and acronyms of models, methods, datasets
  and benchmarks (for example GPT-4o, RAG, ImageNet).
Keep the paragraph breaks of the text. Translate the whole text; do not summarise or omit anything.
"""

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)  # reasoning models (Qwen, DeepSeek-R1)
_FENCE = re.compile(r"^```[\w-]*\n(?P<body>.*?)\n?```$", re.DOTALL)
_QUOTES = (('"', '"'), ("“", "”"), ("「", "」"), ("'", "'"))
# What the prompt asks to keep as it is, set aside before judging the language of an answer.
_KEPT = re.compile(r"\$\$.*?\$\$|\$[^$]*\$|\\[A-Za-z]+|https?://\S+|\S+@\S+\.\w+", re.DOTALL)
_LATIN_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9'-]*")  # a word, a name such as GPT-4o
_ORDINARY_WORD = re.compile(r"[A-Za-z]{4,}")


@dataclass(frozen=True, slots=True)
class Translation:
    """A paper's title and abstract in one language ('' where there is no translation)."""

    title: str
    abstract: str


@dataclass(frozen=True, slots=True)
class TranslationResult:
    """How translating one paper went: a translation, or why there is none."""

    arxiv_id: str
    translation: Translation | None
    error: str | None = None
    # The provider refuses every request (bad API key, unknown model or URL): asking again for
    # other papers this run would only repeat the refusal.
    fatal: bool = False


class Translator(Protocol):
    """Translates papers into a language; never raises, every call ends in a result."""

    async def translate(self, paper: Paper, language: str) -> TranslationResult:
        """The paper's title and abstract in `language`, or the reason there is none."""
        ...


def language_name(code: str) -> str:
    """The English name of a language code for the prompt (`zh` -> `Simplified Chinese`)."""
    key = code.strip().lower()
    return LANGUAGE_NAMES.get(key) or LANGUAGE_NAMES.get(key.split("-")[0]) or f"'{code}'"


def system_prompt(language: str) -> str:
    """The instructions sent with every text to translate into `language`."""
    return SYSTEM_PROMPT.format(language=language_name(language))


class _BadAnswer(Exception):
    """An answer that came back but is not a usable translation; worth asking again."""


class _Refused(Exception):
    """The provider refused the request for a reason a retry does not change."""

    def __init__(self, message: str, *, fatal: bool) -> None:
        super().__init__(message)
        self.fatal = fatal


class _Throttled(Exception):
    """429 or 5xx: the provider is busy or broken for now."""

    def __init__(self, message: str, *, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _is_name(word: str) -> bool:
    """An acronym, a CamelCase name or a name with digits (GPT-4o, ImageNet, RAG, LVLMs)."""
    return sum(c.isupper() for c in word) >= 2 or any(c.isdigit() for c in word)


def target_share(source: str, answer: str, language: str) -> float:
    """The share of `answer`'s letters in `language` (0 to 1), what the prompt keeps set aside.

    TeX, URLs and names copied from the source (acronyms, CamelCase, digits) count for neither
    side. For a language with its own script, letters in that script are the target (a dense
    script's weighted by DENSE_WEIGHT) and every other letter is not; for a Latin-script
    language, words the source has too are English and the rest is the target.
    """
    source_text, answer_text = _KEPT.sub(" ", source), _KEPT.sub(" ", answer)
    copied = {w.lower() for w in _LATIN_TOKEN.findall(source_text)}
    base = _base(language)
    scripts = _SCRIPTS.get(base)
    weight = DENSE_WEIGHT if base in _DENSE else 1
    target = other = 0
    for word in _LATIN_TOKEN.findall(answer_text):
        letters = sum(c.isalpha() for c in word)
        if word.lower() in copied:
            if not _is_name(word):
                other += letters
        elif scripts:
            other += letters  # a Latin word the source does not have: still not the target
        else:
            target += letters
    if scripts:
        for char in _LATIN_TOKEN.sub(" ", answer_text):
            if char.isalpha():
                if unicodedata.name(char, "").startswith(scripts):
                    target += weight
                else:
                    other += 1
    total = target + other
    return target / total if total else 1.0


def _base(language: str) -> str:
    return language.strip().lower().split("-")[0]


def check_answer(source: str, answer: str, language: str, *, finish_reason: str | None) -> str:
    """Why `answer` is not a usable translation of `source` into `language`, or '' when it is.

    Catches what providers actually send back: nothing, a cut-off text (`finish_reason`
    "length", or far shorter than the source), and the source itself or other English: an
    answer less than MIN_TARGET_SHARE of which is in the target language (`target_share`).
    """
    if not answer.strip():
        return "empty answer"
    if finish_reason == "length":
        return "truncated answer (finish_reason=length)"
    base = _base(language)
    if len(source) >= LENGTH_CHECK_FROM:
        ratio = len(answer) / len(source)
        floor = MIN_LENGTH_RATIO_DENSE if base in _DENSE else MIN_LENGTH_RATIO
        if ratio < floor:
            return f"truncated answer ({len(answer)} characters for {len(source)})"
    if base == "en":
        return ""
    ordinary = {
        w.lower() for w in _ORDINARY_WORD.findall(_KEPT.sub(" ", source)) if w[1:].islower()
    }
    if len(ordinary) < MIN_WORDS_TO_JUDGE:
        return ""
    share = target_share(source, answer, language)
    if share < MIN_TARGET_SHARE:
        name = language_name(language)
        return f"answer is still English, not {name} (only {share:.0%} of it is {name})"
    return ""


def clean_answer(answer: str, *, one_line: bool) -> str:
    """Strip what models wrap a translation in: reasoning, code fences, quotes, whitespace."""
    text = _THINK.sub("", answer).strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group("body").strip()
    for left, right in _QUOTES:
        if len(text) > 2 and text.startswith(left) and text.endswith(right):
            inner = text[1:-1]
            if left not in inner and right not in inner:  # "a" and "b" is not a quoted text
                text = inner.strip()
            break
    return collapse_ws(text) if one_line else text


class OpenAIChat:
    """The one client of an OpenAI-compatible `/chat/completions` endpoint, shared by
    translation and summaries: the request, the API key, the per-request timeout, the bound on
    requests in flight, and the bounded retries (stamina, Retry-After obeyed) of a 429, a 5xx,
    a timeout or an answer its caller rejects. Subclasses say what to ask and what to accept."""

    MODEL_SETTING = "translation.model"  # named when the provider does not know the model

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_BASE_URL,
        model: str,
        api_key: str = "",
        timeout: float = 60.0,
        attempts: int = 3,
        wait_initial: float = 1.0,
        wait_max: float = 30.0,
        concurrency: int = 4,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._model = model
        self._api_key = api_key
        self._timeout = timeout
        self._attempts = max(1, attempts)
        self._wait_initial = wait_initial
        self._wait_max = wait_max
        self._limit = asyncio.Semaphore(max(1, concurrency))
        self._session = session
        self._owns_session = session is None

    @classmethod
    def provider_options(cls, settings: Settings) -> dict[str, Any]:
        """The constructor's arguments `[translation]` gives every client of the provider
        (no waits between retries in test mode); the model is each client's own."""
        section = settings.translation
        test_mode = settings.service.test_mode
        return {
            "base_url": section.base_url,
            "api_key": settings.secrets.translation_api_key,
            "timeout": section.timeout_seconds,
            "attempts": section.retries + 1,
            "wait_initial": 0.0 if test_mode else 1.0,
            "wait_max": 0.0 if test_mode else section.backoff_max_seconds,
            "concurrency": section.concurrency,
        }

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session this client opened (an injected one is left open)."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _guarded(
        self, paper: Paper, event: str, work: Callable[[], Awaitable[Translation]], **fields: str
    ) -> TranslationResult:
        """Run `work` for one paper; every failure becomes a result (logged as `event.*`)."""
        shown = "".join(f" {name}={value}" for name, value in fields.items())
        try:
            return TranslationResult(paper.arxiv_id, await work())
        except _Refused as exc:
            logger.warning(
                "%s.refused arxiv_id=%s%s fatal=%s error=%s",
                event,
                paper.arxiv_id,
                shown,
                exc.fatal,
                exc,
            )
            return TranslationResult(paper.arxiv_id, None, str(exc), fatal=exc.fatal)
        except (_BadAnswer, _Throttled, aiohttp.ClientError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            logger.warning(
                "%s.skipped arxiv_id=%s%s error=%s", event, paper.arxiv_id, shown, reason
            )
            return TranslationResult(paper.arxiv_id, None, reason)
        except Exception as exc:  # the guard: a bug here must not stop the cycle's delivery
            logger.exception("%s.crashed arxiv_id=%s%s", event, paper.arxiv_id, shown)
            return TranslationResult(paper.arxiv_id, None, f"{type(exc).__name__}: {exc}")

    def _should_retry(self, exc: Exception) -> bool | float:
        """stamina's hook: which failures are worth another request, and when (Retry-After)."""
        if isinstance(exc, _Throttled):
            if exc.retry_after is not None:
                return min(exc.retry_after, self._wait_max)
            return True
        return isinstance(exc, _BadAnswer | aiohttp.ClientError | TimeoutError)

    async def _ask(
        self,
        system: str,
        text: str,
        *,
        max_tokens: int,
        accept: Callable[[str, str | None], tuple[str, str]],
    ) -> str:
        """One answer to `text` under `system`, retried within the configured attempts.

        `accept(answer, finish_reason)` gives (the cleaned answer, why it is unusable or '');
        an unusable answer is asked for again.
        """
        async for attempt in stamina.retry_context(
            on=self._should_retry,
            attempts=self._attempts,
            timeout=None,  # the caller's deadline bounds the whole step instead
            wait_initial=self._wait_initial,
            wait_max=self._wait_max,
            wait_jitter=min(1.0, self._wait_max),
        ):
            with attempt:
                answer, finish_reason = await self._complete(system, text, max_tokens)
                cleaned, problem = accept(answer, finish_reason)
                if problem:
                    raise _BadAnswer(problem)
                return cleaned
        raise AssertionError("unreachable: stamina re-raises the last failure")  # pragma: no cover

    async def _complete(self, system: str, text: str, max_tokens: int) -> tuple[str, str | None]:
        """One chat-completions request: (the answer's text, its finish_reason)."""
        payload = {
            "model": self._model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": text},
            ],
            "temperature": 0,
            "max_tokens": max_tokens,
            "stream": False,
        }
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        async with (
            self._limit,
            self._client().post(
                self._url,
                json=payload,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as response,
        ):
            status = response.status
            if status == 429 or status >= 500 or status == 408:
                raise _Throttled(
                    f"HTTP {status} from the translation provider",
                    retry_after=parse_retry_after(response.headers.get("Retry-After")),
                )
            if status in (401, 403):
                raise _Refused(
                    f"HTTP {status}: the translation provider refused the API key "
                    "(set TRANSLATION_API_KEY)",
                    fatal=True,
                )
            if status == 404:
                raise _Refused(
                    f"HTTP 404 from {self._url}: check translation.base_url and "
                    f"{self.MODEL_SETTING} ({self._model!r})",
                    fatal=True,
                )
            if status >= 400:
                raise _Refused(f"HTTP {status} from the translation provider", fatal=False)
            try:
                body = await response.json(content_type=None)
            except ValueError as exc:
                raise _BadAnswer("answer is not JSON") from exc
        return _read_completion(body)


class OpenAITranslator(OpenAIChat):
    """A `Translator` over an OpenAI-compatible `/chat/completions` endpoint."""

    @classmethod
    def from_settings(
        cls, settings: Settings, *, session: aiohttp.ClientSession | None = None
    ) -> OpenAITranslator:
        """The translator `[translation]` describes (no waits between retries in test mode)."""
        return cls(
            model=settings.translation.model, session=session, **cls.provider_options(settings)
        )

    async def translate(self, paper: Paper, language: str) -> TranslationResult:
        """The paper's title and abstract in `language`; failures become a result, not raised."""
        title_source = collapse_ws(paper.title)
        abstract_source = paper.abstract.strip()

        async def work() -> Translation:
            # One after the other, the abstract first: when it fails the paper is skipped
            # without a wasted title request; papers run side by side instead (the step's
            # concurrency). A paper without an abstract has only its title to translate.
            if not abstract_source:
                title = await self._translate_text(title_source, language, one_line=True)
                return Translation(title=title, abstract="")
            abstract = await self._translate_text(abstract_source, language, one_line=False)
            title = await self._translate_title(paper, title_source, language)
            return Translation(title=title, abstract=abstract)

        return await self._guarded(paper, "translate", work, language=language)

    async def _translate_title(self, paper: Paper, source: str, language: str) -> str:
        """The title's translation, or '' when it fails for any reason but a refused key:
        a good abstract translation is never thrown away for its title, and the paper is not
        asked for again (the title is then shown in English only)."""
        try:
            return await self._translate_text(source, language, one_line=True)
        except _Refused as exc:
            if exc.fatal:
                raise
            reason = str(exc)
        except (_BadAnswer, _Throttled, aiohttp.ClientError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
        logger.warning(
            "translate.title_skipped arxiv_id=%s language=%s error=%s",
            paper.arxiv_id,
            language,
            reason,
        )
        return ""

    async def _translate_text(self, text: str, language: str, *, one_line: bool) -> str:
        """One text translated and checked, retried within the configured attempts."""

        def accept(answer: str, finish_reason: str | None) -> tuple[str, str]:
            cleaned = clean_answer(answer, one_line=one_line)
            return cleaned, check_answer(text, cleaned, language, finish_reason=finish_reason)

        # A translation takes about as many tokens as the source has characters or fewer.
        return await self._ask(
            system_prompt(language), text, max_tokens=MAX_TOKENS_FLOOR + len(text), accept=accept
        )


def _read_completion(body: Any) -> tuple[str, str | None]:
    """The text and finish_reason of a chat completion, or _BadAnswer for anything else."""
    try:
        choice = body["choices"][0]
        content = choice["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise _BadAnswer("answer is not a chat completion") from exc
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise _BadAnswer("answer content is not text")
    finish = choice.get("finish_reason") if isinstance(choice, dict) else None
    return content, finish if isinstance(finish, str) else None


def translation_configured(settings: Settings) -> bool:
    """Whether `[translation]` names a provider to use.

    Configured means a default `language`, or an API key or a non-default `base_url` (so a
    channel's `/papers language` works even when the email digest stays English).
    """
    section = settings.translation
    return bool(
        section.language
        or settings.secrets.translation_api_key
        or section.base_url.rstrip("/") != DEFAULT_BASE_URL
    )


def build_translator(
    settings: Settings, *, session: aiohttp.ClientSession | None = None
) -> OpenAITranslator | None:
    """The translator the settings ask for, or None when translation is not configured."""
    if not translation_configured(settings):
        return None
    return OpenAITranslator.from_settings(settings, session=session)
