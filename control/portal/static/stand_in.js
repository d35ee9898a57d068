// The local stand-in for Stripe's hosted Checkout page (control/portal/stand_in.py):
// shows the order and, on "Pay", asks the control plane to send the signed webhooks
// Stripe would send, then goes to the success URL as Stripe does.
"use strict";

(function () {
  const sessionId = decodeURIComponent(location.pathname.split("/").pop() || "");
  const api = "/portal/api/stand-in/checkout/" + encodeURIComponent(sessionId);
  const $ = (id) => document.getElementById(id);

  function say(text, isError) {
    $("message").textContent = text;
    $("message").classList.toggle("error", Boolean(isError));
  }

  async function errorText(reply) {
    try {
      const body = await reply.json();
      return body.error && body.error.message ? body.error.message : "Something went wrong.";
    } catch (e) {
      return "Something went wrong.";
    }
  }

  async function load() {
    const reply = await fetch(api, { headers: { Accept: "application/json" } });
    if (!reply.ok) {
      say(await errorText(reply), true);
      return;
    }
    const order = await reply.json();
    $("order-subdomain").textContent = order.subdomain;
    $("order-plan").textContent = order.plan;
    $("order-email").textContent = order.email;
    $("order-price").textContent = order.price_id;
    $("cancel").href = order.cancel_url;
    $("order").hidden = false;
    $("pay").hidden = false;
    $("cancel").hidden = false;
    say("This is a test payment: press Pay to continue.");
  }

  async function pay() {
    $("pay").disabled = true;
    say("Paying…");
    const reply = await fetch(api + "/pay", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: "{}",
    });
    if (!reply.ok) {
      say(await errorText(reply), true);
      $("pay").disabled = false;
      return;
    }
    const body = await reply.json();
    say("Paid. Taking you to your agent's page…");
    location.assign(body.redirect);
  }

  // A request that fails on the way (not an answer: those say why) is asked again,
  // twice, before the buyer is told to reload.
  async function loadRetrying(waits) {
    try {
      await load();
    } catch (e) {
      if (!waits.length) throw e;
      await new Promise((done) => setTimeout(done, waits[0]));
      await loadRetrying(waits.slice(1));
    }
  }

  $("pay").addEventListener("click", pay);
  loadRetrying([500, 1500]).catch(() =>
    say("The order could not be loaded: reload the page.", true),
  );
})();
