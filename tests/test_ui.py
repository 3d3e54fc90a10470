"""`lexlora serve`'s /ui in a real headless Chromium (Playwright driving /usr/bin/chromium) against
a real server process on the tiny model: the playground's two streams and its strength grid equal
the API's greedy output, the adapter's card and report, tenant isolation, model output with markup
shown as text, the admin dashboard; and, with no browser, the security headers and the report
folder's confinement. Screenshots go to reports/ui/."""

from __future__ import annotations

import http.client
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import pytest
import torch
import yaml
from serve_reference import random_adapter

from lexlora.artifacts.adapter import base_config_hash
from lexlora.eval.local import load_local_scorer
from lexlora.eval.runner import evaluate
from lexlora.export.exporter import export_run
from lexlora.recipe import validate_recipe
from lexlora.registry import AdapterStore
from lexlora.serve.launch import serve_process
from lexlora.serve.tenants import hash_key

CHROMIUM = Path(os.environ.get("LEXLORA_CHROMIUM", "/usr/bin/chromium"))
SHOTS = Path(__file__).resolve().parents[1] / "reports" / "ui"
UI_DIR = Path(__file__).resolve().parents[1] / "lexlora" / "serve" / "ui"
ACME_KEY, BETA_KEY, ADMIN_KEY = "sk-ui-acme-key", "sk-ui-beta-key", "sk-ui-admin-key"
PROMPT = "Who pays the fees?"
MARKUP = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'
MARKUP_PROMPT = "Say it."
MAX_TOKENS = 64  # the markup is 57 tokens with its end of turn
SECRET = "top-secret-outside-the-reports-folder"
EVAL_TASKS = {
    "tasks": {
        "modality": {"kind": "choice", "max_items": 8},
        "definition": {"kind": "open", "max_items": 4},
    },
    "generation_items": 2,
    "max_new_tokens": 8,
}


def auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


# --- fixtures: a run with its evaluation, published adapters, the server, the browser ------------


def forced_adapter(tiny_model: Path, prompt: str, text: str, out: Path) -> Path:
    """A LoRA on the last layer's ``down_proj`` that makes the tiny model answer ``prompt`` (one
    user turn) with exactly ``text``: for each position of the answer it adds, to the residual
    stream, a vector far larger than the stream along the output embedding of the next token
    (least squares on the activations of that very answer, so greedy decoding follows it)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    chat = [{"role": "user", "content": prompt}]
    prompt_text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    prompt_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
    target = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = prompt_ids + target[:-1]
    last = len(model.model.layers) - 1
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        model.model.layers[last].mlp.down_proj.register_forward_hook(
            lambda _m, args, _o: seen.update(x=args[0][0])
        ),
        model.model.norm.register_forward_hook(lambda _m, args, _o: seen.update(r=args[0][0])),
    ]
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    for hook in hooks:
        hook.remove()
    x = seen["x"][len(prompt_ids) - 1 :]  # [answer tokens, intermediate]: predicting each one
    towards = model.lm_head.weight[target] / model.model.norm.weight
    towards = towards / towards.norm(dim=-1, keepdim=True)
    size = 100 * seen["r"].norm(dim=-1).max()
    rank = len(target)
    config = LoraConfig(
        r=rank, lora_alpha=rank, target_modules=["down_proj"], layers_to_transform=[last]
    )
    peft = get_peft_model(model, config)
    layer = peft.base_model.model.model.layers[last].mlp.down_proj
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(torch.linalg.pinv(x.T))
        layer.lora_B["default"].weight.copy_(size * towards.T)
    peft.save_pretrained(out)
    return out


def evaluated_run(tiny_run: Path, runs: Path, reports: Path, tmp: Path) -> tuple[Path, Path]:
    """A copy of the tiny run under ``runs/tiny/`` evaluated as ``lexlora eval`` does (a small
    task set): (run folder, report folder); the run has its gate file."""
    run = runs / "tiny" / tiny_run.name
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    tasks = tmp / "tasks.yaml"
    tasks.write_text(yaml.safe_dump(EVAL_TASKS))
    raw = yaml.safe_load((run / "recipe.yaml").read_text())
    raw["eval"] = {**raw["eval"], "tasks_file": str(tasks), "sweep": [0.0, 1.0]}
    recipe = validate_recipe(raw)
    scorer = load_local_scorer(recipe.model.base, run / "adapter")
    result = evaluate(
        recipe, scorer, recipe.dataset_dir, f"run {run.name}", out_root=reports, log=lambda _: 0
    )
    result.metrics.gate.save(run, result.report_dir)
    return run, result.report_dir


@dataclass
class Site:
    url: str
    tmp: Path
    run_id: str
    report: str  # the run's report.html, relative to reports_dir
    base_name: str  # the tiny model's folder name (what a card shows of a base given as a path)

    def get(self, path: str, key: str | None = None) -> httpx.Response:
        return httpx.get(self.url + path, headers=auth(key), timeout=60)

    def raw(self, path: str, key: str | None = ADMIN_KEY, method: str = "GET"):
        """(status, body) of a request sent with exactly this path (httpx would normalise it)."""
        parts = urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        try:
            conn.request(method, path, headers=auth(key))
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def chat(self, key: str, prompt: str = PROMPT, **target) -> str:
        """The API's greedy answer, as the page asks for it (not streamed)."""
        body = {
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            **target,
        }
        r = httpx.post(self.url + "/v1/chat/completions", json=body, headers=auth(key), timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]


