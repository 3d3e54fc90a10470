"""``teacher``: question/answer pairs written by a teacher model behind an OpenAI-compatible API.

The document (already cleaned and scrubbed: the teacher never sees raw personal data) is cut into
chunks of whole clauses; each chunk is sent with a prompt asking for JSON
``[{"question": ..., "answer": ...}]`` grounded in it. A reply is kept only if it parses (a
```json fence is tolerated), fits the schema, has non-empty strings, the answer's content words
appear in the chunk (``min_support``) and no personal-data placeholder (``[EMAIL]``, …) leaked.
Every pair records the chunk's span, the teacher model and the prompt id; the run's summary
(requests, cache hits, accepted and rejected pairs by reason) goes into the data manifest.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from lexlora.artifacts.pairs import Pair, make_pair
from lexlora.data.builders.base import (
    BuildContext,
    BuilderOptions,
    DocumentView,
    clause_excerpt,
    options,
)
from lexlora.data.segment import split_clauses
from lexlora.data.teacher_client import (
    TeacherClient,
    TeacherSettings,
    resolve_api_key,
)
from lexlora.progress import Bar
from lexlora.recipe import PII_TYPES, BuilderConfig

NAME = "teacher"

PROMPT_VERSION = 1
PROMPTS = {
    # Small instruct models (SmolLM2-135M) follow a line format far better than JSON.
    "legal_qa_lines": (
        "Text:\n{chunk}\n\nWrite {n} questions about the text, each followed by its answer "
        "copied from the text. Use this format:\nQ: <question>\nA: <answer>"
    ),
    "legal_qa": (
        "Read this excerpt of a legal document and write {n} question and answer pairs that a "
        "lawyer could ask about it. Every answer must be stated in the excerpt itself; reuse its "
        'wording. Reply with JSON only: a list of objects with the keys "question" and '
        '"answer".\n\nExcerpt:\n"""\n{chunk}\n"""'
    ),
    "clause_explain": (
        "Read this clause of a legal document and write {n} pairs in which the question asks what "
        "the clause requires, permits or forbids, and the answer explains it using the clause's "
        'own wording. Reply with JSON only: a list of objects with the keys "question" and '
        '"answer".\n\nClause:\n"""\n{chunk}\n"""'
    ),
}


class TeacherOptions(BuilderOptions):
    """``data.builders.teacher.options``: the teacher endpoint, how documents are cut into
    chunks, the prompt, and the run's budget."""

    base_url: str = Field(description="The teacher's OpenAI-compatible base URL.")
    model: str = Field(description="The teacher model's name at that endpoint.")
    api_key_env: str | None = Field(None, description="Environment variable holding the key.")
    pairs_per_chunk: int = Field(3, ge=1)
    max_chunks: int = Field(4, ge=1, description="Chunks asked per document.")
    chunk_chars: int = Field(1200, ge=1)
    temperature: float = Field(0.0, ge=0)
    prompt: str = "legal_qa"
    max_requests: int | None = Field(None, ge=0, description="Budget: requests in the run.")
    max_tokens_budget: int | None = Field(None, ge=0, description="Budget: completion tokens.")
    max_tokens: int = Field(512, ge=1, description="Completion tokens per request.")
    concurrency: int = Field(4, ge=1)
    cache_dir: str | None = Field(None, description="Default: LEXLORA_HOME/teacher-cache.")
    timeout: float = Field(60.0, ge=0)
    retries: int = Field(3, ge=0)
    retry_backoff: float = Field(1.0, ge=0)
    min_support: float = Field(0.5, ge=0, description="Share of an answer's words in the chunk.")

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.fullmatch(r"https?://\S+", value.strip()):
            raise ValueError("expected an http(s) URL")
        return value.strip()

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("required (the teacher model's name at base_url)")
        return value

    @field_validator("prompt")
    @classmethod
    def _known_prompt(cls, value: str) -> str:
        if value not in PROMPTS:
            raise ValueError(f"unknown prompt {value!r}; expected one of: {', '.join(PROMPTS)}")
        return value


