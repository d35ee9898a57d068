// The customer's page (docs/portal.md): every change sends the session's CSRF token;
// data is only ever written with textContent, never as HTML.
"use strict";
// SUPPORT_EMAIL, rendered into the page by the server (control/portal/brand.py).
const SUPPORT = document.body.dataset.support || "";
const CONTACT = SUPPORT ? `please contact support at ${SUPPORT}` : "please contact support";
const STATES = {
  preparing: "We are setting up your agent.",
  pending: "Waiting for a server: your agent starts as soon as one is ready.",
  provisioning: "Starting…",
  running: "Running.",
  suspended: `Paused: please check your payment details, or ${CONTACT}.`,
  deprovisioned: "Cancelled.",
};
let csrf = "";
const message = document.getElementById("message");

async function api(method, path, body) {
  const headers = { "X-CSRF-Token": csrf };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const reply = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  if (reply.status === 401) {
    location.assign("/portal/signin");
    throw new Error("signed out");
  }
  const data = reply.status === 204 ? {} : await reply.json();
  if (!reply.ok) {
    throw new Error(data.error ? data.error.message : `Something went wrong: ${CONTACT}.`);
  }
  return data;
}

function say(text) {
  message.textContent = text;
}

function stateWords(agent) {
  const words = STATES[agent.state] || agent.state;
  if (agent.state === "deprovisioned" && agent.deleted_after) {
    return `${words} Its data is kept until ${new Date(agent.deleted_after).toLocaleDateString()}, then deleted.`;
  }
  return words;
}

// `field`: a name the tenant profile lets the customer set, with its label and hint.
function keyField(form, field, isSet) {
  const name = field.name;
  const row = document.createElement("div");
  row.className = "field";
  const label = document.createElement("label");
  label.textContent = `${field.label} ${isSet ? "(set)" : "(not set)"}`;
  label.htmlFor = `key-${name}`;
  const input = document.createElement("input");
  input.type = "password";
  input.id = `key-${name}`;
  input.name = name;
  input.autocomplete = "off";
  input.placeholder = isSet ? "Leave empty to keep it" : "Paste your key";
  row.append(label, input);
  if (field.hint) {
    const hint = document.createElement("p");
    hint.className = "hint";
    hint.id = `hint-${name}`;
    hint.textContent = field.hint;
    input.setAttribute("aria-describedby", hint.id);
    row.append(hint);
  }
  if (isSet) {
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "quiet remove";
    remove.textContent = "Remove";
    remove.addEventListener("click", () => saveKeys(form, { [name]: null }));
    row.append(remove);
  }
  return row;
}

async function saveKeys(form, changes) {
  if (Object.keys(changes).length === 0) {
    say("Paste a key first.");
    return;
  }
  try {
    await api("PUT", `${form.dataset.path}/settings`, changes);
    say("Saved. Your agent is restarting with it.");
    await load();
  } catch (error) {
    say(error.message);
  }
}

async function renderAgent(summary) {
  const agent = await api("GET", `/portal/api/account/agents/${encodeURIComponent(summary.user_id)}`);
  const path = `/portal/api/account/agents/${encodeURIComponent(agent.user_id)}`;
  const card = document.getElementById("agent").content.firstElementChild.cloneNode(true);
  card.dataset.user = agent.user_id;
  card.querySelector(".name").textContent = agent.subdomain || "Your agent";
  card.querySelector(".state").textContent = stateWords(agent);
  const link = card.querySelector(".url");
  link.textContent = agent.url || "";
  if (agent.url) link.href = agent.url;
  const form = card.querySelector(".settings");
  form.dataset.path = path;
  const fields = form.querySelector(".fields");
  for (const field of agent.settings.fields) {
    fields.append(keyField(form, field, agent.settings.set.includes(field.name)));
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const changes = {};
    for (const input of form.querySelectorAll("input")) {
      if (input.value.trim()) changes[input.name] = input.value.trim();
    }
    saveKeys(form, changes);
  });
  card.querySelector(".open").addEventListener("click", () => act(path, "open"));
  card.querySelector(".billing").addEventListener("click", () => act(path, "billing-portal"));
  card.querySelector(".rotate").addEventListener("click", () => rotate(path));
  card.querySelector(".restart").addEventListener("click", () => restart(path, card));
  await showBackups(card.querySelector(".backups"), path);
  if (agent.state === "deprovisioned") {
    // Cancelled: nothing runs to open, configure or sign out of; invoices stay reachable.
    for (const part of card.querySelectorAll(".open, .restart, .settings, .danger")) part.remove();
  }
  return card;
}

function sizeWords(bytes) {
  if (bytes < 1024 * 1024) return `${Math.max(1, Math.round(bytes / 1024))} KB`;
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

// Backups: a section only where this deployment makes them. Each download is a plain
// link: a GET with the session cookie, the archive streamed to the browser's downloads.
async function showBackups(section, path) {
  const { backups_enabled: enabled, snapshots } = await api("GET", `${path}/backups`);
  if (!enabled) return;
  const list = section.querySelector(".snapshots");
  for (const snapshot of snapshots) {
    const item = document.createElement("li");
    const when = document.createElement("span");
    when.textContent = `${new Date(snapshot.at).toLocaleString()} (${sizeWords(snapshot.bytes_added || 0)} new)`;
    const link = document.createElement("a");
    link.href = `${path}/backups/${encodeURIComponent(snapshot.id)}/download`;
    link.textContent = "Download";
    link.setAttribute("download", "");
    item.append(when, link);
    list.append(item);
  }
  if (snapshots.length === 0) {
    const none = document.createElement("li");
    none.textContent = "No backup has been made yet.";
    list.append(none);
  }
  section.hidden = false;
}

async function act(path, action) {
  try {
    const reply = await api("POST", `${path}/${action}`, {});
    location.assign(reply.url);
  } catch (error) {
    say(error.message);
  }
}

async function restart(path, card) {
  try {
    const agent = await api("POST", `${path}/restart`, {});
    card.querySelector(".state").textContent = stateWords(agent);
    say("Your agent is restarting; its files and settings are kept.");
  } catch (error) {
    say(error.message);
  }
}

async function rotate(path) {
  try {
    const reply = await api("POST", `${path}/rotate`, {});
    csrf = reply.csrf_token;
    say("Done: everyone else is signed out, and your agent is restarting with its new key.");
  } catch (error) {
    say(error.message);
  }
}

async function load() {
  const account = await api("GET", "/portal/api/account");
  csrf = account.csrf_token;
  document.getElementById("who").textContent = account.email;
  const days = account.retention_days;
  document.getElementById("cancel-words").textContent =
    "You can cancel at any time under “Payment, invoices and cancelling”. Your agent stops " +
    `when your subscription ends. We keep its data for ${days} days in case you change your ` +
    "mind; after that it is deleted for good and cannot be recovered.";
  const cards = await Promise.all(account.agents.map(renderAgent));
  document.getElementById("agents").replaceChildren(...cards);
  if (cards.length === 0) say(`There is no agent on this account yet. If you paid for one, ${CONTACT}.`);
}

document.getElementById("signout").addEventListener("click", async () => {
  try {
    await api("POST", "/portal/api/signout", {});
  } finally {
    location.assign("/portal/signin");
  }
});

load().catch((error) => say(error.message));