@pytest.fixture(scope="module")
def site(tiny_model, tiny_run, tmp_path_factory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("ui")
    runs, reports = tmp / "runs", tmp / "reports"
    run, report = evaluated_run(tiny_run, runs, reports, tmp)
    store = AdapterStore(tmp / "store")
    quiet = lambda *_: None  # noqa: E731
    export_run(run, "acme", "contracts", store=store, force=True, log=quiet)
    meta = {"base_model": str(tiny_model), "base_config_hash": base_config_hash(str(tiny_model))}
    clauses = random_adapter(tiny_model, tmp / "clauses")
    store.publish("acme", "clauses", clauses, {**meta, "rank": 4})
    echo = forced_adapter(tiny_model, MARKUP_PROMPT, MARKUP, tmp / "echo")
    store.publish("acme", "echo", echo, {**meta, "rank": 57})
    filings = random_adapter(tiny_model, tmp / "filings", seed=5)
    store.publish("beta", "filings", filings, {**meta, "rank": 4, "recipe": "tiny"})
    # what must never be served: a file next to the reports folder, and links out of it
    (tmp / "secret.txt").write_text(SECRET)
    (tmp / "elsewhere").mkdir()
    (tmp / "elsewhere" / "report.html").write_text(SECRET)
    (reports / "tiny" / "leak.txt").symlink_to(tmp / "secret.txt")
    (reports / "outside").symlink_to(tmp / "elsewhere")
    (reports / "tiny" / "same.json").symlink_to(report / "metrics.json")  # a link that stays in
    stopped = runs / "tiny" / "20000101-000000"  # a run that never finished
    stopped.mkdir()
    shutil.copy(run / "recipe.yaml", stopped / "recipe.yaml")
    (stopped / "metrics.jsonl").write_text('{"step": 2, "loss": 4.5}\n{"step": 4, "loss": 3.25}\n')
    shutil.copytree(stopped, tmp / "foreign-run")
    (runs / "tiny" / "20990101-000000").symlink_to(tmp / "foreign-run")  # a run linked in
    config = {
        "base_model": str(tiny_model),
        "store": str(store.root),
        "threads": 1,
        "batch_wait_ms": 5,
        "runs_dir": str(runs),
        "reports_dir": str(reports),
        "admin_key_sha256": hash_key(ADMIN_KEY),
        "tenants": {
            "acme": {"api_key_sha256": [hash_key(ACME_KEY)], "adapters": ["contracts"]},
            "beta": {"api_key_sha256": [hash_key(BETA_KEY)]},
        },
    }
    rel = (report / "report.html").relative_to(reports).as_posix()
    with serve_process(config, tmp) as served:
        yield Site(served.url, tmp, run.name, rel, tiny_model.name)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: run `make setup-browser` (apt-get install chromium)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed: run `make setup` (pip install -e '.[dev]')")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        yield browser
        browser.close()


@pytest.fixture
def page(browser, site):
    """A fresh tab (its own sessionStorage); every request it makes is recorded, and no script
    error may happen on it."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert errors == []
    for url in requests:  # nothing from another origin, never a key in a URL
        assert url.startswith((site.url + "/", "data:", "about:")), url
        assert not any(key in url for key in (ACME_KEY, BETA_KEY, ADMIN_KEY))


def login(page, site: Site, key: str) -> None:
    page.goto(site.url + "/ui")
    page.fill("#key", key)
    page.click("#login button[type=submit]")
    page.wait_for_selector("#who:not([hidden])")


def open_playground(page, site: Site, key: str = ACME_KEY, adapter: str = "contracts") -> None:
    login(page, site, key)
    page.wait_for_selector("#playground:not([hidden])")
    page.select_option("#adapter", adapter)
    page.wait_for_selector(f"#card[data-id='{adapter}']")
    page.fill("#max-tokens", str(MAX_TOKENS))


def slide(page, selector: str, presses: int) -> float:
    """Move a slider with the keyboard (one step per press; negative: down); its new value."""
    page.focus(selector)
    for _ in range(abs(presses)):
        page.keyboard.press("ArrowRight" if presses > 0 else "ArrowLeft")
    return float(page.input_value(selector))


def run_side_by_side(page) -> tuple[str, str]:
    page.click("#run")  # the panes turn "running" at once, "done" after the stream's end
    page.wait_for_selector("#out-base[data-state='done']")
    page.wait_for_selector("#out-adapter[data-state='done']")
    return page.text_content("#out-base"), page.text_content("#out-adapter")


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name), full_page=True)


# --- the playground ------------------------------------------------------------------------------


def test_two_streams_equal_the_apis_greedy_output_at_the_sliders_strength(page, site):
    open_playground(page, site)
    page.fill("#prompt", PROMPT)
    strength = slide(page, "#strength", 10)
    assert strength == 1.5 and page.text_content("#strength-value") == "1.50"
    base, adapted = run_side_by_side(page)
    assert base == site.chat(ACME_KEY, model="base")
    assert adapted == site.chat(ACME_KEY, model="contracts", lora_scale=1.5)
    assert adapted != base and base.strip()
    assert page.text_content("#adapter-label") == "(contracts × 1.50)"

    page.select_option("#second", "clauses")  # composition: the `adapters` extension
    weight = slide(page, "#second-weight", -4)
    assert weight == pytest.approx(0.3)
    _, composed = run_side_by_side(page)
    parts = [{"name": "contracts", "weight": 1.5}, {"name": "clauses", "weight": weight}]
    assert composed == site.chat(ACME_KEY, model="base", adapters=parts)
    assert composed != adapted
    shot(page, "playground.png")


def test_strength_grid_runs_the_prompt_at_each_strength(page, site):
    open_playground(page, site)
    page.fill("#prompt", PROMPT)
    page.click("#run-grid")
    page.wait_for_selector("#grid[data-state='done']")
    rows = page.eval_on_selector_all(
        "#grid tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    strengths = [0, 0.25, 0.5, 0.75, 1, 1.25, 1.5]
    assert [float(s) for s, _ in rows] == strengths
    for s, (_, text) in zip(strengths, rows, strict=True):
        assert text == site.chat(ACME_KEY, model="contracts", lora_scale=s), s
    assert rows[0][1] == site.chat(ACME_KEY, model="base")  # strength 0 is the base model
    assert len({text for _, text in rows}) > 1
    shot(page, "strength-grid.png")


def test_card_shows_the_registry_record_and_opens_the_report(page, site):
    open_playground(page, site)
    fields = page.eval_on_selector_all(
        "#card-fields dt",
        "dts => Object.fromEntries(dts.map(d => [d.textContent,"
        " d.nextElementSibling.textContent]))",
    )
    assert fields["recipe"] == "tiny" and fields["run"] == site.run_id
    assert fields["rank"] == "8 (alpha 16)" and fields["version"] == "contracts:1"
    assert fields["base model"] == site.base_name
    assert page.text_content("#card-gate").startswith("no-regression gate: passed")
    headline = page.eval_on_selector_all("#card-headline li", "li => li.map(x => x.textContent)")
    assert any(line.startswith("option accuracy") for line in headline), headline
    page.click("#card-report")
    frame = page.frame_locator("#report-frame")
    assert frame.locator("h1").inner_text().startswith("Evaluation: tiny, adapter run ")
    # the frame runs no script and takes its styles from report.css, not the report's <style>
    assert frame.locator("table").first.evaluate("t => getComputedStyle(t).borderCollapse") == (
        "collapse"
    )
    assert page.get_attribute("#report-frame", "sandbox") == ""
    shot(page, "card-and-report.png")


def test_model_output_with_markup_is_shown_as_text(page, site):
    open_playground(page, site, adapter="echo")
    page.fill("#prompt", MARKUP_PROMPT)
    _, adapted = run_side_by_side(page)
    assert adapted == MARKUP == site.chat(ACME_KEY, prompt=MARKUP_PROMPT, model="echo")
    page.fill("#grid-strengths", "1")
    page.click("#run-grid")
    page.wait_for_selector("#grid[data-state='done']")
    assert page.text_content("#grid tbody td.out") == MARKUP
    for where in ("#out-adapter", "#grid tbody td.out"):
        assert page.eval_on_selector(where, "e => e.children.length") == 0
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.evaluate("document.querySelectorAll('main script, main img').length") == 0
    shot(page, "markup-as-text.png")


def test_key_lives_in_this_tabs_session_storage_only(page, site, browser):
    login(page, site, ACME_KEY)
    page.wait_for_selector("#playground:not([hidden])")
    assert page.evaluate("sessionStorage.getItem('lexlora.apiKey')") == ACME_KEY
    assert page.evaluate("localStorage.length") == 0 and page.evaluate("document.cookie") == ""
    assert page.input_value("#key") == "" and ACME_KEY not in page.url
    page.reload()  # the same tab keeps its session
    page.wait_for_selector("#playground:not([hidden])")
    other = browser.new_context().new_page()  # another tab does not
    other.goto(site.url + "/ui")
    assert other.evaluate("sessionStorage.length") == 0 and other.is_visible("#login")
    other.context.close()
    page.click("#logout")
    assert page.evaluate("sessionStorage.length") == 0
    assert page.is_hidden("#playground") and page.eval_on_selector("#adapter", "s => s.length") == 0


def test_another_tenants_adapters_are_not_listed_nor_reachable(page, site):
    login(page, site, BETA_KEY)
    page.wait_for_selector("#playground:not([hidden])")
    listed = page.eval_on_selector_all("#adapter option", "o => o.map(x => x.value)")
    assert listed == ["filings", "filings:1"]
    missing = site.get("/ui/api/adapters/no-such-adapter", BETA_KEY)
    assert missing.status_code == 404
    for foreign in ("contracts", "contracts:1", "echo@latest", "acme--contracts--v1"):
        assert site.get(f"/ui/api/adapters/{foreign}", BETA_KEY).content == missing.content
    acme = [m["id"] for m in site.get("/v1/models", ACME_KEY).json()["data"]]
    assert "filings" not in acme and "contracts" in acme


# --- the dashboard -------------------------------------------------------------------------------


def test_dashboard_lists_runs_adapters_and_reports_and_promotes(page, site):
    from playwright.sync_api import expect

    login(page, site, ADMIN_KEY)
    page.wait_for_selector(f"#runs tr[data-run='{site.run_id}']")
    run = page.eval_on_selector(
        f"#runs tr[data-run='{site.run_id}']", "r => [...r.cells].map(c => c.textContent)"
    )
    assert run[:3] == ["tiny", site.run_id, "finished"] and run[6].startswith("passed")
    assert "→" in run[4] and "option accuracy" in run[7]
    listed = page.eval_on_selector_all("#runs tbody tr", "r => r.map(x => x.dataset.run)")
    assert sorted(listed) == ["20000101-000000", site.run_id]  # not the run linked in
    stopped = page.eval_on_selector(
        "#runs tr[data-run='20000101-000000']", "r => [...r.cells].map(c => c.textContent)"
    )
    assert stopped[2:5] == ["incomplete", "4", "3.250"]
    page.wait_for_selector("#published tr[data-ref='beta/filings:1']")
    refs = page.eval_on_selector_all("#published tbody tr", "r => r.map(x => x.dataset.ref)")
    assert {"acme/contracts:1", "acme/clauses:1", "acme/echo:1", "beta/filings:1"} <= set(refs)

    page.select_option("#promote-tenant", "acme")
    page.fill("#promote-ref", "contracts:1")
    page.fill("#promote-alias", "prod")
    page.click("#promote-run")
    expect(page.locator("#promote-result")).to_contain_text("promoted")
    assert page.text_content("#promote-result").startswith(
        "promoted acme/contracts:1 → acme/contracts@prod"
    )
    assert "contracts@prod" in [m["id"] for m in site.get("/v1/models", ACME_KEY).json()["data"]]
    aliases = page.locator("#published tr[data-ref='acme/contracts:1'] td").nth(3)
    expect(aliases).to_contain_text("prod")

    page.click(f"#reports tr[data-report='{site.report}'] button")
    frame = page.frame_locator("#report-frame")
    assert frame.locator("h1").inner_text().startswith("Evaluation: tiny")
    shot(page, "dashboard.png")


# --- without a browser: headers, the page's source, confinement, scoping -------------------------


def test_every_ui_answer_carries_the_security_headers(site):
    answers = {
        "/ui": (None, 200),
        "/ui/": (None, 200),
        "/ui/app.js": (None, 200),
        "/ui/style.css": (None, 200),
        "/ui/no-such.js": (None, 404),
        "/ui/api/no-such": (ACME_KEY, 404),
        "/ui/api/me": (None, 401),
        "/ui/api/admin/runs": (ACME_KEY, 403),
        f"/ui/api/reports/{site.report}": (ADMIN_KEY, 200),
    }
    for path, (key, status) in answers.items():
        r = site.get(path, key)
        assert r.status_code == status, path
        csp = r.headers["content-security-policy"]
        assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp, path
        assert "frame-ancestors 'none'" in csp, path
        script = "script-src 'none'" if path.startswith("/ui/api/reports/") else "script-src 'self'"
        assert script in csp and r.headers["x-content-type-options"] == "nosniff", path
    assert "sandbox" in site.get(f"/ui/api/reports/{site.report}", ADMIN_KEY).headers[
        "content-security-policy"
    ].split("; ")
    assert site.get("/ui/app.js").headers["content-type"].startswith("text/javascript")
    post = httpx.post(site.url + "/ui", timeout=10)
    assert post.status_code == 405 and post.headers["allow"] == "GET"
    assert "script-src 'self'" in post.headers["content-security-policy"]
    me = site.get("/ui/api/me", ACME_KEY)
    assert me.json() == {"role": "tenant", "tenant": "acme", "base": "base"}
    assert me.headers["cache-control"] == "no-store"


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.script_text += data.strip()


def test_the_page_has_no_inline_script_handler_or_style_and_nothing_remote():
    parser = _Tags()
    parser.feed((UI_DIR / "index.html").read_text())
    scripts = [attrs for tag, attrs in parser.tags if tag == "script"]
    assert scripts == [{"src": "/ui/app.js", "defer": None}] and parser.script_text == ""
    for tag, attrs in parser.tags:
        assert not [a for a in attrs if a.startswith("on") or a == "style"], (tag, attrs)
        assert not any("javascript:" in (v or "") for v in attrs.values()), (tag, attrs)
        assert tag not in ("input", "textarea") or "name" not in attrs  # never submitted
    for name in ("index.html", "app.js", "style.css", "report.css"):
        text = (UI_DIR / name).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name
    script = (UI_DIR / "app.js").read_text()
    unsafe = ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("]
    unsafe += ["new Function", "localStorage", "document.cookie"]
    assert [word for word in unsafe if word in script] == []


def test_report_files_never_come_from_outside_the_reports_folder(site):
    traversals = [
        "../secret.txt",
        "%2e%2e/secret.txt",
        "%2E%2E%2Fsecret.txt",
        "..%2fsecret.txt",
        "tiny/..%2f..%2fsecret.txt",
        "tiny/%2e%2e/%2e%2e/secret.txt",
        "%252e%252e/secret.txt",
        "..%5csecret.txt",
        "/" + quote(str(site.tmp / "secret.txt")),
        quote(str(site.tmp / "secret.txt"), safe=""),
        "%2Fetc%2Fpasswd",
        "tiny/leak.txt",  # a link pointing out
        "outside/report.html",  # a folder link pointing out
        f"{site.report.rsplit('/', 1)[0]}/.lexlora-made",  # hidden
        f"{site.report}%00.png",
        "./" + site.report,
        "",
    ]
    missing = site.raw("/ui/api/reports/tiny/no-such.html")
    assert missing[0] == 404
    for path in traversals:
        status, body = site.raw("/ui/api/reports/" + path)
        assert status == 404 and SECRET.encode() not in body, path
        assert body == missing[1], path
    status, body = site.raw(f"/ui/api/reports/{site.report}")
    assert status == 200 and body.startswith(b"<!doctype html>")
    status, body = site.raw("/ui/api/reports/tiny/same.json")  # a link that stays inside
    assert status == 200 and json.loads(body)["recipe"] == "tiny"
    # a tenant reads its own adapters' reports only; another's is the same 404 as a missing one
    assert site.raw(f"/ui/api/reports/{site.report}", key=ACME_KEY)[0] == 200
    assert site.raw(f"/ui/api/reports/{site.report}", key=BETA_KEY) == missing
    assert site.raw(f"/ui/api/reports/{site.report}", key=None)[0] == 401


def test_card_names_no_server_path_and_is_the_callers_only(site):
    r = site.get("/ui/api/adapters/contracts", ACME_KEY)
    assert r.status_code == 200
    card = r.json()
    assert (card["name"], card["version"], card["rank"], card["recipe"]) == (
        "contracts",
        1,
        8,
        "tiny",
    )
    assert card["report"] == site.report and card["gate"]["passed"] is True
    assert card["evaluation"]["adapter"] == f"run {site.run_id}"
    assert str(site.tmp) not in r.text and "run_dir" not in card
    assert site.get("/ui/api/adapters/base", ACME_KEY).status_code == 404
    assert site.get("/ui/api/adapters/contracts", ADMIN_KEY).status_code == 403
    assert site.get("/ui/api/adapters/contracts", None).status_code == 401


def test_promote_is_admin_only_and_tenant_scoped(site):
    def promote(body: dict, key: str = ADMIN_KEY) -> httpx.Response:
        return httpx.post(
            site.url + "/admin/adapters/promote", json=body, headers=auth(key), timeout=30
        )

    ok = {"tenant": "acme", "ref": "clauses:1", "alias": "staging"}
    assert promote(ok, ACME_KEY).status_code == 403
    assert promote({**ok, "tenant": "nobody"}).json()["error"]["code"] == "tenant_not_found"
    foreign = promote({**ok, "ref": "filings:1"})  # beta's adapter, asked for acme
    assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "model_not_found"
    assert promote({**ok, "alias": "Bad/Alias"}).json()["error"]["param"] == "alias"
    assert promote({**ok, "extra": 1}).status_code == 400
    r = promote(ok)
    assert r.json() == {"promoted": "acme/clauses:1", "alias": "acme/clauses@staging"}
    assert "clauses@staging" in [m["id"] for m in site.get("/v1/models", ACME_KEY).json()["data"]]