PLACEHOLDER = re.compile(r"\[(?:" + "|".join(PII_TYPES) + r")\]")
_QA_LINE = re.compile(
    r"^\s*(?:\d+[.)]\s*)?(?P<tag>q|question|a|answer)\s*\d*\s*[:.]\s*(?P<text>.*)$", re.IGNORECASE
)
_ANSWER_PREFIX = re.compile(r"^(?:the answer is|answer)\s*[:.]\s*", re.IGNORECASE)
_FENCE = re.compile(r"```(?:json)?[ \t]*\n?(.*?)```", re.DOTALL | re.IGNORECASE)
_WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "of",
        "to",
        "in",
        "on",
        "at",
        "by",
        "for",
        "with",
        "from",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "this",
        "that",
        "these",
        "those",
        "it",
        "its",
        "any",
        "all",
        "each",
        "such",
        "not",
        "no",
        "nor",
        "may",
        "shall",
        "must",
        "will",
        "can",
        "which",
        "who",
        "whom",
        "what",
        "when",
        "where",
        "why",
        "how",
        "than",
        "then",
        "there",
        "their",
        "they",
        "them",
        "he",
        "she",
        "his",
        "her",
        "we",
        "our",
        "you",
        "your",
        "i",
        "do",
        "does",
        "did",
        "has",
        "have",
        "had",
        "if",
        "so",
        "into",
        "onto",
        "upon",
        "under",
        "over",
        "per",
    ]
)

_NUMBERING = re.compile(r"^\s*\d+[.)]\s+")


class TeacherRun:
    """One data run's teacher: the client, the progress bar and the tally of pairs."""

    def __init__(self, opts: dict[str, Any]) -> None:
        self.opts = opts
        self.prompt_id = opts["prompt"]
        self.prompt_key = {
            "id": self.prompt_id,
            "version": PROMPT_VERSION,
            "text": PROMPTS[self.prompt_id],
            "pairs_per_chunk": opts["pairs_per_chunk"],
            "max_tokens": opts["max_tokens"],
        }
        self.client = TeacherClient(_settings(opts))
        self.accepted = 0
        self.chunks = 0
        self.rejected: Counter[str] = Counter()
        self.lock = threading.Lock()  # the tallies, from the worker threads
        self.bar = Bar("teacher chunks")

    def chunk_pairs(self, chunk: str) -> tuple[list[tuple[str, str]], Counter[str]]:
        """The teacher's valid pairs for ``chunk`` and the rejections by reason."""
        n = self.opts["pairs_per_chunk"]
        prompt = PROMPTS[self.prompt_id].format(n=n, chunk=chunk)
        reply = self.client.ask([{"role": "user", "content": prompt}], self.prompt_key, chunk)
        self.bar.update(advance=1)
        if reply is None:
            return [], Counter({"budget": 1})
        return validate_reply(reply, chunk, self.opts["min_support"], n)

    def summary(self) -> dict[str, Any]:
        self.bar.close()
        self.client.close()
        st, s = self.client.stats, self.client.settings
        return {
            "base_url": s.base_url,
            "model": s.model,
            "prompt": self.prompt_id,
            "prompt_version": PROMPT_VERSION,
            "chunks": self.chunks,
            "requests": st.requests,
            "cache_hits": st.cache_hits,
            "tokens": st.tokens,
            "retried": st.retried,
            "budget_exhausted": st.budget_exhausted,
            "accepted": self.accepted,
            "rejected": dict(sorted(self.rejected.items())),
        }


def build(view: DocumentView, cfg: BuilderConfig, ctx: BuildContext) -> list[Pair]:
    run = _run_for(ctx, cfg)
    chunks = _chunks(view.text, run.opts["chunk_chars"], run.opts["max_chunks"])
    workers = max(1, min(run.opts["concurrency"], len(chunks)))
    with ThreadPoolExecutor(workers, thread_name_prefix="teacher") as pool:
        results = list(pool.map(lambda c: run.chunk_pairs(c[0]), chunks))
    pairs: list[Pair] = []
    seen: set[str] = set()
    rejected: Counter[str] = Counter()
    for (_, span), (good, bad) in zip(chunks, results, strict=True):
        rejected += bad
        for question, answer in good:
            key = " ".join(question.lower().split())
            if key in seen or len(pairs) >= cfg.max_per_document:
                rejected["duplicate" if key in seen else "max_per_document"] += 1
                continue
            seen.add(key)
            pairs.append(
                make_pair(
                    ctx.system_prompt,
                    question,
                    answer,
                    doc_id=view.doc.id,
                    builder=NAME,
                    span=span,
                    task=run.prompt_id,
                    teacher_model=run.client.settings.model,
                    prompt_id=f"{run.prompt_id}@v{PROMPT_VERSION}",
                )
            )
    with run.lock:
        run.chunks += len(chunks)
        run.accepted += len(pairs)
        run.rejected += rejected
    return pairs


def finish(ctx: BuildContext) -> dict[str, Any] | None:
    """The run's teacher summary (for the manifest), or ``None`` when the teacher did not run."""
    run: TeacherRun | None = ctx.state.pop(NAME, None)
    return None if run is None else run.summary()


def _run_for(ctx: BuildContext, cfg: BuilderConfig) -> TeacherRun:
    run = ctx.state.get(NAME)
    if run is None:
        run = TeacherRun(_validated(cfg))
        ctx.state[NAME] = run
    return run


