"use strict";
// lexlora playground and dashboard. It talks only to this server's API, with the pasted key kept
// in sessionStorage (this tab only: never in a URL, a cookie or lasting storage), so it can do just
// what the key may do. Model output and every value read from the server go into the page as
// text (textContent, text nodes), never as HTML; a report is shown in a sandboxed frame.

const KEY = "lexlora.apiKey";
const GRID_MAX = 16;
const state = { base: null, role: null, streams: null, grid: null, cardSeq: 0, report: null };

const $ = (id) => document.getElementById(id);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function num(x, digits = 3) {
  return typeof x === "number" && Number.isFinite(x) ? x.toFixed(digits) : "–";
}

function setStatus(message, isError = false) {
  const status = $("status");
  status.textContent = message || "";
  status.classList.toggle("error", Boolean(isError));
}

// --- the API ------------------------------------------------------------------------------------

class ApiFailure extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    const detail = body && body.error && body.error.message;
    if (detail) message = `${response.status}: ${detail}`;
  } catch (_) {
    // not JSON: keep the status line
  }
  return new ApiFailure(response.status, message);
}

async function call(path, { method = "GET", body, signal } = {}) {
  const headers = new Headers();
  const key = sessionStorage.getItem(KEY);
  if (key) headers.set("Authorization", `Bearer ${key}`);
  if (body !== undefined) headers.set("Content-Type", "application/json");
  const response = await fetch(path, {
    method,
    headers,
    signal,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
    redirect: "error",
    referrerPolicy: "no-referrer",
  });
  if (!response.ok) throw await failure(response);
  return response;
}

async function getJSON(path) {
  return (await call(path)).json();
}

function pathOf(rel) {
  return rel.split("/").map(encodeURIComponent).join("/");
}

// --- key ----------------------------------------------------------------------------------------

async function login(key) {
  sessionStorage.setItem(KEY, key);
  let me;
  try {
    me = await getJSON("/ui/api/me");
  } catch (error) {
    sessionStorage.removeItem(KEY);
    setStatus(error.message, true);
    return;
  }
  $("key").value = "";
  $("login").hidden = true;
  $("who").hidden = false;
  $("who-text").textContent = me.role === "admin" ? "admin key" : `tenant ${me.tenant}`;
  state.base = me.base;
  state.role = me.role;
  setStatus("");
  try {
    if (me.role === "admin") await showDashboard();
    else await showPlayground();
  } catch (error) {
    setStatus(error.message, true);
  }
}

function logout() {
  sessionStorage.removeItem(KEY);
  for (const controller of [state.streams, state.grid]) if (controller) controller.abort();
  Object.assign(state, { base: null, role: null, streams: null, grid: null, report: null });
  state.cardSeq += 1;
  for (const id of ["playground", "dashboard", "report", "who"]) $(id).hidden = true;
  $("login").hidden = false;
  for (const id of ["adapter", "out-base", "out-adapter", "card-fields", "card-headline"]) {
    $(id).replaceChildren();
  }
  $("second").replaceChildren(el("option", "none"));
  $("second").firstChild.value = "";
  $("second-weight").disabled = true;
  for (const id of ["grid", "runs", "published", "reports"]) $(id).tBodies[0].replaceChildren();
  for (const id of ["card-id", "card-gate", "base-label", "adapter-label", "promote-result"]) {
    $(id).textContent = "";
  }
  $("card-report").hidden = true;
  delete $("card").dataset.id;
  $("report-frame").srcdoc = "";
  setStatus("Key forgotten.");
}

// --- playground ---------------------------------------------------------------------------------

async function showPlayground() {
  const list = await getJSON("/v1/models");
  const adapters = list.data.filter((card) => card.parent); // the base model has no parent
  const groups = new Map();
  for (const card of adapters) {
    const name = card.id.split(/[:@]/)[0];
    if (!groups.has(name)) groups.set(name, []);
    groups.get(name).push(card.id);
  }
  for (const select of [$("adapter"), $("second")]) {
    for (const [name, ids] of groups) {
      const group = document.createElement("optgroup");
      group.label = name;
      for (const id of ids) {
        const option = el("option", id);
        option.value = id;
        group.append(option);
      }
      select.append(group);
    }
  }
  $("playground").hidden = false;
  if (!adapters.length) {
    setStatus("This key has no adapter for this base model yet: only the base can run.");
    return;
  }
  await loadCard();
}

