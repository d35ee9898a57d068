// The page a mailed sign-in link opens: the token is in the fragment, which no server
// sees; it is spent only when the customer presses the button (docs/portal.md).
"use strict";
const token = location.hash.slice(1);
history.replaceState(null, "", location.pathname); // out of the address bar and history
const message = document.getElementById("message");
const button = document.getElementById("continue");
if (!token) {
  button.disabled = true;
  message.textContent = "This link is incomplete. Ask for a new one below.";
}
button.addEventListener("click", async () => {
  button.disabled = true;
  message.textContent = "Signing you in…";
  try {
    const reply = await fetch("/portal/api/signin/redeem", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token }),
    });
    const body = await reply.json();
    if (reply.ok) {
      location.assign(body.next);
      return;
    }
    message.textContent = body.error.message;
  } catch (error) {
    message.textContent = "We could not reach the server. Please try again.";
    button.disabled = false;
  }
});