def _validated(cfg: BuilderConfig) -> dict[str, Any]:
    return options(cfg, NAME, TeacherOptions)


def _settings(opts: dict[str, Any]) -> TeacherSettings:
    from lexlora.home import lexlora_home

    cache = opts["cache_dir"]
    return TeacherSettings(
        base_url=opts["base_url"].rstrip("/"),
        model=opts["model"],
        api_key=resolve_api_key(opts["api_key_env"]),
        temperature=float(opts["temperature"]),
        max_tokens=opts["max_tokens"],
        max_requests=opts["max_requests"],
        max_tokens_budget=opts["max_tokens_budget"],
        cache_dir=Path(cache).expanduser() if cache else lexlora_home() / "teacher-cache",
        timeout=float(opts["timeout"]),
        retries=opts["retries"],
        retry_backoff=float(opts["retry_backoff"]),
    )


def _chunks(text: str, chunk_chars: int, max_chunks: int) -> list[tuple[str, tuple[int, int]]]:
    """Up to ``max_chunks`` consecutive runs of whole clauses (flattened) and their spans."""
    clauses = split_clauses(text)
    chunks, i = [], 0
    while i < len(clauses) and len(chunks) < max_chunks:
        chunk, span = clause_excerpt(text, clauses[i:], chunk_chars)
        if chunk:
            chunks.append((chunk, span))
        nxt = next((j for j in range(i, len(clauses)) if clauses[j][0] >= span[1]), len(clauses))
        i = max(nxt, i + 1)
    return chunks


def validate_reply(
    reply: str, chunk: str, min_support: float, limit: int
) -> tuple[list[tuple[str, str]], Counter[str]]:
    """Parse and check a teacher reply: kept (question, answer) pairs and rejections by reason."""
    rejected: Counter[str] = Counter()
    data = parse_reply(reply)
    if data is None:
        return [], Counter({"unparseable": 1})
    if isinstance(data, dict) and isinstance(data.get("pairs"), list):
        data = data["pairs"]
    if not isinstance(data, list):
        return [], Counter({"schema": 1})
    chunk_words = set(_WORD.findall(chunk.lower()))
    kept: list[tuple[str, str]] = []
    for item in data:
        if not isinstance(item, dict) or not {"question", "answer"} <= set(item):
            rejected["schema"] += 1
            continue
        question, answer = item["question"], item["answer"]
        if not isinstance(question, str) or not isinstance(answer, str):
            rejected["schema"] += 1
            continue
        question, answer = " ".join(question.split()), " ".join(answer.split())
        if not question or not answer:
            rejected["empty"] += 1
        elif PLACEHOLDER.search(question) or PLACEHOLDER.search(answer):
            rejected["placeholder"] += 1
        elif not_an_answer(question, answer):
            rejected["not an answer"] += 1
        elif support(answer, chunk_words) < min_support:
            rejected["unsupported"] += 1
        elif len(kept) >= limit:
            rejected["over pairs_per_chunk"] += 1
        else:
            kept.append((question, answer))
    return kept, rejected


def parse_reply(reply: str) -> Any:
    """The reply as JSON (a ```json fence is tolerated), else as ``Q:``/``A:`` lines turned into
    ``[{"question", "answer"}]``; ``None`` when it is neither."""
    fenced = _FENCE.search(reply)
    try:
        return json.loads(fenced.group(1) if fenced else reply)
    except ValueError:
        pass
    items: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    field_ = ""
    for line in reply.splitlines():
        match = _QA_LINE.match(line)
        if match:
            field_ = "question" if match["tag"].lower().startswith("q") else "answer"
            if field_ == "question" or current is None or "answer" in current:
                current = {}
                items.append(current)
            text = _NUMBERING.sub("", match["text"].strip())
            current[field_] = _ANSWER_PREFIX.sub("", text) if field_ == "answer" else text
        elif current is not None and line.strip() and field_ in current:
            current[field_] += " " + line.strip()  # an answer (or question) spanning lines
    items = [item for item in items if any(v.strip() for v in item.values())]
    return items or None


def not_an_answer(question: str, answer: str) -> bool:
    """An "answer" that is itself a question, or says nothing the question does not."""
    if answer.rstrip().endswith("?"):
        return True
    words = _content_words(answer)
    return not words or set(words) <= set(_content_words(question))


def _content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS and len(w) > 1]


def support(answer: str, chunk_words: set[str]) -> float:
    """Share of the answer's content words that appear in the chunk (0 when it has none)."""
    words = _content_words(answer)
    if not words:
        return 0.0
    return sum(w in chunk_words for w in words) / len(words)
