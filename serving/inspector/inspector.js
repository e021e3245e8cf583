// The inspector page: a thin client of GET/POST /compare (serving/compare.py). No framework, no build:
// DOM built with textContent only (titles are data, never markup). Timings of the last render are kept
// in window.inspectorTimings for the browser test (API answered -> both columns rendered).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { answer: null, column: 0, row: 0 };
window.inspectorTimings = [];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function fmt(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(4);
  return String(value);
}

async function loadConfigs() {
  const response = await fetch("/compare");
  const body = await response.json();
  for (const side of ["left", "right"]) {
    const select = $(side);
    for (const config of body.configs) {
      select.append(el("option", { value: config.name, title: config.description, text: config.name }));
    }
  }
  [$("left").value, $("right").value] = body.default;
  const params = new URLSearchParams(location.search);
  for (const key of ["left", "right", "k"]) if (params.get(key)) $(key).value = params.get(key);
  if (params.get("q")) { $("query").value = params.get("q"); compare(); }
}

function showError(body, status) {
  const box = $("error");
  box.replaceChildren(el("strong", { text: `${status}: ${body.error || "request failed"}` }));
  for (const d of body.detail || []) {
    box.append(el("div", { text: `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}` }));
  }
  box.hidden = false;
}

async function compare(event) {
  if (event) event.preventDefault();
  const k = Number($("k").value);
  const request = { query: $("query").value, left: $("left").value, right: $("right").value,
                    k: Number.isInteger(k) ? k : $("k").value };
  $("status").textContent = "Searching…";
  history.replaceState(null, "", `?q=${encodeURIComponent(request.query)}&left=${request.left}&right=${request.right}&k=${request.k}`);
  const sent = performance.now();
  const response = await fetch("/compare", { method: "POST", headers: { "Content-Type": "application/json" },
                                             body: JSON.stringify(request) });
  const body = await response.json();
  const answered = performance.now();
  if (!response.ok) {
    showError(body, response.status);
    $("status").textContent = "";
    return;
  }
  $("error").hidden = true;
  state.answer = body;
  state.column = 0;
  state.row = 0;
  render(body);
  requestAnimationFrame(() => {
    const rendered = performance.now();
    window.inspectorTimings.push({ api_ms: answered - sent, render_ms: rendered - answered });
    document.body.dataset.rendered = String(window.inspectorTimings.length);
  });
}

function gradeBar(teacher) {
  const bar = el("span", { class: "grades", title: "teacher P(grade 0..3)" });
  for (let g = 0; g < 4; g++) {
    const p = teacher[`grade_p${g}`];
    if (p === null || p === undefined) continue;
    const part = el("span", { class: `g${g}` });
    part.style.width = `${(p * 100).toFixed(1)}%`;  // CSSOM, not a style attribute: the page's CSP allows no inline styles
    bar.append(part);
  }
  return bar;
}

function rowNode(item, columnIndex, shared) {
  const line1 = el("div", { class: "line1" },
    el("span", { class: "rank", text: `${item.rank}.` }),
    el("span", { class: "title", text: item.title ?? item.item_id }),
    el("span", { class: "score", text: fmt(item.score) }));
  const line2 = el("div", { class: "line2" });
  const origin = Object.entries(item.origin).map(([c, r]) => `${c} #${r}`).join(" · ");
  line2.append(el("span", { text: `from ${origin || "this stage only"}` }));
  if (item.teacher) {
    line2.append(el("span", {}, "teacher ", gradeBar(item.teacher), ` E=${fmt(item.teacher.expected_grade)}`));
  } else {
    line2.append(el("span", { text: "teacher: no label for this pair" }));
  }
  if (item.engagement) {
    const e = item.engagement;
    line2.append(el("span", { text: `gated clicks ${fmt(e.gated_clicks_30d)} · relevant ${fmt(e.is_relevant)}` }));
  }
  if (item.human_grade !== null && item.human_grade !== undefined) {
    line2.append(el("span", { class: "human", text: `human ${item.human_grade.toFixed(2)}` }));
  }
  const node = el("li", { class: shared ? "row shared" : "row", "data-item": item.item_id, tabindex: "-1" }, line1, line2);
  node.addEventListener("click", () => { select(columnIndex, item.rank - 1); openExplain(); });
  return node;
}