function strength() {
  return Number($("strength").value);
}

function target(scale) {
  const first = $("adapter").value;
  const second = $("second").value;
  if (!first) return { model: state.base };
  if (second) {
    const weight = Number($("second-weight").value);
    return {
      model: state.base,
      adapters: [
        { name: first, weight: scale },
        { name: second, weight },
      ],
    };
  }
  return { model: first, lora_scale: scale };
}

function describe(scale) {
  const second = $("second").value;
  const shown = typeof scale === "number" ? scale.toFixed(2) : scale;
  const parts = [`${$("adapter").value} × ${shown}`];
  if (second) parts.push(`${second} × ${Number($("second-weight").value).toFixed(2)}`);
  return `(${parts.join(" + ")})`;
}

function chat(model) {
  return {
    ...model,
    messages: [{ role: "user", content: $("prompt").value }],
    max_tokens: Number($("max-tokens").value) || 48,
    temperature: 0,
  };
}

function handleEvent(event, pane) {
  for (const line of event.split("\n")) {
    if (!line.startsWith("data:")) continue;
    const data = line.slice(5).trim();
    if (data === "[DONE]") return true;
    const chunk = JSON.parse(data);
    if (chunk.error) throw new ApiFailure(500, chunk.error.message || "the stream failed");
    const choice = chunk.choices && chunk.choices[0];
    const piece = choice && choice.delta && choice.delta.content;
    if (piece) pane.append(piece); // a text node: never parsed as HTML
  }
  return false;
}

async function stream(body, pane, signal) {
  pane.replaceChildren();
  pane.dataset.state = "running";
  try {
    const response = await call("/v1/chat/completions", {
      method: "POST",
      body: { ...body, stream: true },
      signal,
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (handleEvent(event, pane)) {
          pane.dataset.state = "done";
          return;
        }
      }
    }
    pane.dataset.state = "done";
  } catch (error) {
    if (error.name === "AbortError") {
      pane.dataset.state = "aborted";
      return;
    }
    pane.textContent = error.message;
    pane.dataset.state = "error";
  }
}

async function runSideBySide(event) {
  event.preventDefault();
  if (state.streams) state.streams.abort();
  const controller = new AbortController();
  state.streams = controller;
  const scale = strength();
  $("base-label").textContent = `(${state.base})`;
  $("adapter-label").textContent = describe(scale);
  await Promise.all([
    stream(chat({ model: state.base }), $("out-base"), controller.signal),
    stream(chat(target(scale)), $("out-adapter"), controller.signal),
  ]);
}

function parseStrengths(text) {
  const values = text
    .split(/[\s,]+/)
    .filter(Boolean)
    .map(Number);
  if (!values.length || values.length > GRID_MAX) return null;
  return values.every((v) => Number.isFinite(v) && v >= 0 && v <= 2) ? values : null;
}

async function runGrid(event) {
  event.preventDefault();
  const strengths = parseStrengths($("grid-strengths").value);
  const table = $("grid");
  if (!strengths) {
    $("grid-note").textContent = `expected 1 to ${GRID_MAX} numbers from 0 to 2`;
    return;
  }
  $("grid-note").textContent = describe("s");
  if (state.grid) state.grid.abort();
  const controller = new AbortController();
  state.grid = controller;
  const cells = strengths.map((s) => {
    const row = el("tr");
    const cell = el("td", "", "out");
    cell.dataset.state = "waiting";
    row.append(el("td", s.toFixed(2)), cell);
    return [s, row, cell];
  });
  table.tBodies[0].replaceChildren(...cells.map(([, row]) => row));
  table.dataset.state = "running";
  for (const [s, , cell] of cells) {
    // one at a time: a tenant's share of the queue is small
    try {
      const response = await call("/v1/chat/completions", {
        method: "POST",
        body: chat(target(s)),
        signal: controller.signal,
      });
      const body = await response.json();
      cell.textContent = body.choices[0].message.content;
      cell.dataset.state = "done";
    } catch (error) {
      if (error.name === "AbortError") return;
      cell.textContent = error.message;
      cell.dataset.state = "error";
    }
  }
  table.dataset.state = "done";
}

// --- the adapter's card -------------------------------------------------------------------------

function addField(list, name, value) {
  if (value === undefined || value === null || value === "") return;
  list.append(el("dt", name), el("dd", value));
}

