// The sign-in page: asks for a one-time link by e-mail (docs/portal.md).
"use strict";
document.getElementById("signin").addEventListener("submit", async (event) => {
  event.preventDefault();
  const message = document.getElementById("message");
  const email = document.getElementById("email").value.trim();
  message.textContent = "Sending…";
  try {
    const reply = await fetch("/portal/api/signin", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ email }),
    });
    const body = await reply.json();
    message.textContent = reply.ok ? body.message : body.error.message;
  } catch (error) {
    message.textContent = "We could not reach the server. Please try again.";
  }
});