function render(answer) {
  const [left, right] = answer.columns.map((c) => new Set(c.items.map((i) => i.item_id)));
  answer.columns.forEach((column, index) => {
    const other = index === 0 ? right : left;
    const timings = Object.entries(column.timings_ms).map(([s, ms]) => `${s} ${ms.toFixed(1)} ms`).join(", ");
    const versions = Object.entries(column.versions).filter(([, v]) => v).map(([k, v]) => `${k} ${v}`).join(" · ");
    const header = [el("h2", { text: column.config }),
      el("p", { class: "meta", text: column.description }),
      el("p", { class: "meta", text: versions }),
      el("p", { class: "meta", text: `${column.formula}. ${timings}` })];
    if (column.degraded) header.push(el("p", { class: "meta degraded", text: "degraded: online features missing" }));
    const list = el("ol");
    for (const item of column.items) list.append(rowNode(item, index, other.has(item.item_id)));
    if (!column.items.length) list.append(el("li", { text: "No results." }));
    $(`column-${index}`).replaceChildren(...header, list);
  });
  const shared = answer.columns[0].items.filter((i) => right.has(i.item_id)).length;
  $("status").textContent = `“${answer.query_norm}” · ${answer.known_query ? "known query (pair features in the store)" : "new query (no pair features in the store)"}` +
    ` · ${shared} of ${answer.k} in both · shaded rows appear in both columns` + (answer.degraded ? " · DEGRADED" : "");
  select(answer.columns[0].items.length ? 0 : 1, 0);
}

function select(column, row) {
  const items = state.answer?.columns[column]?.items || [];
  if (!items.length) return;
  state.column = column;
  state.row = Math.max(0, Math.min(row, items.length - 1));
  document.querySelectorAll("li.row.selected").forEach((n) => n.classList.remove("selected"));
  const node = $(`column-${column}`).querySelectorAll("li.row")[state.row];
  node.classList.add("selected");
  node.focus({ preventScroll: true });  // the keys act on the results once they are shown
  node.scrollIntoView({ block: "nearest" });
  if (!$("drawer").hidden) openExplain();
}

function table(entries) {
  const body = el("tbody");
  for (const [name, value] of entries) {
    body.append(el("tr", {}, el("td", { text: name }), el("td", { class: "num", text: fmt(value) })));
  }
  return el("table", {}, body);
}

function openExplain() {
  const column = state.answer.columns[state.column];
  const item = column.items[state.row];
  $("drawer-title").textContent = `${column.config} #${item.rank}: ${item.title ?? item.item_id}`;
  const terms = Object.entries(item.explain.terms);
  const parts = [
    el("p", { class: "meta", text: `item ${item.item_id} · score ${fmt(item.score)}` }),
    el("p", { class: "meta", text: column.formula }),
    el("h3", { text: "Score decomposition" }), table(terms),
  ];
  if (item.teacher) parts.push(el("h3", { text: "Teacher (calibrated grade distribution)" }), table(Object.entries(item.teacher)));
  if (item.engagement) parts.push(el("h3", { text: "Engagement (gated by relevance)" }), table(Object.entries(item.engagement)));
  const features = Object.entries(item.explain.features);
  if (features.length) parts.push(el("h3", { text: "Features this configuration read" }), table(features));
  $("drawer-body").replaceChildren(...parts);
  $("drawer").hidden = false;
}

function closeExplain() {
  $("drawer").hidden = true;
}

function swap() {
  [$("left").value, $("right").value] = [$("right").value, $("left").value];
  if ($("query").value.trim()) compare();
}

document.addEventListener("keydown", (event) => {
  const typing = ["INPUT", "SELECT"].includes(document.activeElement?.tagName);
  if (event.key === "Escape") { closeExplain(); return; }
  if (typing) return;
  const keys = { j: () => select(state.column, state.row + 1), ArrowDown: () => select(state.column, state.row + 1),
                 k: () => select(state.column, state.row - 1), ArrowUp: () => select(state.column, state.row - 1),
                 h: () => select(0, state.row), l: () => select(1, state.row),
                 e: openExplain, Enter: openExplain, s: swap, "/": () => $("query").focus() };
  if (keys[event.key] && (state.answer || ["/", "s"].includes(event.key))) {
    event.preventDefault();
    keys[event.key]();
  }
});

$("ask").addEventListener("submit", compare);
$("swap").addEventListener("click", swap);
$("close").addEventListener("click", closeExplain);
loadConfigs();