function gateText(gate) {
  if (!gate) return "no-regression gate: not evaluated";
  if (gate.passed && !gate.gated) {
    return "no-regression gate: passed, with nothing to gate (every family is too small)";
  }
  if (gate.passed) return `no-regression gate: passed (${gate.gated} families gated)`;
  return `no-regression gate: FLAGGED: ${gate.flagged.join("; ")}`;
}

async function loadCard() {
  const id = $("adapter").value;
  const seq = ++state.cardSeq;
  const fields = $("card-fields");
  $("card-id").textContent = id;
  if (!id) return;
  let card;
  try {
    card = await getJSON(`/ui/api/adapters/${encodeURIComponent(id)}`);
  } catch (error) {
    if (seq === state.cardSeq) setStatus(error.message, true);
    return;
  }
  if (seq !== state.cardSeq) return; // another adapter was chosen meanwhile
  fields.replaceChildren();
  addField(fields, "version", `${card.name}:${card.version}`);
  addField(fields, "aliases", (card.aliases || []).join(", "));
  addField(fields, "base model", card.base_model);
  addField(fields, "method", card.method);
  addField(fields, "rank", card.lora_alpha ? `${card.rank} (alpha ${card.lora_alpha})` : card.rank);
  addField(fields, "target modules", (card.target_modules || []).join(", "));
  addField(fields, "recipe", card.recipe);
  addField(fields, "run", card.run_id);
  if (card.strength !== undefined && card.strength !== null && card.strength !== 1) {
    addField(fields, "baked strength", card.strength);
  }
  if (card.combination) {
    const parts = card.combination.parts.map((p) => `${p.part} × ${p.weight}`).join(" + ");
    addField(fields, "combination", `${card.combination.method}: ${parts}`);
  }
  const loss = card.training_eval || {};
  if (loss.eval_loss_base !== undefined) {
    addField(fields, "validation loss", pair(loss.eval_loss_base, loss.eval_loss_adapter));
  }
  addField(fields, "published", card.created_at);
  addField(fields, "sha256", card.sha256 ? `${card.sha256.slice(0, 16)}…` : "");
  $("card-gate").textContent = gateText(card.gate);
  const lines = card.evaluation
    ? [...card.evaluation.tracks, ...card.evaluation.headline]
    : ["no evaluation report found for this adapter"];
  $("card-headline").replaceChildren(...lines.map((line) => el("li", line)));
  state.report = card.report;
  $("card-report").hidden = !card.report;
  $("card").dataset.id = id; // the card on show (tests wait for it)
}

// --- reports ------------------------------------------------------------------------------------

async function openReport(rel) {
  let html;
  try {
    html = await (await call(`/ui/api/reports/${pathOf(rel)}`)).text();
  } catch (error) {
    setStatus(error.message, true);
    return;
  }
  // The frame is sandboxed (no script, its own origin) and inherits this page's policy, which
  // blocks the report's inline <style>: the same rules come from report.css.
  const link = '<link rel="stylesheet" href="/ui/report.css">';
  const head = /<head[^>]*>/i;
  const styled = head.test(html) ? html.replace(head, (tag) => tag + link) : link + html;
  $("report-frame").srcdoc = styled;
  $("report-name").textContent = rel;
  $("report").hidden = false;
  $("report").scrollIntoView();
}

function reportButton(rel) {
  if (!rel) return el("span", "–", "muted");
  const button = el("button", "Open");
  button.type = "button";
  button.addEventListener("click", () => openReport(rel));
  return button;
}

// --- dashboard ----------------------------------------------------------------------------------

function row(values, data) {
  const tr = el("tr");
  for (const value of values) {
    if (value instanceof Node) {
      const cell = el("td");
      cell.append(value);
      tr.append(cell);
    } else {
      tr.append(el("td", value ?? "–"));
    }
  }
  Object.assign(tr.dataset, data);
  return tr;
}

function lines(texts) {
  const list = el("ul", null, "lines");
  list.append(...texts.map((text) => el("li", text)));
  return list;
}

function pair(a, b) {
  return a === undefined || a === null ? num(b) : `${num(a)} → ${num(b)}`;
}

function verdict(gate) {
  return gateText(gate).replace("no-regression gate: ", "");
}

