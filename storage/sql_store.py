"""`SqlStore`: the `PaperStore` on SQLAlchemy, for SQLite (the default) and PostgreSQL.

The only code that opens the database. Every public method is one transaction and returns
domain objects; rows never leave this package. Bulk paths (`commit_harvest`,
`pending_batches`, `record_outcomes`) work in a handful of set-based statements however many
papers or subscriptions there are, so a 5,000-paper harvest is a few round trips, not 5,000.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from sqlalchemy import (
    URL,
    Connection,
    Engine,
    Integer,
    String,
    and_,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    literal,
    make_url,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from digest.domain import (
    Batch,
    Delivery,
    DeliveryRecord,
    DeliveryStatus,
    Keyword,
    KeywordOrigin,
    LeaseHolder,
    OutboxCount,
    Outcome,
    OutcomeKind,
    Paper,
    PaperText,
    RunReport,
    Subscription,
    Target,
    keyword_origin,
    outranks,
)
from digest.errors import StoreError
from digest.query import query_key
from digest.store import (
    HarvestCommit,
    OutcomeCounts,
    Reopened,
    RunTotals,
    SubscriptionCount,
)
from storage.models import (
    DeliveryRow,
    KeywordRow,
    LeaseRow,
    MatchRow,
    PaperRow,
    RunRow,
    SimilarityModelRow,
    StateRow,
    SubscriptionRow,
    TargetOptionRow,
    TranslationRow,
    UTCDateTime,
    as_utc,
)

if TYPE_CHECKING:
    from digest.config import Settings

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
WATERMARK_KEY = "harvest.watermark"
WRITE_CHECK_KEY = "store.write_checked_at"  # written by check_writable before each delivery
# Older SQLite builds allow 999 bound variables per statement; 500 ids (or 250 id pairs)
# leaves room for the other parameters of the query.
CHUNK = 500
# Bound values in one multi-row INSERT: under SQLite's limit since 3.32 (32,766) and
# PostgreSQL's (65,535), and big enough that 5,000 papers take a handful of statements.
MAX_BOUND_PARAMETERS = 8000
# A cycle's biggest write (thousands of papers) takes well under a second; a slash command that
# arrives meanwhile should wait for it rather than fail with "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 30_000

# SQLAlchemy reports rowcount reliably for UPDATE/DELETE only; INSERTs must ask for it.
_ROWCOUNT = {"preserve_rowcount": True}

_PAPER_COLUMNS = (
    PaperRow.arxiv_id,
    PaperRow.version,
    PaperRow.title,
    PaperRow.authors,
    PaperRow.abstract,
    PaperRow.comment,
    PaperRow.journal_ref,
    PaperRow.doi,
    PaperRow.categories,
    PaperRow.primary_category,
    PaperRow.published,
    PaperRow.updated,
)
# Fields a newer (or the same) version of a paper replaces; first_seen never changes.
_PAPER_CONTENT = (
    "version",
    "title",
    "authors",
    "abstract",
    "comment",
    "journal_ref",
    "doi",
    "categories",
    "primary_category",
    "published",
    "updated",
)


# A keyword's identity (whitespace collapsed, case-folded): the same rule as the query module,
# so `LLM  Agents` and `llm agents` are one keyword everywhere.
_keyword_key = query_key


_T = TypeVar("_T")


def _chunks(items: Sequence[_T], size: int = CHUNK) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def redact_url(url: str) -> str:
    """The URL with its password hidden, fit for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _paper(row: Any) -> Paper:
    """A Paper from a result row that has the `_PAPER_COLUMNS`."""
    m = row._mapping
    return Paper(
        arxiv_id=m["arxiv_id"],
        version=m["version"],
        title=m["title"],
        authors=tuple(m["authors"]),
        abstract=m["abstract"],
        published=m["published"],
        updated=m["updated"],
        primary_category=m["primary_category"],
        categories=tuple(m["categories"]),
        comment=m["comment"],
        journal_ref=m["journal_ref"],
        doi=m["doi"],
    )


def _batch_order(deliveries: list[Delivery]) -> tuple[Delivery, ...]:
    """Subscription ascending, then newest paper first (a stable two-pass sort)."""
    newest = sorted(deliveries, key=lambda d: (d.paper.updated, d.paper.arxiv_id), reverse=True)
    return tuple(sorted(newest, key=lambda d: d.subscription_id))


def _paper_values(paper: Paper, now: datetime) -> dict[str, Any]:
    return {
        "arxiv_id": paper.arxiv_id,
        "version": paper.version,
        "title": paper.title,
        "authors": list(paper.authors),
        "abstract": paper.abstract,
        "comment": paper.comment,
        "journal_ref": paper.journal_ref,
        "doi": paper.doi,
        "categories": list(paper.categories),
        "primary_category": paper.primary_category,
        "published": paper.published,
        "updated": paper.updated,
        "first_seen": now,
        "last_seen": now,
    }


