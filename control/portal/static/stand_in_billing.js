// The local stand-in for Stripe's billing portal (control/portal/stand_in.py): shows the
// subscription and, on "Cancel subscription", asks the control plane to send the signed
// webhook Stripe sends for a cancellation, then goes back as Stripe's return link does.
"use strict";

(function () {
  const sessionId = decodeURIComponent(location.pathname.split("/").pop() || "");
  const api = "/portal/api/stand-in/billing/" + encodeURIComponent(sessionId);
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
    const sub = await reply.json();
    $("sub-subdomain").textContent = sub.subdomain;
    $("sub-plan").textContent = sub.plan;
    $("back").href = sub.return_url;
    $("subscription").hidden = false;
    $("cancel-sub").hidden = false;
    $("back").hidden = false;
    say("Active, renews monthly.");
  }

  async function cancel() {
    $("cancel-sub").disabled = true;
    say("Cancelling…");
    const reply = await fetch(api + "/cancel", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: "{}",
    });
    if (!reply.ok) {
      say(await errorText(reply), true);
      $("cancel-sub").disabled = false;
      return;
    }
    const body = await reply.json();
    say("Cancelled. Taking you back…");
    location.assign(body.redirect);
  }

  $("cancel-sub").addEventListener("click", cancel);
  load().catch(() => say("The subscription could not be loaded: reload the page.", true));
})();
