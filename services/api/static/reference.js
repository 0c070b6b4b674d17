// The API reference: /openapi.json rendered as a readable list of operations, grouped by tag, each with its
// parameters, request body and responses. Nothing is fetched but the document itself (no CDN, no build step):
// the schemas are walked here, $refs resolved, so a reader never has to follow a reference by hand.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const METHODS = ["get", "post", "put", "patch", "delete"];
// Nested schemas are unfolded this deep; further down (and on a cycle) only the type's name is shown.
const MAX_DEPTH = 4;

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else node[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

let doc = null;

function refName(ref) {
  return ref.split("/").pop();
}

function resolve(schema) {
  if (schema && schema.$ref) return doc.components.schemas[refName(schema.$ref)] || {};
  return schema || {};
}

// A one-line name for a schema: "string", "Workflow", "array of StepDef", "integer | null".
function typeName(schema) {
  if (!schema) return "any";
  if (schema.$ref) return refName(schema.$ref);
  if (schema.const !== undefined) return JSON.stringify(schema.const);
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  const alts = schema.anyOf || schema.oneOf;
  if (alts) return alts.map((s) => (s.title && !s.$ref ? s.title : typeName(s))).join(" | ");
  if (Array.isArray(schema.type)) return schema.type.join(" | ");
  if (schema.type === "array") return `array of ${typeName(schema.items)}`;
  if (schema.type === "object" && schema.additionalProperties && !schema.properties) {
    return `object of ${typeName(schema.additionalProperties)}`;
  }
  return schema.type || (schema.properties ? "object" : "any");
}

function limits(schema) {
  const s = resolve(schema);
  const out = [];
  if (s.minimum !== undefined) out.push(`≥ ${s.minimum}`);
  if (s.maximum !== undefined) out.push(`≤ ${s.maximum}`);
  if (s.minLength !== undefined) out.push(`min length ${s.minLength}`);
  if (s.maxLength !== undefined) out.push(`max length ${s.maxLength}`);
  if (s.maxItems !== undefined) out.push(`at most ${s.maxItems} items`);
  if (s.pattern !== undefined) out.push(`pattern ${s.pattern}`);
  if (s.default !== undefined) out.push(`default ${JSON.stringify(s.default)}`);
  return out.join(", ");
}

// The schemas a field leads to (through arrays, nullable unions and references), to unfold beneath it.
function nested(schema) {
  if (!schema) return [];
  if (schema.$ref) return [schema];
  if (schema.type === "array") return nested(schema.items);
  const alts = schema.anyOf || schema.oneOf;
  if (alts) return alts.flatMap(nested);
  if (schema.properties) return [schema];
  return [];
}

// A schema as a list of its fields (name, type, required, description), nested objects unfolded beneath.
function schemaView(schema, depth = 0, seen = new Set()) {
  const name = schema && schema.$ref ? refName(schema.$ref) : null;
  if (name && (seen.has(name) || depth >= MAX_DEPTH)) return el("span", { className: "muted", textContent: `(${name}, above)` });
  const inner = new Set(seen);
  if (name) inner.add(name);
  const s = resolve(schema);
  const box = el("div", { className: "schema" });
  if (s.description && depth === 0) box.append(el("p", { className: "muted", textContent: s.description }));
  const variants = s.oneOf || s.anyOf;
  if (variants && !s.properties) {
    const list = el("ul", { className: "variants" });
    for (const v of variants) {
      const title = v.title || typeName(v);
      const li = el("li", {}, el("code", { textContent: title }));
      if (nested(v).length) li.append(...nested(v).map((n) => schemaView(n, depth + 1, inner)));
      list.append(li);
    }
    box.append(el("div", { className: "muted", textContent: "one of:" }), list);
    return box;
  }
  if (!s.properties) {
    box.append(el("code", { textContent: typeName(schema) }));
    return box;
  }
  const required = new Set(s.required || []);
  const table = el("table", { className: "fields" });
  for (const [field, prop] of Object.entries(s.properties)) {
    const resolved = resolve(prop);
    const about = [prop.description || resolved.description, limits(prop)].filter(Boolean).join(" · ");
    const tr = el("tr", { dataset: { field } },
      el("td", {}, el("code", { textContent: field })),
      el("td", { className: "type", textContent: typeName(prop) }),
      el("td", { className: "req", textContent: required.has(field) ? "required" : "" }),
      el("td", { className: "about", textContent: about }));
    table.append(tr);
    const below = depth + 1 < MAX_DEPTH ? nested(prop).filter((n) => !(n.$ref && inner.has(refName(n.$ref)))) : [];
    if (below.length) {
      const cell = el("td", { colSpan: 4, className: "nested" });
      for (const n of below) {
        const details = el("details", {}, el("summary", { textContent: `${field}: ${typeName(n)}` }), schemaView(n, depth + 1, inner));
        cell.append(details);
      }
      table.append(el("tr", {}, cell));
    }
  }
  box.append(table);
  return box;
}

function authOf(op) {
  if (op.security && op.security.length === 0) return "no key";
  if (op.description && op.description.includes("admin token")) return "admin token";
  return "tenant key";
}

function paramsView(params) {
  const table = el("table", { className: "params" },
    el("thead", {}, el("tr", {}, ...["name", "in", "type", "", "description"].map((h) => el("th", { textContent: h })))));
  const body = el("tbody");
  for (const p of params) {
    const about = [p.description, limits(p.schema)].filter(Boolean).join(" · ");
    body.append(el("tr", { dataset: { param: p.name } },
      el("td", {}, el("code", { textContent: p.name })),
      el("td", { textContent: p.in }),
      el("td", { className: "type", textContent: typeName(p.schema) }),
      el("td", { className: "req", textContent: p.required ? "required" : "" }),
      el("td", { className: "about", textContent: about })));
  }
  table.append(body);
  return table;
}

function contentView(content) {
  const box = el("div");
  for (const [type, media] of Object.entries(content || {})) {
    box.append(el("div", { className: "muted", textContent: type }), schemaView(media.schema));
  }
  return box;
}

function opId(method, path) {
  return `${method}-${path}`.replace(/[^A-Za-z0-9]+/g, "-").replace(/-+$/, "");
}

function operationView(path, method, op) {
  const id = opId(method, path);
  const details = el("details", { className: "op", id, dataset: { method, path, tag: (op.tags || [""])[0] } });
  details.append(el("summary", {},
    el("span", { className: `method ${method}`, textContent: method.toUpperCase() }), " ",
    el("code", { className: "path", textContent: path }), " ",
    el("span", { className: "summary", textContent: op.summary || "" })));
  const body = el("div", { className: "op-body" });
  body.append(el("p", { className: "auth muted", textContent: `auth: ${authOf(op)}` }));
  if (op.description) body.append(el("p", { textContent: op.description }));
  if (op.parameters && op.parameters.length) body.append(el("h4", { textContent: "Parameters" }), paramsView(op.parameters));
  if (op.requestBody) {
    body.append(el("h4", { textContent: `Request body${op.requestBody.required ? "" : " (optional)"}` }),
      el("div", { className: "request-body" }, contentView(op.requestBody.content)));
  }
  const responses = el("ul", { className: "responses" });
  for (const [status, r] of Object.entries(op.responses || {})) {
    const li = el("li", { dataset: { status } },
      el("b", { className: `status s${status[0]}`, textContent: status }), " ",
      el("span", { textContent: r.description || "" }));
    if (r.content) {
      const schema = Object.values(r.content)[0].schema;
      const name = typeName(schema);
      if (status.startsWith("2") && resolve(schema).properties) {
        li.append(el("details", {}, el("summary", { textContent: name }), contentView(r.content)));
      } else {
        li.append(" ", el("code", { textContent: name }));
      }
    }
    responses.append(li);
  }
  body.append(el("h4", { textContent: "Responses" }), responses);
  details.append(body);
  return details;
}

// x-websockets: {path: {summary, query: {name: text}, message: {field: text}, close_codes: {code: text}}}.
function websocketView(path, w) {
  const table = (title, entries) => [
    el("h4", { textContent: title }),
    el("table", { className: "params" }, el("tbody", {}, ...Object.entries(entries || {}).map(([k, v]) => el("tr", {},
      el("td", {}, el("code", { textContent: k })), el("td", { className: "about", textContent: String(v) }))))),
  ];
  return el("div", { className: "op-body", dataset: { path } },
    el("p", {}, el("span", { className: "method ws", textContent: "WS" }), " ", el("code", { className: "path", textContent: path }),
       " ", el("span", { textContent: w.summary || "" })),
    ...table("Query", w.query), ...table("Message fields", w.message), ...table("Close codes", w.close_codes));
}

function render() {
  $("#ref-version").textContent = `OpenAPI ${doc.openapi} · version ${doc.info.version}`;
  $("#ref-description").textContent = doc.info.description || "";
  const byTag = new Map();
  for (const [path, ops] of Object.entries(doc.paths)) {
    for (const method of METHODS) {
      if (!ops[method]) continue;
      const tag = (ops[method].tags || ["other"])[0];
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push(operationView(path, method, ops[method]));
    }
  }
  const sections = [...byTag.entries()].map(([tag, views]) => el("section", { className: "card tag", id: `tag-${tag}` },
    el("h2", { textContent: tag }), ...views));
  $("#ref-ops").replaceChildren(...sections);
  $("#ref-tags").replaceChildren(...[...byTag.keys()].map((tag) => el("a", { href: `#tag-${tag}`, textContent: tag })));
  const ws = doc["x-websockets"];
  if (ws) {
    $("#ref-websocket").hidden = false;
    $("#ref-websocket-body").replaceChildren(...Object.entries(ws).map(([path, w]) => websocketView(path, w)));
  }
  filter();
  // A link to one operation (#get-api-workflows) opens it.
  const target = location.hash && document.getElementById(location.hash.slice(1));
  if (target && target.tagName === "DETAILS") { target.open = true; target.scrollIntoView(); }
}

function filter() {
  const words = $("#ref-search").value.trim().toLowerCase().split(/\s+/).filter(Boolean);
  let shown = 0;
  for (const op of document.querySelectorAll("details.op")) {
    const text = `${op.dataset.method} ${op.dataset.path} ${op.querySelector(".summary").textContent}`.toLowerCase();
    op.hidden = !words.every((w) => text.includes(w));
    if (!op.hidden) shown += 1;
  }
  for (const section of document.querySelectorAll("section.tag")) {
    section.hidden = !section.querySelector("details.op:not([hidden])");
  }
  $("#ref-count").textContent = `${shown} operation(s)`;
  if (words.length && shown <= 3) for (const op of document.querySelectorAll("details.op:not([hidden])")) op.open = true;
}

async function init() {
  $("#ref-search").addEventListener("input", filter);
  $("#ref-search-form").addEventListener("submit", (e) => e.preventDefault());
  try {
    const r = await fetch("/openapi.json");
    if (!r.ok) throw new Error(`GET /openapi.json: HTTP ${r.status}`);
    doc = await r.json();
  } catch (e) {
    $("#ref-error").hidden = false;
    $("#ref-error").textContent = e.message;
    return;
  }
  render();
}

document.addEventListener("DOMContentLoaded", init);