class SqlStore:
    """The database behind the daily cycle, the bots and the CLI (implements `PaperStore`)."""

    def __init__(
        self,
        *,
        url: str,
        max_attempts: int = 8,
        retry_base: timedelta = timedelta(minutes=30),
        retry_max: timedelta = timedelta(hours=24),
        echo: bool = False,
    ) -> None:
        self._url_text = url
        self._redacted = redact_url(url)
        self._max_attempts = max_attempts
        self._retry_base = retry_base
        self._retry_max = retry_max
        try:
            self._url: URL = make_url(url)
            self._engine: Engine = self._create_engine(self._url, echo=echo)
        except ArgumentError as exc:
            raise StoreError(
                f"database URL {self._redacted!r} is not usable: {exc}. Use an empty "
                "database.url for SQLite in the data folder, 'sqlite:///path/to/file.sqlite3', "
                "or 'postgresql+psycopg://user@host:5432/dbname'."
            ) from exc
        except ImportError as exc:  # mysql://, postgresql+psycopg2://: a driver not installed
            raise StoreError(
                f"database URL {self._redacted!r} needs the driver {exc.name!r}, which is not "
                "installed; daily-papers supports SQLite ('sqlite:///...') and PostgreSQL "
                "through psycopg 3 ('postgresql+psycopg://user@host:5432/dbname')."
            ) from exc
        self._dialect = self._engine.dialect.name
        if self._dialect not in {"sqlite", "postgresql"}:
            self._engine.dispose()
            raise StoreError(
                f"database URL {self._redacted!r} uses {self._dialect!r}; daily-papers supports "
                "SQLite ('sqlite:///...') and PostgreSQL ('postgresql+psycopg://...')."
            )
        # Write transactions on SQLite take the write lock up front (BEGIN IMMEDIATE) so two
        # writers queue on the busy timeout instead of failing when a reader upgrades.
        self._writer = self._engine.execution_options(daily_papers_begin="BEGIN IMMEDIATE")
        # SQLite has one writer at a time. Writers of this process queue on a lock, which
        # wakes the next one the moment the previous commits; left to SQLite's busy handler
        # they poll with sleeps of up to 100 ms (the bench's 10,000 digests, written from
        # several threads, spent most of their time there). Other processes still meet the
        # busy timeout. PostgreSQL needs no such lock.
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if self._dialect == "sqlite" else contextlib.nullcontext()
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> SqlStore:
        """A store for `settings.database_url` with the [delivery] retry policy.

        In test mode retries are due at once (zero backoff), so tests never wait.
        """
        base = timedelta(minutes=settings.delivery.retry_base_minutes)
        if settings.service.test_mode:
            base = timedelta(0)
        return cls(
            url=settings.database_url,
            max_attempts=settings.delivery.max_attempts,
            retry_base=base,
        )

    # -- lifecycle ------------------------------------------------------------------------
    @staticmethod
    def _create_engine(url: URL, *, echo: bool) -> Engine:
        if url.get_backend_name() != "sqlite":
            # pre-ping: `serve` holds connections for days; the server may restart meanwhile
            return create_engine(url, echo=echo, pool_pre_ping=True)
        engine = create_engine(
            url,
            echo=echo,
            # async callers run methods via asyncio.to_thread: a pooled connection may be used
            # from another thread than the one that opened it (never two at once)
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy emit BEGIN itself (below): pysqlite's implicit transactions
            # cannot do BEGIN IMMEDIATE and do not cover DDL.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
                cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.execute("PRAGMA synchronous=NORMAL")  # WAL keeps this crash-safe
            finally:
                cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql(conn.get_execution_options().get("daily_papers_begin", "BEGIN"))

        return engine

    def migrate(self) -> None:
        """Create or upgrade the schema to the latest revision (Alembic `upgrade head`).

        For SQLite the data folder is created first. Existing data is kept.
        """
        if self._dialect == "sqlite":
            database = self._url.database
            if database and database != ":memory:" and not database.startswith("file:"):
                folder = Path(database).expanduser().parent
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(
                        f"cannot create the data folder {str(folder)!r} for database "
                        f"{self._redacted!r}: {exc.strerror}. Set service.data_dir (or "
                        "database.url) to a writable place."
                    ) from exc
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        # '%' is configparser interpolation syntax; a password may contain it
        config.set_main_option("sqlalchemy.url", self._url_text.replace("%", "%%"))
        started = time.monotonic()
        try:
            with self._transaction(write=True) as conn:
                config.attributes["connection"] = conn
                before = MigrationContext.configure(conn).get_current_revision()
                command.upgrade(config, "head")
                after = MigrationContext.configure(conn).get_current_revision()
        except CommandError as exc:
            raise StoreError(
                f"cannot migrate the database {self._redacted!r}: {exc}. If it was created by "
                "a newer daily-papers, upgrade daily-papers."
            ) from exc
        # Every command opens the store: an up-to-date schema is news only when debugging.
        log.log(
            logging.INFO if before != after else logging.DEBUG,
            "store.migrated url=%s from=%s to=%s seconds=%.2f",
            self._redacted,
            before,
            after,
            time.monotonic() - started,
        )

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SqlStore(url={self._redacted!r})"

    @contextlib.contextmanager
    def _transaction(self, *, write: bool = False) -> Iterator[Connection]:
        """One transaction; database errors become a StoreError a person can act on."""
        engine = self._writer if write else self._engine
        try:
            with self._write_lock if write else contextlib.nullcontext(), engine.begin() as conn:
                yield conn
        except DBAPIError as exc:
            raise self._store_error(exc) from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"database {self._redacted!r}: {exc}") from exc

    def _store_error(self, exc: DBAPIError) -> StoreError:
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        password = self._url.password
        if password:
            detail = detail.replace(str(password), "***")
        lowered = detail.lower()
        if "no such table" in lowered or ("relation" in lowered and "does not exist" in lowered):
            hint = "the schema is missing or out of date: migrate it (SqlStore.migrate())."
        elif exc.connection_invalidated or "connect" in lowered or "unable to open" in lowered:
            hint = (
                "check that the database server is running and reachable, that database.url "
                "(or DAILY_PAPERS_DATABASE_URL) is right, and that the data folder is writable."
            )
        elif "readonly" in lowered or "read-only" in lowered or "is full" in lowered:
            hint = (
                "the database cannot be written (a read-only file, mount or transaction, or a "
                "full disk); make it writable and try again (a cycle sends nothing it cannot "
                "record)."
            )
        elif "locked" in lowered or "busy" in lowered:
            hint = "another process held the database too long; retry, or stop the other process."
        else:
            hint = "see the log for details."
        return StoreError(f"database {self._redacted!r}: {detail}; {hint}")

    def _insert(self, model: Any) -> Any:
        """The dialect's INSERT, which has ON CONFLICT on both backends we support."""
        if self._dialect == "postgresql":
            return pg_insert(model)
        return sqlite_insert(model)

    # -- keywords -------------------------------------------------------------------------
    def _keyword_id(self, conn: Connection, query: str) -> int | None:
        return conn.execute(
            select(KeywordRow.id).where(KeywordRow.key == _keyword_key(query))
        ).scalar_one_or_none()

    def _ensure_keyword(
        self,
        conn: Connection,
        query: str,
        *,
        from_config: bool,
        now: datetime,
        origin: KeywordOrigin = KeywordOrigin.OPERATOR,
    ) -> tuple[int, str, bool]:
        """(id, stored query text, True when newly tracked); `origin` only ever raises it."""
        text = query.strip()
        inserted = conn.execute(
            self._insert(KeywordRow)
            .values(
                query=text,
                key=_keyword_key(text),
                from_config=from_config,
                origin=origin.value,
                created_at=now,
                backfilled_at=None,
            )
            .on_conflict_do_nothing(index_elements=["key"])
            # RETURNING, not rowcount: psycopg reports no rowcount for a RETURNING insert
            .returning(KeywordRow.id)
        ).scalar_one_or_none()
        row = conn.execute(
            select(
                KeywordRow.id, KeywordRow.query, KeywordRow.from_config, KeywordRow.origin
            ).where(KeywordRow.key == _keyword_key(text))
        ).one()
        if from_config and not row.from_config:
            # a keyword a user added that now also sits in the config file: config ones
            # are listed first and are not removed through chat
            conn.execute(update(KeywordRow).where(KeywordRow.id == row.id).values(from_config=True))
        if outranks(origin, row.origin):
            # e.g. the operator adds an email reader's private query: now it may be listed
            conn.execute(
                update(KeywordRow).where(KeywordRow.id == row.id).values(origin=origin.value)
            )
        return row.id, row.query, inserted is not None

    def list_keywords(self) -> list[Keyword]:
        """Every tracked keyword: config ones first, then the others, each in insertion order."""
        with self._transaction() as conn:
            rows = conn.execute(
                select(KeywordRow.query, KeywordRow.from_config, KeywordRow.origin).order_by(
                    KeywordRow.from_config.desc(), KeywordRow.id
                )
            ).all()
        return [
            Keyword(query=r.query, from_config=bool(r.from_config), origin=r.origin) for r in rows
        ]

    def add_keyword(self, query: str, *, from_config: bool = False) -> bool:
        """Track `query` (already validated) as the operator's; True when it was not tracked.

        Lookups are case- and whitespace-insensitive: `LLM  Agents` is the same keyword as
        `llm agents`, and the text first added is the one shown. A keyword an email reader or
        a chat channel asked for becomes the operator's (listed publicly).
        """
        with self._transaction(write=True) as conn:
            _, _, created = self._ensure_keyword(
                conn, query, from_config=from_config, now=_utcnow()
            )
        return created

    def remove_keyword(self, query: str) -> bool:
        """Stop tracking `query`, dropping its matches and inactive subscriptions.

        Refuses with StoreError while an active subscription still uses it; papers stay (other
        keywords may match them). True when it was tracked.
        """
        with self._transaction(write=True) as conn:
            keyword_id = self._keyword_id(conn, query)
            if keyword_id is None:
                return False
            users = conn.execute(
                select(SubscriptionRow.target_kind, SubscriptionRow.target_address)
                .where(SubscriptionRow.keyword_id == keyword_id, SubscriptionRow.active)
                .order_by(SubscriptionRow.id)
            ).all()
            if users:
                # display: a webhook address carries its token, which is never printed
                targets = ", ".join(
                    Target(kind=r.target_kind, address=r.target_address).display for r in users[:5]
                )
                more = f" and {len(users) - 5} more" if len(users) > 5 else ""
                raise StoreError(
                    f"keyword {query!r} still has {len(users)} active subscription(s) "
                    f"({targets}{more}); unsubscribe them before removing it."
                )
            subscriptions = select(SubscriptionRow.id).where(
                SubscriptionRow.keyword_id == keyword_id
            )
            conn.execute(delete(DeliveryRow).where(DeliveryRow.subscription_id.in_(subscriptions)))
            conn.execute(delete(SubscriptionRow).where(SubscriptionRow.keyword_id == keyword_id))
            conn.execute(delete(MatchRow).where(MatchRow.keyword_id == keyword_id))
            conn.execute(
                delete(SimilarityModelRow).where(SimilarityModelRow.keyword_id == keyword_id)
            )
            conn.execute(delete(KeywordRow).where(KeywordRow.id == keyword_id))
        log.info("store.keyword_removed query=%r", query)
        return True

    def keywords_to_backfill(self) -> list[str]:
        """Keywords that never had their one-off backfill, oldest request first."""
        with self._transaction() as conn:
            return list(
                conn.execute(
                    select(KeywordRow.query)
                    .where(KeywordRow.backfilled_at.is_(None))
                    .order_by(KeywordRow.id)
                ).scalars()
            )

    def mark_backfilled(self, query: str, when: datetime) -> None:
        """Record that `query` got its backfill (a no-op for an untracked query)."""
        with self._transaction(write=True) as conn:
            conn.execute(
                update(KeywordRow)
                .where(KeywordRow.key == _keyword_key(query))
                .values(backfilled_at=when)
            )

    # -- papers and matches ---------------------------------------------------------------
    def _known_versions(self, conn: Connection, arxiv_ids: Iterable[str]) -> dict[str, int]:
        ids = sorted(set(arxiv_ids))
        known: dict[str, int] = {}
        for chunk in _chunks(ids):
            for arxiv_id, version in conn.execute(
                select(PaperRow.arxiv_id, PaperRow.version).where(PaperRow.arxiv_id.in_(chunk))
            ):
                known[arxiv_id] = version
        return known

    def known_versions(self, arxiv_ids: Collection[str]) -> dict[str, int]:
        """The stored version of each of these ids that is stored at all."""
        with self._transaction() as conn:
            return self._known_versions(conn, arxiv_ids)

    def iter_papers(self, *, batch_size: int = 1000) -> Iterator[Paper]:
        """Every stored paper in arxiv_id order, read `batch_size` at a time.

        Each batch is its own short read, so a long consumer never holds the database.
        """
        after = ""
        while True:
            with self._transaction() as conn:
                rows = conn.execute(
                    select(*_PAPER_COLUMNS)
                    .where(PaperRow.arxiv_id > after)
                    .order_by(PaperRow.arxiv_id)
                    .limit(batch_size)
                ).all()
            if not rows:
                return
            for row in rows:
                yield _paper(row)
            if len(rows) < batch_size:
                return
            after = rows[-1].arxiv_id

    def papers_submitted_since(self, start: datetime) -> list[Paper]:
        """Stored papers first submitted at or after `start` (the harvest window), newest first.

        Read through the index on `updated` (a paper is updated no earlier than it was
        submitted), so the cost follows the window, not the database.
        """
        start = as_utc(start)
        with self._transaction() as conn:
            rows = conn.execute(
                select(*_PAPER_COLUMNS)
                .where(PaperRow.updated >= start, PaperRow.published >= start)
                .order_by(PaperRow.updated.desc(), PaperRow.arxiv_id.desc())
            ).all()
        return [_paper(r) for r in rows]

    def texts_submitted_since(self, start: datetime) -> list[PaperText]:
        """The searchable text of the papers `papers_submitted_since` returns (no dates to
        convert: half the cost of reading whole papers)."""
        start = as_utc(start)
        with self._transaction() as conn:
            rows = conn.execute(
                select(
                    PaperRow.arxiv_id,
                    PaperRow.title,
                    PaperRow.abstract,
                    PaperRow.authors,
                    PaperRow.comment,
                    PaperRow.primary_category,
                    PaperRow.categories,
                ).where(PaperRow.updated >= start, PaperRow.published >= start)
            ).all()
        return [
            PaperText(
                arxiv_id=r.arxiv_id,
                title=r.title,
                abstract=r.abstract,
                authors=tuple(r.authors),
                comment=r.comment,
                primary_category=r.primary_category,
                categories=tuple(r.categories),
            )
            for r in rows
        ]

    def recent_papers(self, limit: int) -> list[Paper]:
        """The `limit` most recently updated stored papers, newest first (ties: id descending;
        the background of `like:` models and of relevance order), read through the index on
        `updated`: the cost follows `limit`, not the database."""
        with self._transaction() as conn:
            rows = conn.execute(
                select(*_PAPER_COLUMNS)
                .order_by(PaperRow.updated.desc(), PaperRow.arxiv_id.desc())
                .limit(max(0, limit))
            ).all()
        return [_paper(r) for r in rows]

    def load_similarity_model(self, query: str) -> tuple[str, bytes] | None:
        """The cached model of a `like:` keyword: (seed key, model JSON), or None."""
        with self._transaction() as conn:
            row = conn.execute(
                select(SimilarityModelRow.seed_key, SimilarityModelRow.model)
                .join(KeywordRow, KeywordRow.id == SimilarityModelRow.keyword_id)
                .where(KeywordRow.key == _keyword_key(query))
            ).one_or_none()
        return None if row is None else (row.seed_key, row.model.encode("utf-8"))

    def save_similarity_model(
        self, query: str, *, seed_key: str, model: bytes, now: datetime
    ) -> bool:
        """Keep (or replace) a tracked `like:` keyword's model; False when it is not tracked."""
        with self._transaction(write=True) as conn:
            keyword_id = self._keyword_id(conn, query)
            if keyword_id is None:
                return False
            values = {"seed_key": seed_key, "model": model.decode("utf-8"), "trained_at": now}
            conn.execute(
                self._insert(SimilarityModelRow)
                .values(keyword_id=keyword_id, **values)
                .on_conflict_do_update(index_elements=["keyword_id"], set_=values)
            )
        return True

    def papers_by_id(self, arxiv_ids: Collection[str]) -> list[Paper]:
        """The stored papers of these ids, in id order (unknown ids are left out)."""
        papers: list[Paper] = []
        with self._transaction() as conn:
            for id_chunk in _chunks(sorted(set(arxiv_ids))):
                papers += [
                    _paper(row)
                    for row in conn.execute(
                        select(*_PAPER_COLUMNS)
                        .where(PaperRow.arxiv_id.in_(id_chunk))
                        .order_by(PaperRow.arxiv_id)
                    )
                ]
        return papers

    def commit_harvest(
        self,
        *,
        papers: Sequence[Paper],
        matches: Mapping[str, Collection[str]],
        deliverable: Collection[str],
        now: datetime,
        watermark: datetime | None = None,
        backfilled: bool = False,
    ) -> HarvestCommit:
        """Store one harvest atomically (all of it, or nothing on any error).

        `backfilled`: these papers come from a keyword's backfill; the ones stored for the
        first time are history (never listed as a day's new papers).

        - Papers are upserted: a new id is inserted with first_seen = last_seen = `now`; a
          stored id gets last_seen = `now`, and its content is replaced when the harvested
          version is the same or higher (never downgraded); first_seen is kept.
        - `matches` (keyword query -> arxiv ids) are added; existing pairs are left alone.
          A keyword that is not tracked (removed meanwhile) is skipped with a warning.
        - A paper in `deliverable` that is matched in this harvest is owed to each active
          subscription of every keyword it matches: a pending delivery, unless the subscription
          already has a row for that paper (any status). Committing the same harvest twice
          owes nothing twice, and a subscription made after a paper was harvested is never
          owed it (that paper is no longer in `deliverable`).
        - A paper in `deliverable` whose version went up in this harvest (the caller announces
          revisions) re-opens its finished deliveries to active subscriptions: each is owed once
          more, once per new version.
        - `watermark`, when given, becomes the new harvest watermark.
        """
        started = time.monotonic()
        now = as_utc(now)
        latest: dict[str, Paper] = {}
        for paper in papers:
            held = latest.get(paper.arxiv_id)
            if held is None or paper.version > held.version:
                latest[paper.arxiv_id] = paper
        deliverable_ids = set(deliverable)
        with self._transaction(write=True) as conn:
            known = self._known_versions(conn, latest)
            new_papers = sum(1 for arxiv_id in latest if arxiv_id not in known)
            revised = sum(
                1
                for arxiv_id, p in latest.items()
                if arxiv_id in known and p.version > known[arxiv_id]
            )
            reworded = self._reworded(conn, latest, known)
            self._upsert_papers(conn, list(latest.values()), now, backfilled=backfilled)
            # A translation of the old title or abstract is wrong for the new version: dropped,
            # so the next translation step translates the paper again.
            for id_chunk in _chunks(reworded):
                conn.execute(delete(TranslationRow).where(TranslationRow.arxiv_id.in_(id_chunk)))
            pairs = self._matched_pairs(conn, matches)
            new_matches = self._insert_matches(conn, pairs, now)
            new_deliveries = self._insert_deliveries(
                conn, [(k, a) for k, a in pairs if a in deliverable_ids], now
            )
            revised_ids = [
                arxiv_id
                for arxiv_id, p in latest.items()
                if arxiv_id in known and p.version > known[arxiv_id] and arxiv_id in deliverable_ids
            ]
            new_deliveries += self._reopen_deliveries(conn, revised_ids, now)
            if watermark is not None:
                self._set_state(conn, WATERMARK_KEY, as_utc(watermark).isoformat())
        log.info(
            "store.harvest_committed papers=%d new=%d revised=%d reworded=%d new_matches=%d "
            "new_deliveries=%d seconds=%.2f",
            len(latest),
            new_papers,
            revised,
            len(reworded),
            new_matches,
            new_deliveries,
            time.monotonic() - started,
        )
        return HarvestCommit(
            new_papers=new_papers,
            revised_papers=revised,
            new_matches=new_matches,
            new_deliveries=new_deliveries,
        )

    def _reworded(
        self, conn: Connection, latest: Mapping[str, Paper], known: Mapping[str, int]
    ) -> list[str]:
        """Ids whose new version changes the stored title or abstract (read before the upsert)."""
        revised = sorted(a for a, p in latest.items() if a in known and p.version > known[a])
        changed: list[str] = []
        for id_chunk in _chunks(revised):
            for arxiv_id, title, abstract in conn.execute(
                select(PaperRow.arxiv_id, PaperRow.title, PaperRow.abstract).where(
                    PaperRow.arxiv_id.in_(id_chunk)
                )
            ):
                paper = latest[arxiv_id]
                if (paper.title, paper.abstract) != (title, abstract):
                    changed.append(arxiv_id)
        return changed

    def _reopen_deliveries(self, conn: Connection, arxiv_ids: list[str], now: datetime) -> int:
        """Make finished deliveries of these (revised) papers pending again; rows re-opened."""
        reopened = 0
        active = select(SubscriptionRow.id).where(SubscriptionRow.active)
        for id_chunk in _chunks(arxiv_ids, 500):
            reopened += conn.execute(
                update(DeliveryRow)
                .where(
                    DeliveryRow.arxiv_id.in_(id_chunk),
                    DeliveryRow.status != DeliveryStatus.PENDING.value,
                    DeliveryRow.subscription_id.in_(active),
                )
                .values(
                    status=DeliveryStatus.PENDING.value,
                    attempts=0,
                    last_error=None,
                    next_attempt_at=now,
                    sent_at=None,
                ),
                execution_options=_ROWCOUNT,
            ).rowcount
        return reopened

    def _insert_rows(self, conn: Connection, stmt: Any, rows: list[dict[str, Any]]) -> int:
        """Execute one compiled INSERT for many rows (DB-API executemany); rows inserted.

        One statement compiled once: SQLite runs it in-process, psycopg pipelines it. (Multi-row
        VALUES would make SQLAlchemy compile thousands of bind parameters per chunk.)
        """
        if not rows:
            return 0
        inserted = 0
        for batch in _chunks(rows, 1000):
            inserted += conn.execute(stmt, list(batch), execution_options=_ROWCOUNT).rowcount
        return inserted

    def _upsert_papers(
        self, conn: Connection, papers: list[Paper], now: datetime, *, backfilled: bool = False
    ) -> None:
        if not papers:
            return
        stmt = self._insert(PaperRow.__table__)
        newer = stmt.excluded.version >= PaperRow.version
        set_: dict[str, Any] = {
            name: case((newer, getattr(stmt.excluded, name)), else_=getattr(PaperRow, name))
            for name in _PAPER_CONTENT
        }
        set_["last_seen"] = stmt.excluded.last_seen
        stmt = stmt.on_conflict_do_update(index_elements=["arxiv_id"], set_=set_)
        self._insert_rows(
            conn, stmt, [_paper_values(p, now) | {"backfilled": backfilled} for p in papers]
        )

    def _matched_pairs(
        self, conn: Connection, matches: Mapping[str, Collection[str]]
    ) -> list[tuple[int, str]]:
        """(keyword id, arxiv id) for every tracked keyword in `matches`."""
        keys = {_keyword_key(query): query for query in matches}
        ids: dict[str, int] = {}
        for chunk in _chunks(sorted(keys)):
            for key, keyword_id in conn.execute(
                select(KeywordRow.key, KeywordRow.id).where(KeywordRow.key.in_(chunk))
            ):
                ids[key] = keyword_id
        pairs: set[tuple[int, str]] = set()
        for key, query in keys.items():
            if key not in ids:
                log.warning("store.match_skipped reason=untracked_keyword query=%r", query)
                continue
            pairs.update((ids[key], arxiv_id) for arxiv_id in matches[query])
        return sorted(pairs)

    def _insert_matches(self, conn: Connection, pairs: list[tuple[int, str]], now: datetime) -> int:
        """Insert the pairs not stored yet; how many were new."""
        stmt = self._insert(MatchRow.__table__).on_conflict_do_nothing(
            index_elements=["keyword_id", "arxiv_id"]
        )
        rows = [{"keyword_id": k, "arxiv_id": a, "first_matched": now} for k, a in pairs]
        return self._insert_rows(conn, stmt, rows)

    def _insert_deliveries(
        self, conn: Connection, pairs: list[tuple[int, str]], now: datetime
    ) -> int:
        """Owe each deliverable matched paper to the active subscriptions of its keywords.

        Set-based (INSERT ... SELECT over matches x subscriptions), so 1,000 subscriptions
        cost no more round trips than one; ON CONFLICT keeps it exactly-once.
        """
        arxiv_ids = sorted({a for _, a in pairs})
        created = 0
        for id_chunk in _chunks(arxiv_ids):
            source = (
                select(
                    SubscriptionRow.id,
                    MatchRow.arxiv_id,
                    literal(DeliveryStatus.PENDING.value, String),
                    literal(0, Integer),
                    literal(now, UTCDateTime()),
                    literal(now, UTCDateTime()),
                )
                .join(SubscriptionRow, SubscriptionRow.keyword_id == MatchRow.keyword_id)
                # SQLite needs a WHERE in INSERT ... SELECT ... ON CONFLICT (parse ambiguity)
                .where(SubscriptionRow.active, MatchRow.arxiv_id.in_(id_chunk))
            )
            stmt = (
                self._insert(DeliveryRow)
                .from_select(
                    [
                        "subscription_id",
                        "arxiv_id",
                        "status",
                        "attempts",
                        "next_attempt_at",
                        "created_at",
                    ],
                    source,
                )
                .on_conflict_do_nothing(index_elements=["subscription_id", "arxiv_id"])
            )
            created += conn.execute(stmt, execution_options=_ROWCOUNT).rowcount
        return created

    def latest_matches(
        self, query: str, limit: int, *, stored_before: datetime | None = None
    ) -> list[Paper]:
        """The newest `limit` papers matching `query` by last-updated date (ties: id
        descending); with `stored_before`, only those first stored before it or by a backfill."""
        with self._transaction() as conn:
            keyword_id = self._keyword_id(conn, query)
            if keyword_id is None:
                return []
            statement = (
                select(*_PAPER_COLUMNS)
                .join(MatchRow, MatchRow.arxiv_id == PaperRow.arxiv_id)
                .where(MatchRow.keyword_id == keyword_id)
            )
            if stored_before is not None:
                statement = statement.where(
                    or_(PaperRow.first_seen < as_utc(stored_before), PaperRow.backfilled.is_(True))
                )
            rows = conn.execute(
                statement.order_by(PaperRow.updated.desc(), PaperRow.arxiv_id.desc()).limit(limit)
            ).all()
        return [_paper(r) for r in rows]

    def latest_matches_by_keyword(self, limit: int) -> dict[str, tuple[list[Paper], int]]:
        """For every tracked keyword: its newest `limit` papers (as `latest_matches` orders
        them) and how many papers it matches in all.

        Two set-based reads, whatever the number of keywords: the ranks come from a window
        function over the matches (SQLite 3.25+ and PostgreSQL), and each paper is read once
        however many keywords it matches.
        """
        ranked = (
            select(
                MatchRow.keyword_id,
                MatchRow.arxiv_id,
                func.row_number()
                .over(
                    partition_by=MatchRow.keyword_id,
                    order_by=(PaperRow.updated.desc(), PaperRow.arxiv_id.desc()),
                )
                .label("rank"),
                func.count().over(partition_by=MatchRow.keyword_id).label("total"),
            )
            .join(PaperRow, PaperRow.arxiv_id == MatchRow.arxiv_id)
            .subquery()
        )
        with self._transaction() as conn:
            keywords = dict(conn.execute(select(KeywordRow.id, KeywordRow.query)).all())
            rows = conn.execute(
                select(ranked.c.keyword_id, ranked.c.arxiv_id, ranked.c.total)
                .where(ranked.c.rank <= limit)
                .order_by(ranked.c.keyword_id, ranked.c.rank)
            ).all()
            papers: dict[str, Paper] = {}
            for id_chunk in _chunks(sorted({r.arxiv_id for r in rows})):
                for row in conn.execute(
                    select(*_PAPER_COLUMNS).where(PaperRow.arxiv_id.in_(id_chunk))
                ):
                    papers[row.arxiv_id] = _paper(row)
        result: dict[str, tuple[list[Paper], int]] = {q: ([], 0) for q in keywords.values()}
        for keyword_id, arxiv_id, total in rows:
            latest, _ = result[keywords[keyword_id]]
            latest.append(papers[arxiv_id])
            result[keywords[keyword_id]] = (latest, int(total))
        return result

    def count_matches(self, query: str) -> int:
        """How many stored papers match `query` (0 for an untracked one)."""
        with self._transaction() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(MatchRow)
                    .join(KeywordRow, KeywordRow.id == MatchRow.keyword_id)
                    .where(KeywordRow.key == _keyword_key(query))
                ).scalar_one()
            )

    def matches_first_seen_between(self, start: datetime, end: datetime) -> list[tuple[str, Paper]]:
        """(keyword, paper) pairs whose paper was first stored in [start, end) by a harvest
        (a backfill's papers are history, not the day's news).

        Newest first (last-updated date, then id descending); a paper matching two keywords
        appears once per keyword, keywords in `list_keywords` order.
        """
        with self._transaction() as conn:
            rows = conn.execute(
                select(KeywordRow.query.label("keyword_query"), *_PAPER_COLUMNS)
                .join(MatchRow, MatchRow.arxiv_id == PaperRow.arxiv_id)
                .join(KeywordRow, KeywordRow.id == MatchRow.keyword_id)
                .where(
                    PaperRow.first_seen >= start,
                    PaperRow.first_seen < end,
                    PaperRow.backfilled.is_(False),
                )
                .order_by(
                    PaperRow.updated.desc(),
                    PaperRow.arxiv_id.desc(),
                    KeywordRow.from_config.desc(),
                    KeywordRow.id,
                )
            ).all()
        return [(r.keyword_query, _paper(r)) for r in rows]

    # -- translations ---------------------------------------------------------------------
    def get_translations(
        self, arxiv_ids: Collection[str], language: str
    ) -> dict[str, tuple[str, str]]:
        """Stored (title, abstract) translations into `language`, by arxiv id."""
        found: dict[str, tuple[str, str]] = {}
        with self._transaction() as conn:
            for chunk in _chunks(sorted(set(arxiv_ids))):
                for arxiv_id, title, abstract in conn.execute(
                    select(
                        TranslationRow.arxiv_id, TranslationRow.title, TranslationRow.abstract
                    ).where(TranslationRow.language == language, TranslationRow.arxiv_id.in_(chunk))
                ):
                    found[arxiv_id] = (title, abstract)
        return found

    def save_translation(self, arxiv_id: str, language: str, title: str, abstract: str) -> None:
        """Store one paper's translation, replacing an older one into the same language."""
        stmt = self._insert(TranslationRow).values(
            arxiv_id=arxiv_id,
            language=language,
            title=title,
            abstract=abstract,
            created_at=_utcnow(),
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["arxiv_id", "language"],
            set_={
                "title": stmt.excluded.title,
                "abstract": stmt.excluded.abstract,
                "created_at": stmt.excluded.created_at,
            },
        )
        with self._transaction(write=True) as conn:
            conn.execute(stmt)

    def papers_missing_translation(
        self, language: str, *, since: datetime, limit: int = 500
    ) -> list[Paper]:
        """Papers matching some keyword, first stored by a harvest at or after `since` or revised
        since (a version > 1 dated then), with no translation into `language`; newest first, at
        most `limit`. A backfill's papers are history and never asked for.

        A revision that changed the title or abstract lost its translation when it was stored,
        so it is found here again however old the paper is.
        """
        matched = select(MatchRow.arxiv_id).where(MatchRow.arxiv_id == PaperRow.arxiv_id)
        translated = select(TranslationRow.arxiv_id).where(
            TranslationRow.arxiv_id == PaperRow.arxiv_id, TranslationRow.language == language
        )
        with self._transaction() as conn:
            rows = conn.execute(
                select(*_PAPER_COLUMNS)
                .where(
                    or_(
                        PaperRow.first_seen >= since,
                        and_(PaperRow.version > 1, PaperRow.updated >= since),
                    ),
                    PaperRow.backfilled.is_(False),
                    matched.exists(),
                    ~translated.exists(),
                )
                .order_by(PaperRow.updated.desc(), PaperRow.arxiv_id.desc())
                .limit(limit)
            ).all()
        return [_paper(r) for r in rows]

    # -- subscriptions --------------------------------------------------------------------
    def add_subscription(
        self, target: Target, query: str, *, now: datetime, pending_reason: str | None = None
    ) -> Subscription:
        """Subscribe `target` to `query`, tracking the keyword if needed.

        An existing subscription is returned as is; a disabled one is re-activated and its
        reason cleared. Papers harvested before this moment are not owed to it. With
        `pending_reason` (an email sign-up waiting for its confirmation) the subscription is
        stored inactive with that reason instead; an active one stays active. A keyword new to
        the service takes its origin from the target's kind (`keyword_origin`).
        """
        with self._transaction(write=True) as conn:
            keyword_id, keyword_text, _ = self._ensure_keyword(
                conn, query, from_config=False, now=now, origin=keyword_origin(target.kind)
            )
            where = (
                SubscriptionRow.target_kind == target.kind,
                SubscriptionRow.target_address == target.address,
                SubscriptionRow.keyword_id == keyword_id,
            )
            row = conn.execute(
                select(
                    SubscriptionRow.id,
                    SubscriptionRow.active,
                    SubscriptionRow.disabled_reason,
                    SubscriptionRow.created_at,
                ).where(*where)
            ).one_or_none()
            active, reason = pending_reason is None, pending_reason
            if row is None:
                subscription_id = conn.execute(
                    insert(SubscriptionRow)
                    .values(
                        target_kind=target.kind,
                        target_address=target.address,
                        keyword_id=keyword_id,
                        active=active,
                        disabled_reason=reason,
                        created_at=now,
                    )
                    .returning(SubscriptionRow.id)
                ).scalar_one()
                created_at = as_utc(now)
            else:
                subscription_id, created_at = row.id, row.created_at
                if row.active:
                    active, reason = True, None
                else:
                    conn.execute(
                        update(SubscriptionRow)
                        .where(SubscriptionRow.id == row.id)
                        .values(active=active, disabled_reason=reason, disabled_at=None)
                    )
        return Subscription(
            id=subscription_id,
            target=target,
            keyword=keyword_text,
            active=active,
            disabled_reason=reason,
            created_at=created_at,
        )

    def remove_subscription(self, target: Target, query: str) -> bool:
        """Delete the subscription and its outbox rows; True when there was one."""
        with self._transaction(write=True) as conn:
            keyword_id = self._keyword_id(conn, query)
            if keyword_id is None:
                return False
            subscription_id = conn.execute(
                select(SubscriptionRow.id).where(
                    SubscriptionRow.target_kind == target.kind,
                    SubscriptionRow.target_address == target.address,
                    SubscriptionRow.keyword_id == keyword_id,
                )
            ).scalar_one_or_none()
            if subscription_id is None:
                return False
            conn.execute(delete(DeliveryRow).where(DeliveryRow.subscription_id == subscription_id))
            conn.execute(delete(SubscriptionRow).where(SubscriptionRow.id == subscription_id))
        return True

    def list_subscriptions(
        self, target: Target | None = None, *, active_only: bool = False
    ) -> list[Subscription]:
        """Subscriptions, of one target or all, in the order they were made."""
        stmt = (
            select(
                SubscriptionRow.id,
                SubscriptionRow.target_kind,
                SubscriptionRow.target_address,
                SubscriptionRow.active,
                SubscriptionRow.disabled_reason,
                SubscriptionRow.created_at,
                SubscriptionRow.disabled_at,
                KeywordRow.query,
            )
            .join(KeywordRow, KeywordRow.id == SubscriptionRow.keyword_id)
            .order_by(SubscriptionRow.id)
        )
        if target is not None:
            stmt = stmt.where(
                SubscriptionRow.target_kind == target.kind,
                SubscriptionRow.target_address == target.address,
            )
        if active_only:
            stmt = stmt.where(SubscriptionRow.active)
        with self._transaction() as conn:
            rows = conn.execute(stmt).all()
        return [
            Subscription(
                id=r.id,
                target=Target(kind=r.target_kind, address=r.target_address),
                keyword=r.query,
                active=bool(r.active),
                disabled_reason=r.disabled_reason,
                created_at=r.created_at,
                disabled_at=r.disabled_at,
            )
            for r in rows
        ]

    def disable_subscription(self, subscription_id: int, reason: str) -> None:
        """Stop delivering to a subscription, keeping `reason` for `status` and `list`.

        Its pending deliveries are marked failed, so re-activating it later does not flood
        the target with a backlog.
        """
        with self._transaction(write=True) as conn:
            self._disable(conn, [subscription_id], {subscription_id: reason}, now=_utcnow())

    def _disable(
        self,
        conn: Connection,
        subscription_ids: Sequence[int],
        reasons: Mapping[int, str],
        *,
        now: datetime,
    ) -> tuple[int, int]:
        """Disable these subscriptions; (subscriptions newly disabled, deliveries failed)."""
        disabled = failed = 0
        for subscription_id in subscription_ids:
            reason = reasons[subscription_id]
            disabled += conn.execute(
                update(SubscriptionRow)
                .where(SubscriptionRow.id == subscription_id, SubscriptionRow.active)
                .values(active=False, disabled_reason=reason, disabled_at=now)
            ).rowcount
            failed += conn.execute(
                update(DeliveryRow)
                .where(
                    DeliveryRow.subscription_id == subscription_id,
                    DeliveryRow.status == DeliveryStatus.PENDING.value,
                )
                .values(status=DeliveryStatus.FAILED.value, last_error=reason)
            ).rowcount
            log.warning("store.subscription_disabled id=%d reason=%r", subscription_id, reason)
        return disabled, failed

    def count_subscriptions(self) -> list[SubscriptionCount]:
        """Subscriptions counted by kind, active or not, and reason."""
        with self._transaction() as conn:
            rows = conn.execute(
                select(
                    SubscriptionRow.target_kind,
                    SubscriptionRow.active,
                    SubscriptionRow.disabled_reason,
                    func.count().label("n"),
                )
                .group_by(
                    SubscriptionRow.target_kind,
                    SubscriptionRow.active,
                    SubscriptionRow.disabled_reason,
                )
                .order_by(SubscriptionRow.target_kind)
            ).all()
        return [
            SubscriptionCount(
                kind=r.target_kind,
                active=bool(r.active),
                reason=None if r.active else r.disabled_reason,
                count=int(r.n),
            )
            for r in rows
        ]

    @staticmethod
    def _target_is(target: Target) -> tuple[Any, Any]:
        return (
            TargetOptionRow.target_kind == target.kind,
            TargetOptionRow.target_address == target.address,
        )

    def get_target_option(self, target: Target, name: str) -> str | None:
        """A per-target setting (for example the translation language of a channel)."""
        with self._transaction() as conn:
            return conn.execute(
                select(TargetOptionRow.value).where(
                    *self._target_is(target), TargetOptionRow.name == name
                )
            ).scalar_one_or_none()

    def set_target_option(self, target: Target, name: str, value: str | None) -> None:
        """Set or (with None) clear a per-target setting."""
        with self._transaction(write=True) as conn:
            if value is None:
                conn.execute(
                    delete(TargetOptionRow).where(
                        *self._target_is(target), TargetOptionRow.name == name
                    )
                )
                return
            stmt = self._insert(TargetOptionRow).values(
                target_kind=target.kind, target_address=target.address, name=name, value=value
            )
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["target_kind", "target_address", "name"],
                    set_={"value": stmt.excluded.value},
                )
            )

    # -- the outbox -----------------------------------------------------------------------
    def pending_batches(
        self, *, now: datetime, kinds: Collection[str] | None = None
    ) -> list[Batch]:
        """Due deliveries (pending, next attempt at or before `now`, subscription active),
        one Batch per target of these kinds (or all).

        Targets come in the order of their first subscription; within a batch deliveries are
        ordered by subscription, then newest paper first. `options` holds the target's
        per-target settings; `language`/`translations` are left for the cycle to fill.
        """
        due = (
            select(
                DeliveryRow.subscription_id,
                DeliveryRow.arxiv_id,
                DeliveryRow.attempts,
                SubscriptionRow.target_kind,
                SubscriptionRow.target_address,
                KeywordRow.query,
            )
            .join(SubscriptionRow, SubscriptionRow.id == DeliveryRow.subscription_id)
            .join(KeywordRow, KeywordRow.id == SubscriptionRow.keyword_id)
            .where(
                DeliveryRow.status == DeliveryStatus.PENDING.value,
                DeliveryRow.next_attempt_at <= as_utc(now),
                SubscriptionRow.active,
            )
            .order_by(DeliveryRow.subscription_id)
        )
        options_stmt = select(
            TargetOptionRow.target_kind,
            TargetOptionRow.target_address,
            TargetOptionRow.name,
            TargetOptionRow.value,
        )
        if kinds is not None:
            kind_list = sorted(set(kinds))
            if not kind_list:
                return []
            due = due.where(SubscriptionRow.target_kind.in_(kind_list))
            options_stmt = options_stmt.where(TargetOptionRow.target_kind.in_(kind_list))
        with self._transaction() as conn:
            rows = conn.execute(due).all()
            if not rows:
                return []
            # each paper read once, however many subscriptions are owed it
            papers: dict[str, Paper] = {}
            for id_chunk in _chunks(sorted({r.arxiv_id for r in rows})):
                for row in conn.execute(
                    select(*_PAPER_COLUMNS).where(PaperRow.arxiv_id.in_(id_chunk))
                ):
                    papers[row.arxiv_id] = _paper(row)
            option_rows = conn.execute(options_stmt).all()
        grouped: dict[Target, list[Delivery]] = {}
        for r in rows:
            grouped.setdefault(Target(kind=r.target_kind, address=r.target_address), []).append(
                Delivery(
                    subscription_id=r.subscription_id,
                    keyword=r.query,
                    paper=papers[r.arxiv_id],
                    attempts=r.attempts,
                )
            )
        options: dict[Target, dict[str, str]] = {}
        for o in option_rows:
            target = Target(kind=o.target_kind, address=o.target_address)
            if target in grouped:
                options.setdefault(target, {})[o.name] = o.value

        return [
            Batch(
                target=target, deliveries=_batch_order(deliveries), options=options.get(target, {})
            )
            for target, deliveries in grouped.items()
        ]

    def sent_between(self, target: Target, start: datetime, end: datetime) -> list[Delivery]:
        """Deliveries to `target` sent in [start, end), by subscription, newest paper first.

        What the target's messages carried in that time (the reader's page of one day).
        """
        with self._transaction() as conn:
            rows = conn.execute(
                select(
                    DeliveryRow.subscription_id,
                    DeliveryRow.attempts,
                    KeywordRow.query,
                    *_PAPER_COLUMNS,
                )
                .join(SubscriptionRow, SubscriptionRow.id == DeliveryRow.subscription_id)
                .join(KeywordRow, KeywordRow.id == SubscriptionRow.keyword_id)
                .join(PaperRow, PaperRow.arxiv_id == DeliveryRow.arxiv_id)
                .where(
                    SubscriptionRow.target_kind == target.kind,
                    SubscriptionRow.target_address == target.address,
                    DeliveryRow.status == DeliveryStatus.SENT.value,
                    DeliveryRow.sent_at >= as_utc(start),
                    DeliveryRow.sent_at < as_utc(end),
                )
            ).all()
        deliveries = [
            Delivery(
                subscription_id=r.subscription_id,
                keyword=r.query,
                paper=_paper(r),
                attempts=r.attempts,
            )
            for r in rows
        ]
        return list(_batch_order(deliveries))

    def targets_served_since(self, kind: str, since: datetime) -> set[str]:
        """Addresses of `kind` targets sent a delivery at or after `since`, or still owed one
        (pending, due or waiting for a retry): who needs no "nothing new today" note."""
        stmt = (
            select(SubscriptionRow.target_address)
            .distinct()
            .join(DeliveryRow, DeliveryRow.subscription_id == SubscriptionRow.id)
            .where(
                SubscriptionRow.target_kind == kind,
                (DeliveryRow.status == DeliveryStatus.PENDING.value)
                | (DeliveryRow.sent_at >= as_utc(since)),
            )
        )
        with self._transaction() as conn:
            return set(conn.execute(stmt).scalars())

    def _retry_delay(self, attempts: int) -> timedelta:
        """retry_base * 2**(attempts-1), capped at retry_max."""
        exponent = max(attempts - 1, 0)
        if exponent > 40:  # 2**40 of anything exceeds any sane cap (and timedelta's range)
            return self._retry_max
        return min(self._retry_base * (1 << exponent), self._retry_max)

    def record_outcomes(self, outcomes: Sequence[Outcome], *, now: datetime) -> OutcomeCounts:
        """Apply send results to the outbox in one transaction.

        - SENT: status sent, sent_at = now, attempts + 1.
        - RETRY: attempts + 1, last_error kept, next attempt at now + retry_base *
          2**(attempts - 1) (capped at retry_max); at max_attempts the delivery is failed.
        - PERMANENT or UNAUTHORIZED: the subscription is disabled with the error as its reason
          and all its pending deliveries are failed.
        Outcomes for deliveries that are no longer pending (already recorded) are ignored, so
        recording the same outcomes twice changes nothing.
        """
        now = as_utc(now)
        with self._transaction(write=True) as conn:
            pending = self._pending_attempts(conn, {o.subscription_id for o in outcomes})
            # One compiled UPDATE per kind of change, executed for many primary keys at once
            # (executemany): a per-subscription IN list would let the planner pick the status
            # index and scan the whole outbox for each statement.
            sent: list[dict[str, Any]] = []
            retried: list[dict[str, Any]] = []
            gave_up: list[dict[str, Any]] = []
            reasons: dict[int, str] = {}
            for outcome in outcomes:
                key = (outcome.subscription_id, outcome.arxiv_id)
                if outcome.kind.disables:
                    reasons.setdefault(outcome.subscription_id, outcome.error or "permanent error")
                    continue
                if key not in pending:
                    continue
                attempts = pending.pop(key) + 1
                params = {"s": key[0], "a": key[1], "attempts": attempts}
                if outcome.kind is OutcomeKind.SENT:
                    sent.append(params | {"status": DeliveryStatus.SENT.value, "sent_at": now})
                    continue
                params["last_error"] = outcome.error or "transient error"
                if attempts >= self._max_attempts:
                    gave_up.append(params | {"status": DeliveryStatus.FAILED.value})
                else:
                    due = now + self._retry_delay(attempts)
                    retried.append(params | {"status": DeliveryStatus.PENDING.value, "due": due})
            self._update_deliveries(conn, sent, ("status", "attempts", "sent_at"))
            self._update_deliveries(conn, gave_up, ("status", "attempts", "last_error"))
            self._update_deliveries(conn, retried, ("status", "attempts", "last_error", "due"))
            disabled, failed = self._disable(conn, sorted(reasons), reasons, now=now)
        if gave_up:
            log.warning("store.deliveries_gave_up count=%d", len(gave_up))
        return OutcomeCounts(
            sent=len(sent),
            retried=len(retried),
            failed=len(gave_up) + failed,
            disabled=disabled,
            next_retry=min((p["due"] for p in retried), default=None),
        )

    def list_deliveries(
        self,
        *,
        target: Target | None = None,
        statuses: Collection[DeliveryStatus] | None = None,
        subscription_ids: Collection[int] | None = None,
        limit: int | None = None,
    ) -> list[DeliveryRecord]:
        """Outbox rows for the operator: failed first, then pending by next try, then sent
        newest first; of one target, these statuses or these subscriptions when given."""
        order = case(
            (DeliveryRow.status == DeliveryStatus.FAILED.value, 0),
            (DeliveryRow.status == DeliveryStatus.PENDING.value, 1),
            else_=2,
        )
        stmt = (
            select(
                SubscriptionRow.target_kind,
                SubscriptionRow.target_address,
                KeywordRow.query,
                DeliveryRow.arxiv_id,
                PaperRow.title,
                DeliveryRow.status,
                DeliveryRow.attempts,
                DeliveryRow.last_error,
                DeliveryRow.next_attempt_at,
                DeliveryRow.sent_at,
            )
            .join(SubscriptionRow, SubscriptionRow.id == DeliveryRow.subscription_id)
            .join(KeywordRow, KeywordRow.id == SubscriptionRow.keyword_id)
            .join(PaperRow, PaperRow.arxiv_id == DeliveryRow.arxiv_id)
            .order_by(
                order,
                DeliveryRow.next_attempt_at,
                DeliveryRow.sent_at.desc(),
                SubscriptionRow.id,
                DeliveryRow.arxiv_id,
            )
        )
        if target is not None:
            stmt = stmt.where(
                SubscriptionRow.target_kind == target.kind,
                SubscriptionRow.target_address == target.address,
            )
        if statuses is not None:
            stmt = stmt.where(DeliveryRow.status.in_(sorted(s.value for s in statuses)))
        if subscription_ids is not None:
            stmt = stmt.where(DeliveryRow.subscription_id.in_(sorted(subscription_ids)))
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._transaction() as conn:
            rows = conn.execute(stmt).all()
        return [
            DeliveryRecord(
                target=Target(kind=r.target_kind, address=r.target_address),
                keyword=r.query,
                arxiv_id=r.arxiv_id,
                title=r.title,
                status=DeliveryStatus(r.status),
                attempts=r.attempts,
                last_error=r.last_error,
                next_attempt_at=r.next_attempt_at,
                sent_at=r.sent_at,
            )
            for r in rows
        ]

    def count_outbox(self) -> list[OutboxCount]:
        """The outbox by target kind and status, deferred (pending after a failed try) apart,
        with the earliest next try of the deferred ones; one aggregate query."""
        deferred = (DeliveryRow.status == DeliveryStatus.PENDING.value) & (DeliveryRow.attempts > 0)
        # A subquery names the state once: grouping by the CASE itself would repeat its bound
        # values, which PostgreSQL does not take for the same expression.
        rows_by_state = (
            select(
                SubscriptionRow.target_kind.label("kind"),
                case((deferred, literal("deferred")), else_=DeliveryRow.status).label("state"),
                DeliveryRow.next_attempt_at,
            )
            .join(SubscriptionRow, SubscriptionRow.id == DeliveryRow.subscription_id)
            .subquery()
        )
        with self._transaction() as conn:
            rows = conn.execute(
                select(
                    rows_by_state.c.kind,
                    rows_by_state.c.state,
                    func.count().label("n"),
                    func.min(rows_by_state.c.next_attempt_at).label("next_attempt_at"),
                )
                .group_by(rows_by_state.c.kind, rows_by_state.c.state)
                .order_by(rows_by_state.c.kind, rows_by_state.c.state)
            ).all()
        return [
            OutboxCount(
                kind=r.kind,
                status=r.state,
                count=int(r.n),
                # min() over a label loses the column type: re-read it as the stored UTC time
                next_attempt_at=_as_time(r.next_attempt_at) if r.state == "deferred" else None,
            )
            for r in rows
        ]

    def reopen_deliveries(self, subscription_ids: Collection[int], *, now: datetime) -> Reopened:
        """Re-activate these subscriptions where disabled, make their failed deliveries pending
        with attempts starting over, and their deferred ones due at `now`; one transaction."""
        now = as_utc(now)
        resumed = failed = deferred = 0
        with self._transaction(write=True) as conn:
            for chunk in _chunks(sorted(set(subscription_ids))):
                resumed += conn.execute(
                    update(SubscriptionRow)
                    .where(SubscriptionRow.id.in_(chunk), ~SubscriptionRow.active)
                    .values(active=True, disabled_reason=None, disabled_at=None)
                ).rowcount
                failed += conn.execute(
                    update(DeliveryRow)
                    .where(
                        DeliveryRow.subscription_id.in_(chunk),
                        DeliveryRow.status == DeliveryStatus.FAILED.value,
                    )
                    .values(status=DeliveryStatus.PENDING.value, attempts=0, next_attempt_at=now)
                ).rowcount
                deferred += conn.execute(
                    update(DeliveryRow)
                    .where(
                        DeliveryRow.subscription_id.in_(chunk),
                        DeliveryRow.status == DeliveryStatus.PENDING.value,
                        DeliveryRow.next_attempt_at > now,
                    )
                    .values(next_attempt_at=now)
                ).rowcount
        log.info(
            "store.deliveries_reopened failed=%d deferred=%d resumed=%d", failed, deferred, resumed
        )
        return Reopened(failed=failed, deferred=deferred, resumed=resumed)

    def _update_deliveries(
        self, conn: Connection, params: list[dict[str, Any]], columns: Sequence[str]
    ) -> None:
        """Set `columns` (bound by name; `due` is next_attempt_at) on pending rows by key."""
        if not params:
            return
        table = DeliveryRow.metadata.tables[DeliveryRow.__tablename__]
        values: dict[str, Any] = {
            ("next_attempt_at" if name == "due" else name): bindparam(name) for name in columns
        }
        stmt = (
            update(table)
            .where(
                table.c.subscription_id == bindparam("s"),
                table.c.arxiv_id == bindparam("a"),
                table.c.status == DeliveryStatus.PENDING.value,
            )
            .values(values)
        )
        for batch in _chunks(params, 1000):
            conn.execute(stmt, list(batch))

    def _pending_attempts(
        self, conn: Connection, subscription_ids: Collection[int]
    ) -> dict[tuple[int, str], int]:
        """Attempts so far of every pending delivery of these subscriptions."""
        attempts: dict[tuple[int, str], int] = {}
        for sub_chunk in _chunks(sorted(subscription_ids)):
            for s, a, n in conn.execute(
                select(
                    DeliveryRow.subscription_id, DeliveryRow.arxiv_id, DeliveryRow.attempts
                ).where(
                    DeliveryRow.subscription_id.in_(sub_chunk),
                    DeliveryRow.status == DeliveryStatus.PENDING.value,
                )
            ):
                attempts[(s, a)] = n
        return attempts

    def check_writable(self) -> None:
        """Write (and commit) one small row; StoreError when the database cannot be written.

        A read-only file, a read-only PostgreSQL session or a full disk all fail here, before
        the cycle sends anything it could not record.
        """
        with self._transaction(write=True) as conn:
            self._set_state(conn, WRITE_CHECK_KEY, _utcnow().isoformat())

    # -- leases ---------------------------------------------------------------------------
    def _clock(self, conn: Connection) -> datetime:
        """Now, by the database's clock where it has one.

        Replicas on several machines share one PostgreSQL: its clock is the one they all agree
        on, whatever their own clocks say. SQLite lives on this machine, whose clock it is.
        """
        if self._dialect == "postgresql":
            value = conn.execute(select(func.clock_timestamp())).scalar_one()
            return as_utc(value)
        return _utcnow()

    @staticmethod
    def _holder(row: Any) -> LeaseHolder:
        return LeaseHolder(
            name=row.name,
            owner=row.owner,
            host=row.host,
            pid=row.pid,
            acquired_at=row.acquired_at,
            expires_at=row.expires_at,
        )

    def acquire_lease(
        self, name: str, *, owner: str, host: str, pid: int, ttl: timedelta
    ) -> LeaseHolder:
        """Take lease `name` for `ttl` when free, expired or already `owner`'s; the holder after.

        One conditional UPDATE decides: on SQLite the write transaction (BEGIN IMMEDIATE) runs
        alone; on PostgreSQL a concurrent UPDATE of the same row waits for the first to commit
        and re-checks the condition, so exactly one of two contenders gets the row. The first
        lease of a name is an INSERT that a concurrent one cannot duplicate (primary key).
        """
        table = LeaseRow.metadata.tables[LeaseRow.__tablename__]
        with self._transaction(write=True) as conn:
            now = self._clock(conn)
            values = {
                "owner": owner,
                "host": host,
                "pid": pid,
                "acquired_at": now,
                "expires_at": now + ttl,
            }
            taken = conn.execute(
                update(table)
                .where(
                    table.c.name == name,
                    (table.c.owner.is_(None))
                    | (table.c.owner == owner)
                    | (table.c.expires_at <= now),
                )
                .values(values)
            ).rowcount
            if not taken:
                conn.execute(
                    self._insert(LeaseRow)
                    .values(name=name, **values)
                    .on_conflict_do_nothing(index_elements=["name"]),
                    execution_options=_ROWCOUNT,
                )
            row = conn.execute(select(table).where(table.c.name == name)).one()
        return self._holder(row)

    def renew_lease(self, name: str, *, owner: str, ttl: timedelta) -> bool:
        """Extend `owner`'s lease to `ttl` from now; False when it is no longer `owner`'s."""
        table = LeaseRow.metadata.tables[LeaseRow.__tablename__]
        with self._transaction(write=True) as conn:
            now = self._clock(conn)
            renewed = conn.execute(
                update(table)
                .where(table.c.name == name, table.c.owner == owner)
                .values(expires_at=now + ttl)
            ).rowcount
        return bool(renewed)

    def release_lease(self, name: str, *, owner: str) -> None:
        """Free the lease if `owner` still holds it; host, pid and times stay as history."""
        table = LeaseRow.metadata.tables[LeaseRow.__tablename__]
        with self._transaction(write=True) as conn:
            now = self._clock(conn)
            conn.execute(
                update(table)
                .where(table.c.name == name, table.c.owner == owner)
                .values(owner=None, expires_at=now)
            )

    def lease_holder(self, name: str) -> LeaseHolder | None:
        """Who holds lease `name` now; None when it is free or has expired."""
        table = LeaseRow.metadata.tables[LeaseRow.__tablename__]
        with self._transaction() as conn:
            now = self._clock(conn)
            row = conn.execute(
                select(table).where(
                    table.c.name == name, table.c.owner.is_not(None), table.c.expires_at > now
                )
            ).one_or_none()
        return None if row is None else self._holder(row)

    # -- runs and state -------------------------------------------------------------------
    def _set_state(self, conn: Connection, key: str, value: str) -> None:
        stmt = self._insert(StateRow).values(key=key, value=value)
        conn.execute(
            stmt.on_conflict_do_update(index_elements=["key"], set_={"value": stmt.excluded.value})
        )

    def get_watermark(self) -> datetime | None:
        """The upper end of the last complete harvest window (UTC), or None before the first."""
        value = self.get_state(WATERMARK_KEY)
        return None if value is None else as_utc(datetime.fromisoformat(value))

    def record_run(self, report: RunReport) -> None:
        """Append one cycle to the runs table."""
        with self._transaction(write=True) as conn:
            conn.execute(
                insert(RunRow).values(
                    started_at=report.started_at,
                    finished_at=report.finished_at,
                    ok=report.ok,
                    requests=report.requests,
                    throttled=report.throttled,
                    harvested=report.harvested,
                    new_papers=report.new_papers,
                    new_matches=report.new_matches,
                    sent=report.sent,
                    failed=report.failed,
                    disabled=report.disabled,
                    error=report.error,
                    warnings=list(report.warnings),
                    retries=report.retries,
                    deferred=report.deferred,
                    next_retry_at=report.next_retry_at,
                )
            )

    def recent_runs(self, limit: int = 10) -> list[RunReport]:
        """The latest cycles, newest first."""
        with self._transaction() as conn:
            rows = conn.execute(
                select(RunRow).order_by(RunRow.started_at.desc(), RunRow.id.desc()).limit(limit)
            ).all()
        return [self._run(r) for r in rows]

    def last_ok_run(self) -> RunReport | None:
        """The latest cycle that succeeded, or None."""
        with self._transaction() as conn:
            row = conn.execute(
                select(RunRow)
                .where(RunRow.ok)
                .order_by(RunRow.started_at.desc(), RunRow.id.desc())
                .limit(1)
            ).one_or_none()
        return None if row is None else self._run(row)

    @staticmethod
    def _run(r: Any) -> RunReport:
        return RunReport(
            started_at=r.started_at,
            finished_at=r.finished_at,
            ok=bool(r.ok),
            requests=r.requests,
            throttled=r.throttled,
            harvested=r.harvested,
            new_papers=r.new_papers,
            new_matches=r.new_matches,
            sent=r.sent,
            failed=r.failed,
            disabled=r.disabled,
            error=r.error,
            warnings=tuple(r.warnings or ()),
            retries=r.retries,
            deferred=r.deferred,
            next_retry_at=r.next_retry_at,
        )

    def run_totals(self) -> RunTotals:
        """Sums over every recorded cycle (one aggregate query)."""
        summed = (
            RunRow.requests,
            RunRow.retries,
            RunRow.throttled,
            RunRow.harvested,
            RunRow.new_papers,
            RunRow.new_matches,
            RunRow.sent,
            RunRow.deferred,
            RunRow.failed,
            RunRow.disabled,
        )
        with self._transaction() as conn:
            row = conn.execute(
                select(
                    func.count().filter(RunRow.ok).label("cycles_ok"),
                    func.count().filter(~RunRow.ok).label("cycles_failed"),
                    *(func.coalesce(func.sum(c), 0).label(c.key) for c in summed),
                )
            ).one()
        return RunTotals(**{name: int(value) for name, value in row._mapping.items()})

    def get_state(self, key: str) -> str | None:
        """A small named value kept between runs (alert bookkeeping and the like)."""
        with self._transaction() as conn:
            return conn.execute(
                select(StateRow.value).where(StateRow.key == key)
            ).scalar_one_or_none()

    def set_state(self, key: str, value: str | None) -> None:
        """Set or (with None) delete a named value."""
        with self._transaction(write=True) as conn:
            if value is None:
                conn.execute(delete(StateRow).where(StateRow.key == key))
            else:
                self._set_state(conn, key, value)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _as_time(value: Any) -> datetime | None:
    """An aggregate's timestamp as an aware UTC datetime (SQLite hands back text)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return as_utc(value)
