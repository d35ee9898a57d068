// The status page (docs/portal.md): polls this sign-up's progress until the agent is
// ready, then opens it through a fresh one-time sign-in link.
"use strict";

const token = window.location.pathname.split("/").pop();
const api = `/portal/api/status/${encodeURIComponent(token)}`;
const message = document.getElementById("message");
const estimate = document.getElementById("estimate");
const openButton = document.getElementById("open");
const errorLine = document.getElementById("error");

function showSteps(current, steps) {
  const at = steps.indexOf(current);
  for (const item of document.querySelectorAll("#steps li")) {
    const index = steps.indexOf(item.dataset.step);
    const done = current === "ready" || (at >= 0 && index < at);
    item.className = done ? "done" : index === at ? "current" : "";
  }
}

function show(state) {
  showSteps(state.step, state.steps);
  message.textContent = state.message;
  document.getElementById("address").textContent = state.subdomain
    ? `Your agent's address: ${state.url || state.subdomain}`
    : "";
  estimate.hidden = state.estimate_basis === null;
  if (state.estimate_basis !== null) {
    estimate.textContent = `This estimate comes from ${state.estimate_basis}.`;
  }
  openButton.hidden = state.step !== "ready";
}

async function poll() {
  let wait = 2000;
  try {
    const reply = await fetch(api);
    const body = await reply.json();
    if (!reply.ok) {
      message.textContent = body.error.message;
      if (reply.status === 404 || reply.status === 410) return;
    } else {
      show(body);
      wait = body.poll_seconds * 1000;
      if (["ready", "expired", "stopped"].includes(body.step)) return;
    }
  } catch (error) {
    message.textContent = "We lost contact with the server; trying again…";
  }
  setTimeout(poll, wait);
}

openButton.addEventListener("click", async () => {
  errorLine.textContent = "";
  openButton.disabled = true;
  try {
    const reply = await fetch(`${api}/open`, { method: "POST" });
    const body = await reply.json();
    if (reply.ok) {
      window.location.assign(body.url);
      return;
    }
    errorLine.textContent = body.error.message;
  } catch (error) {
    errorLine.textContent = "We could not reach the server. Please try again.";
  }
  openButton.disabled = false;
});

poll();