async function showDashboard() {
  $("dashboard").hidden = false;
  await Promise.all([loadRuns(), loadPublished(), loadReports()]);
}

async function loadRuns() {
  const body = await getJSON("/ui/api/admin/runs");
  $("runs-dir").textContent = body.runs_dir;
  const rows = body.runs.map((run) => {
    const loss = run.losses || {};
    const evaluation = run.evaluation || { tracks: [], headline: [] };
    const headline = [...evaluation.tracks, ...evaluation.headline.slice(0, 3)];
    const evalLoss = loss.eval_base === undefined ? "–" : pair(loss.eval_base, loss.eval_adapter);
    return row(
      [
        run.recipe,
        run.run_id,
        run.status,
        run.steps,
        pair(loss.train_first, loss.train_last),
        evalLoss,
        verdict(run.gate),
        lines(headline),
        reportButton(run.report),
      ],
      { run: run.run_id },
    );
  });
  $("runs").tBodies[0].replaceChildren(...rows);
}

function served(adapter) {
  if (!adapter.configured) return "tenant not in serve.yaml";
  return adapter.servable ? "yes" : "other base model";
}

async function loadPublished() {
  const body = await getJSON("/ui/api/admin/adapters");
  const rows = body.adapters.map((a) =>
    row(
      [
        a.tenant,
        a.name,
        a.version,
        a.aliases.join(", "),
        a.created_at,
        a.rank,
        a.recipe,
        a.run_id,
        served(a),
      ],
      { ref: `${a.tenant}/${a.name}:${a.version}` },
    ),
  );
  $("published").tBodies[0].replaceChildren(...rows);
  const select = $("promote-tenant");
  const chosen = select.value;
  const options = body.tenants.map((tenant) => {
    const option = el("option", tenant);
    option.value = tenant;
    return option;
  });
  select.replaceChildren(...options);
  if (body.tenants.includes(chosen)) select.value = chosen;
}

async function loadReports() {
  const body = await getJSON("/ui/api/admin/reports");
  $("reports-dir").textContent = body.reports_dir;
  const rows = body.reports.map((r) => {
    const e = r.evaluation || {};
    const values = [r.recipe, r.eval_id, e.adapter, e.created_at, verdict(e.gate)];
    return row([...values, reportButton(r.report)], { report: r.report || "" });
  });
  $("reports").tBodies[0].replaceChildren(...rows);
}

async function promote(event) {
  event.preventDefault();
  const result = $("promote-result");
  result.classList.remove("error");
  result.textContent = "promoting…";
  const body = {
    tenant: $("promote-tenant").value,
    ref: $("promote-ref").value.trim(),
    alias: $("promote-alias").value.trim(),
  };
  try {
    const done = await (await call("/admin/adapters/promote", { method: "POST", body })).json();
    const reload = await (await call("/admin/adapters/reload", { method: "POST" })).json();
    const moved = reload.changes.map((c) => `${c.tenant}/${c.ref}: ${c.from} → ${c.to}`);
    const failed = reload.failed.map((f) => `${f.tenant}/${f.ref} failed: ${f.error}`);
    const said = [`promoted ${done.promoted} → ${done.alias}`, ...moved, ...failed];
    result.textContent = said.join("; ");
    await loadPublished();
  } catch (error) {
    result.textContent = error.message;
    result.classList.add("error");
  }
}

// --- wiring -------------------------------------------------------------------------------------

function showValue(input, output) {
  $(output).textContent = Number($(input).value).toFixed(2);
}

function start() {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    if (key) login(key);
  });
  $("logout").addEventListener("click", logout);
  $("strength").addEventListener("input", () => showValue("strength", "strength-value"));
  $("second-weight").addEventListener("input", () => {
    showValue("second-weight", "second-weight-value");
  });
  $("second").addEventListener("change", () => {
    $("second-weight").disabled = !$("second").value;
  });
  $("adapter").addEventListener("change", loadCard);
  $("controls").addEventListener("submit", runSideBySide);
  $("grid-form").addEventListener("submit", runGrid);
  $("card-report").addEventListener("click", () => state.report && openReport(state.report));
  $("report-close").addEventListener("click", () => {
    $("report").hidden = true;
    $("report-frame").srcdoc = "";
  });
  $("promote").addEventListener("submit", promote);
  const key = sessionStorage.getItem(KEY);
  if (key) login(key);
}

start();
