# daily-papers: the scheduler, chat bots and web server in one container.
#   docker build -t daily-papers .
#   docker run -d -v daily-papers-data:/data -e DAILY_PAPERS_ARXIV_CONTACT=you@lab.org \
#     [-e SLACK_BOT_TOKEN=... -e SLACK_APP_TOKEN=...] daily-papers
# The database, README snapshot and digest archive live on the /data volume.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DAILY_PAPERS_SERVICE_DATA_DIR=/data \
    DAILY_PAPERS_CONFIG=/data/daily-papers.toml \
    DAILY_PAPERS_WEB_HOST=0.0.0.0

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY digest ./digest
COPY storage ./storage
COPY bot ./bot
COPY templates ./templates
RUN pip install -c constraints.txt . \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin papers \
 && mkdir -p /data && chown papers /data

USER papers
VOLUME ["/data"]
EXPOSE 8080
# First start without a config file: write the commented starter, then serve.
CMD ["sh", "-c", "[ -f \"$DAILY_PAPERS_CONFIG\" ] || daily-papers init --path \"$DAILY_PAPERS_CONFIG\"; exec daily-papers serve"]
