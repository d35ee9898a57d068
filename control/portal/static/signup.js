// The sign-up page (docs/portal.md): a name checked live, a plan, an e-mail, then
// Stripe Checkout. The server decides every rule; this page only shows its answers.
"use strict";

const form = document.getElementById("signup");
const subdomain = document.getElementById("subdomain");
const hint = document.getElementById("availability");
const email = document.getElementById("email");
const pay = document.getElementById("pay");
const errorLine = document.getElementById("error");
let available = false;
let asked = 0; // only the latest availability answer counts
let timer = null;

async function json(url, options) {
  const reply = await fetch(url, options);
  return { ok: reply.ok, status: reply.status, body: await reply.json() };
}

function chosenPlan() {
  const checked = form.querySelector("input[name=plan]:checked");
  return checked ? checked.value : "";
}

function refresh() {
  pay.disabled = !(available && chosenPlan() && email.value.trim());
}

function showPlans(plans) {
  const list = document.getElementById("plans");
  list.replaceChildren(
    ...plans.map((plan, index) => {
      const label = document.createElement("label");
      label.className = "plan";
      const input = document.createElement("input");
      Object.assign(input, { type: "radio", name: "plan", value: plan.name, checked: index === 0 });
      const name = document.createElement("strong");
      name.textContent = plan.display_name;
      const price = document.createElement("span");
      price.className = "price";
      price.textContent = plan.price || "Price shown at payment";
      if (plan.demo) price.textContent += " (demo: nothing is charged)";
      const size = document.createElement("span");
      size.className = "size";
      size.textContent = `${plan.memory_mb / 1024} GB memory · ${plan.cpus} CPU · ${plan.disk_gb} GB storage`;
      label.append(input, " ", name, price, size);
      return label;
    }),
  );
}

async function check() {
  const name = subdomain.value;
  const mine = ++asked;
  available = false;
  refresh();
  if (!name) {
    hint.textContent = "";
    return;
  }
  hint.className = "hint";
  hint.textContent = "Checking…";
  const reply = await json(`/portal/api/availability?subdomain=${encodeURIComponent(name)}`);
  if (mine !== asked) return;
  available = reply.ok && reply.body.available;
  hint.className = available ? "hint ok" : "hint bad";
  hint.textContent = available ? "This address is free." : reply.body.reason || "Not available.";
  refresh();
}

subdomain.addEventListener("input", () => {
  subdomain.value = subdomain.value.toLowerCase().trim();
  clearTimeout(timer);
  timer = setTimeout(check, 250);
});
email.addEventListener("input", refresh);
form.addEventListener("change", refresh);

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  errorLine.textContent = "";
  pay.disabled = true;
  pay.textContent = "Opening the payment page…";
  const order = { subdomain: subdomain.value, plan: chosenPlan(), email: email.value.trim() };
  try {
    const reply = await json("/portal/api/checkout", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(order),
    });
    if (reply.ok) {
      window.location.assign(reply.body.url);
      return;
    }
    errorLine.textContent = reply.body.error.message;
  } catch (error) {
    errorLine.textContent = "We could not reach the server. Please try again.";
  }
  pay.textContent = "Continue to payment";
  await check();
});

async function comeBack(token) {
  // Back from Stripe without paying: release the name and fill the form in again.
  history.replaceState(null, "", "/portal/signup");
  const reply = await json(`/portal/api/status/${encodeURIComponent(token)}/cancel`, {
    method: "POST",
  });
  if (!reply.ok) {
    errorLine.textContent = reply.body.error.message;
    return;
  }
  subdomain.value = reply.body.subdomain;
  email.value = reply.body.email;
  const plan = form.querySelector(`input[name=plan][value="${CSS.escape(reply.body.plan)}"]`);
  if (plan) plan.checked = true;
  errorLine.textContent = "The payment was cancelled. Nothing was charged; you can try again.";
  await check();
}

async function start() {
  const reply = await json("/portal/api/plans");
  document.getElementById("domain").textContent = `.${reply.body.base_domain}`;
  showPlans(reply.body.plans);
  const back = new URLSearchParams(window.location.search).get("back");
  if (back) await comeBack(back);
  refresh();
}

start().catch(() => {
  errorLine.textContent = "We could not reach the server. Please reload the page.";
});
