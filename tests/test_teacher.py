"""The ``teacher`` builder: pairs from an OpenAI-compatible endpoint, cached, budgeted, retried.

Mechanics against the project's own ``lexlora serve`` (tiny model: its replies are nonsense, so
they are rejected as unparseable), and crafted replies from a small stub server in this file.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from support import folder_recipe, write_contract_folder

from lexlora.data.build import build_dataset
from lexlora.data.builders.teacher import validate_reply
from lexlora.data.clean import flatten
from lexlora.errors import LexloraError
from lexlora.serve.launch import free_port, serve_process
from lexlora.serve.tenants import hash_key

KEY = "sk-teacher-test"
KEY_ENV = "LEXLORA_TEST_TEACHER_KEY"
N_DOCS = 6
FILES = ("train.jsonl", "validation.jsonl", "test.jsonl", "documents.jsonl")


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("teacher-serve")
    config = {
        "base_model": str(tiny_model),
        "threads": 1,
        "tenants": {"acme": {"api_key_sha256": [hash_key(KEY)]}},
    }
    with serve_process(config, tmp) as served:
        yield served.url


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def recipe(tmp: Path, out: str, base_url: str | None, builders: dict | None = None, **opts):
    folder = tmp / "contracts"
    if not folder.exists():
        write_contract_folder(folder, n_docs=N_DOCS)
    options = {
        "base_url": base_url,
        "model": "base",
        "api_key_env": KEY_ENV,
        "max_chunks": 2,
        "chunk_chars": 400,
        "max_tokens": 8,
        "concurrency": 2,
        "cache_dir": str(tmp / "cache"),
        "retry_backoff": 0.05,
        **opts,
    }
    overrides = {}
    if "leakage" in opts:
        overrides["leakage"] = options.pop("leakage")
    return folder_recipe(
        folder,
        tmp / out,
        builders={"teacher": {"options": options}, **(builders or {})},
        **overrides,
    )


def served_chat_requests(url: str) -> int:
    text = httpx.get(url + "/metrics").text
    total = 0
    for line in text.splitlines():
        if line.startswith("lexlora_requests_total{") and 'route="/v1/chat/completions"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def read_bytes(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in FILES}


def test_real_server_rejects_nonsense_caches_and_budgets(server, tmp_path):
    before = served_chat_requests(server)
    r1 = recipe(tmp_path, "out1", server + "/v1")
    m1 = build_dataset(r1)
    t1 = m1.teacher
    chunks = t1.chunks
    assert chunks >= N_DOCS
    assert t1.requests == chunks and t1.cache_hits == 0
    # the tiny model writes nonsense (greedy, so always the same): every reply is unparseable
    assert t1.accepted == 0 and t1.rejected == {"unparseable": chunks}, t1
    assert t1.model == "base" and t1.prompt == "legal_qa"
    assert served_chat_requests(server) - before == chunks

    # second build, same cache: nothing is sent, the files are byte-identical
    r2 = recipe(tmp_path, "out2", server + "/v1")
    t2 = build_dataset(r2).teacher
    assert t2.requests == 0 and t2.cache_hits == chunks
    assert t2.rejected == t1.rejected
    assert served_chat_requests(server) - before == chunks
    assert read_bytes(r1.dataset_dir) == read_bytes(r2.dataset_dir)

    # budget: a fresh cache and max_requests=2 send exactly two requests; the rest is "budget"
    r3 = recipe(tmp_path, "out3", server + "/v1", max_requests=2, cache_dir=str(tmp_path / "c3"))
    t3 = build_dataset(r3).teacher
    assert t3.requests == 2 and t3.budget_exhausted is True
    assert t3.rejected == {"budget": chunks - 2, "unparseable": 2}
    assert served_chat_requests(server) - before == chunks + 2


class Stub:
    """A tiny OpenAI-compatible chat server: ``reply(chunk)`` → (status, content)."""

    def __init__(self, reply: Callable[[str], tuple[int, str]]) -> None:
        self.reply, self.hits, self.lock = reply, 0, threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.hits += 1
                prompt = body["messages"][-1]["content"]
                chunk = prompt.split('"""\n', 1)[1].rsplit('\n"""', 1)[0]
                status, content = stub.reply(chunk)
                if status == 200:
                    payload = {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": content},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
                    }
                else:
                    payload = {"error": {"message": content}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def crafted(chunk: str) -> tuple[int, str]:
    """One good pair grounded in the chunk, and one of each kind of bad pair, in a json fence."""
    words = chunk.split()
    items = [
        {
            "question": f"What does the text starting '{' '.join(words[:4])}' say?",
            "answer": " ".join(words[:12]),
        },
        {"question": "Whom should I contact?", "answer": "Write to [EMAIL] at once."},
        {"question": "What is the colour?", "answer": "Zebra quantum nebula marmalade."},
        {"question": "", "answer": "Nothing."},
        {"prompt": "wrong keys"},
    ]
    return 200, "```json\n" + json.dumps(items) + "\n```"


def test_crafted_replies_provenance_and_split(tmp_path):
    seen: list[str] = []
    stub = Stub(lambda chunk: (seen.append(chunk), crafted(chunk))[1])
    try:
        r = recipe(tmp_path, "out", stub.url, builders={"section_qa": {}})
        m = build_dataset(r)
    finally:
        stub.close()
    t = m.teacher
    chunks = t.chunks
    assert stub.hits == chunks == t.requests == len(seen)
    # the teacher only sees scrubbed text: placeholders, never the contacts' emails or phones
    assert any("[EMAIL]" in c for c in seen)
    assert not any("@example.com" in c or "(555)" in c for c in seen)
    assert t.accepted == chunks
    assert t.rejected == {
        "empty": chunks,
        "placeholder": chunks,
        "schema": chunks,
        "unsupported": chunks,
    }
    out = r.dataset_dir
    docs = {}
    for line in (out / "documents.jsonl").read_text().splitlines():
        d = json.loads(line)
        docs[d["id"]] = d
    teacher_pairs = []
    for split in ("train", "validation", "test"):
        for line in (out / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            meta = row["meta"]
            # split by document like every other pair
            assert docs[meta["doc_id"]]["split"] == split
            if meta["builder"] != "teacher":
                assert meta["teacher_model"] is None
                continue
            teacher_pairs.append(row)
            assert meta["teacher_model"] == "base"
            assert meta["prompt_id"] == "legal_qa@v1" and meta["task"] == "legal_qa"
            start, end = meta["span"]
            source = flatten(docs[meta["doc_id"]]["text"][start:end])
            answer = row["messages"][-1]["content"]
            assert source.startswith(answer)
            assert "[EMAIL]" not in answer
    assert len(teacher_pairs) == chunks
    assert m.pairs.by_builder["teacher"]["train"] > 0
    # the teacher's answers go through the leakage check like any other pair
    stub = Stub(crafted)
    try:
        strict = recipe(tmp_path, "strict", stub.url, leakage={"ngram": 4, "max_overlap": 0.0})
        with pytest.raises(LexloraError, match="leakage check failed"):
            build_dataset(strict)
    finally:
        stub.close()
    assert not (tmp_path / "strict").exists()


def test_retries_while_server_is_stopped_and_restarted(tiny_model, tmp_path):
    """The teacher server goes away between runs; a run started while it is down keeps retrying
    with backoff and finishes once the server is back on the same port."""
    config = {
        "base_model": str(tiny_model),
        "threads": 1,
        "tenants": {"acme": {"api_key_sha256": [hash_key(KEY)]}},
    }
    port = free_port()
    (tmp_path / "srv1").mkdir()
    (tmp_path / "srv2").mkdir()
    opts = {"max_chunks": 1, "retries": 4, "retry_backoff": 1.0}
    with serve_process(config, tmp_path / "srv1", port=port) as served:
        url = served.url
        r1 = recipe(tmp_path, "out1", url + "/v1", **opts)
        first = build_dataset(r1).teacher
    assert first.requests == N_DOCS and first.retried == 0
    # the server is down now: a fresh cache forces requests, which are refused and retried
    r2 = recipe(tmp_path, "out2", url + "/v1", cache_dir=str(tmp_path / "c2"), **opts)
    result: dict = {}

    def run() -> None:
        try:
            result.update(build_dataset(r2).teacher.model_dump())
        except Exception as exc:  # reported below
            result["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(2.0)
    assert worker.is_alive(), "the build should be waiting for the server, not done or failed"
    with serve_process(config, tmp_path / "srv2", port=port):
        worker.join(120)
    assert not worker.is_alive() and result, "the build did not finish after the restart"
    assert "error" not in result, result.get("error")
    assert result["retried"] >= 1 and result["requests"] == N_DOCS
    assert result["rejected"] == first.rejected  # same greedy replies as before the stop
    assert read_bytes(r2.dataset_dir) == read_bytes(r1.dataset_dir)


def test_retries_503_then_succeeds(tmp_path):
    calls = []

    def flaky(chunk):
        calls.append(chunk)
        return (503, "busy") if len(calls) <= 2 else crafted(chunk)

    stub = Stub(flaky)
    try:
        r = recipe(tmp_path, "out", stub.url, max_chunks=1, concurrency=1, retries=3)
        t = build_dataset(r).teacher
    finally:
        stub.close()
    assert stub.hits == N_DOCS + 2  # two 503s retried by the client, then every chunk answered
    assert t.requests == N_DOCS and t.accepted == N_DOCS
    assert t.retried == 2  # the openai client's own retries are counted too


def test_validate_reply_reasons():
    chunk = "The Customer shall pay all fees within thirty days of the invoice date."
    good = '[{"question": "When?", "answer": "Within thirty days of the invoice date."}]'
    assert validate_reply(good, chunk, 0.5, 3)[0] == [
        ("When?", "Within thirty days of the invoice date.")
    ]
    assert validate_reply("```json\n" + good + "\n```", chunk, 0.5, 3)[0]
    assert validate_reply("not json {", chunk, 0.5, 3)[1] == {"unparseable": 1}
    # the line format small models follow: numbered, "Question:"/"Answer:", answers over lines
    lines = (
        "Here are two pairs.\nQ1: When are fees due?\nA: The answer is: within thirty days\n"
        "of the invoice date.\n2. Question: Who pays?\nAnswer: The Customer shall pay all fees."
    )
    assert validate_reply(lines, chunk, 0.5, 3) == (
        [
            ("When are fees due?", "within thirty days of the invoice date."),
            ("Who pays?", "The Customer shall pay all fees."),
        ],
        {},
    )
    assert validate_reply("Q: Who pays?\nQ: When?", chunk, 0.5, 3)[1] == {"schema": 2}
    # a small model echoing the question (or asking another) has not answered it
    echo = "Q: 1. When are the fees paid?\nA: 2. When are the fees paid?\nQ: Fees?\nA: The fees."
    assert validate_reply(echo, chunk, 0.5, 3) == ([], {"not an answer": 2})
    assert validate_reply('{"q": 1}', chunk, 0.5, 3)[1] == {"schema": 1}
    bad = [
        {"question": "Who?", "answer": "Call [PHONE]."},
        {"question": "Why?", "answer": "Because elephants dance tango."},
        {"question": " ", "answer": "fees"},
        {"question": "x", "answer": 3},
    ]
    kept, rejected = validate_reply(json.dumps(bad), chunk, 0.5, 3)
    assert kept == [] and rejected == {
        "placeholder": 1,
        "unsupported": 1,
        "empty": 1,
        "schema": 1,
    }


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"base_url": None}, r"options: option 'base_url': input should be a valid string"),
        ({"base_url": "ftp://x"}, r"option 'base_url': expected an http\(s\) URL"),
        ({"model": ""}, r"option 'model': required"),
        ({"prompt": "haiku"}, r"option 'prompt': unknown prompt 'haiku'"),
        ({"api_key_env": "LEXLORA_TEST_NO_SUCH_KEY"}, "LEXLORA_TEST_NO_SUCH_KEY"),
        ({"colour": 1}, r"unknown key 'colour'"),
        ({"max_chunks": 0, "retries": True}, r"option 'max_chunks'.*; option 'retries'"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, opts, message):
    r = recipe(tmp_path, "out", **{"base_url": "http://127.0.0.1:9/v1", **opts})
    with pytest.raises(LexloraError, match=message) as err:
        build_dataset(r)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_unreachable_endpoint_names_the_url(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    r = recipe(tmp_path, "out", url, retries=1, timeout=2)
    with pytest.raises(LexloraError, match=re.escape(url) + " unreachable after 4 tries"):
        build_dataset(r)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_real_smollm2_teacher_end_to_end(tmp_path):
    """The real SmolLM2-135M-Instruct as the teacher behind ``lexlora serve``: whatever it writes
    is either kept (and then grounded in its chunk) or rejected with a reason; nothing is lost."""
    config = {
        "base_model": "smollm2-135m-instruct",
        "threads": 2,
        "tenants": {"acme": {"api_key_sha256": [hash_key(KEY)]}},
    }
    (tmp_path / "srv").mkdir()
    with serve_process(config, tmp_path / "srv", timeout=300) as served:
        url = served.url
        r = recipe(
            tmp_path,
            "out",
            url + "/v1",
            prompt="legal_qa_lines",
            max_chunks=2,
            max_tokens=96,
            pairs_per_chunk=2,
            chunk_chars=300,
            concurrency=1,
            timeout=400,
            retries=0,
        )
        r = r.model_copy(update={"data": r.data.model_copy(update={"max_documents": 3})})
        t = build_dataset(r).teacher
    assert t.requests == t.chunks >= 3 and t.tokens > 0
    print("teacher summary:", t)
    assert t.accepted >= 2, t  # a few valid pairs from a 135M teacher
    rows = 0
    out = r.dataset_dir
    docs = {d["id"]: d for d in map(json.loads, (out / "documents.jsonl").read_text().splitlines())}
    for split in ("train", "validation", "test"):
        for row in map(json.loads, (out / f"{split}.jsonl").read_text().splitlines()):
            start, end = row["meta"]["span"]
            chunk = flatten(docs[row["meta"]["doc_id"]]["text"][start:end])
            answer = row["messages"][-1]["content"]
            assert validate_reply(json.dumps([{"question": "q", "answer": answer}]), chunk, 0.5, 1)[
                0
            ]
            rows += row["meta"]["builder"] == "teacher"
    assert rows == t.accepted
