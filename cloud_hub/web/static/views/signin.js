// The sign-in page: a token with the viewer role (or higher), checked against the hub before
// it is kept for the session.

import { AuthError, getJson } from "../api.js";
import { el } from "../dom.js";

/** Show the form; `onSignedIn(token, overview)` once the hub takes a token. */
export function mountSignin(main, { message = "", onSignedIn }) {
  const input = el("input", {
    type: "password",
    id: "token",
    name: "token",
    autocomplete: "off",
    spellcheck: "false",
    placeholder: "ep_…",
    required: true,
    "aria-describedby": "signin-help",
  });
  const error = el("p", { class: "error", id: "signin-error", role: "alert", hidden: !message }, message);
  const button = el("button", { type: "submit", id: "signin-submit" }, "Sign in");
  const form = el(
    "form",
    { class: "card signin", id: "signin" },
    el("h1", {}, "Sign in to the fleet"),
    el("label", { for: "token" }, "API token"),
    input,
    el(
      "p",
      { class: "muted", id: "signin-help" },
      "A token with the viewer role or higher: `edgepilot ui` prints a link that signs you in, or `edgepilot tokens create NAME --role viewer` makes one. It is kept for this browser tab only.",
    ),
    error,
    button,
  );
  main.append(form);
  input.focus();

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (!token) return;
    button.disabled = true;
    error.hidden = true;
    try {
      const overview = await getJson("/overview", { token });
      onSignedIn(token, overview);
    } catch (err) {
      error.textContent =
        err instanceof AuthError
          ? err.status === 401
            ? "The hub did not accept this token: it is unknown, expired or revoked."
            : `This token may not view the fleet: ${err.message}`
          : `Cannot reach the hub: ${err.message}`;
      error.hidden = false;
      input.select();
    } finally {
      button.disabled = false;
    }
  });
  return { update() {} };
}
