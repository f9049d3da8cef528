// The EdgePilot fleet dashboard: sign-in, hash routes, the overview loaded once and kept
// current by the hub's event stream.

import { AuthError, forgetToken, getJson, getToken, setToken, takeTokenFromUrl } from "./api.js";
import { clear, el, schedule, setText, stats } from "./dom.js";
import { Stream, eventSeq } from "./stream.js";
import { store } from "./store.js";
import { mountAlerts } from "./views/alerts.js";
import { mountDeployments } from "./views/deployments.js";
import { mountDevice } from "./views/device.js";
import { mountEndpoints } from "./views/endpoints.js";
import { mountLogs } from "./views/logs.js";
import { mountOverview } from "./views/overview.js";
import { mountSignin } from "./views/signin.js";

const fromLink = takeTokenFromUrl(); // first: the token leaves the address bar at once

const main = document.getElementById("main");
const top = document.getElementById("top");
const live = document.getElementById("live");
const navAlerts = document.getElementById("nav-alerts");
let view = null;
let signedIn = false;

const ROUTES = [
  [/^\/?$/, "overview", () => mountOverview(main)],
  [/^\/device\/(.+)$/, "device", (m) => mountDevice(main, { id: decodeURIComponent(m[1]) })],
  [/^\/deployments$/, "deployments", () => mountDeployments(main)],
  [/^\/endpoints$/, "endpoints", () => mountEndpoints(main)],
  [/^\/alerts$/, "alerts", () => mountAlerts(main)],
  [/^\/logs(?:\/(.+))?$/, "logs", (m) => mountLogs(main, { deviceId: m[1] ? decodeURIComponent(m[1]) : null })],
];

function show(name, mount) {
  view?.destroy?.();
  clear(main);
  stats.view = name;
  document.body.dataset.view = name;
  view = mount();
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.view === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function route() {
  if (location.hash.startsWith("#token=")) {
    // a sign-in link opened in a tab that has the page already
    takeTokenFromUrl();
    stream.stop();
    signedIn = false;
    start(true);
    return;
  }
  if (!signedIn) return;
  const path = location.hash.replace(/^#/, "") || "/";
  for (const [pattern, name, mount] of ROUTES) {
    const m = pattern.exec(path);
    if (m) {
      show(name, () => mount(m));
      document.title = `EdgePilot · ${name}`;
      return;
    }
  }
  show("missing", () => {
    main.append(el("h1", {}, "Not found"), el("p", {}, el("a", { href: "#/" }, "Back to the fleet")));
    return null;
  });
}

store.subscribe((change) => {
  view?.update?.(change);
  if (change.all || change.alerts) {
    const n = store.alerts.size;
    navAlerts.hidden = n === 0;
    setText(navAlerts, String(n));
  }
});

// -- the stream ----------------------------------------------------------------------------
let refetching = null;
let buffered = [];

const stream = new Stream({
  onEvent(event) {
    if (event.kind === "missed") {
      stats.missed += 1;
      refetch();
      return;
    }
    if (refetching) buffered.push(event);
    else store.apply(event);
  },
  onAuth: () => signOut("The hub no longer accepts your token (expired or revoked): sign in again."),
  onState(state) {
    live.dataset.state = state;
    live.textContent = state === "live" ? "live" : state;
  },
  onBadResume: () => refetch(),
});

store.onUnknownDevice = () => refetch(); // a device registered since the overview

async function loadOverview() {
  const t0 = performance.now();
  const overview = await getJson("/overview");
  stats.overviewFetches += 1;
  store.load(overview);
  stats.overviewMs = performance.now() - t0;
  return overview;
}

/** Load /overview again (the stream said events were missed); events that arrive meanwhile
 * are applied after it when they are newer than it. */
function refetch() {
  if (refetching) return refetching;
  refetching = (async () => {
    try {
      const overview = await loadOverview();
      const base = eventSeq(overview.last_event_id);
      for (const event of buffered) {
        const seq = eventSeq(event.id);
        if (!base || !seq || seq.boot !== base.boot || seq.n > base.n) store.apply(event);
      }
    } catch (err) {
      if (err instanceof AuthError) {
        signOut("The hub no longer accepts your token: sign in again.");
      } else {
        setTimeout(refetch, 2000);
      }
    } finally {
      buffered = [];
      refetching = null;
    }
  })();
  return refetching;
}

// -- signing in and out --------------------------------------------------------------------
function signOut(message = "") {
  signedIn = false;
  stream.stop();
  forgetToken();
  top.hidden = true;
  show("signin", () => mountSignin(main, { message, onSignedIn: signedInWith }));
}

function signedInWith(token, overview) {
  setToken(token);
  begin(overview);
}

function begin(overview) {
  signedIn = true;
  top.hidden = false;
  store.load(overview);
  stats.overviewFetches += 1;
  if (location.hash === "" || location.hash === "#/signin") history.replaceState(null, "", "#/");
  route();
  schedule(() => {
    if (stats.firstDataMs === null) stats.firstDataMs = performance.now();
  });
  stream.start(overview.last_event_id);
}

async function start(linked = fromLink) {
  if (!getToken()) {
    signOut();
    return;
  }
  try {
    const t0 = performance.now();
    const overview = await getJson("/overview");
    begin(overview);
    stats.overviewMs = performance.now() - t0; // fetch + first render
  } catch (err) {
    if (err instanceof AuthError) {
      signOut(
        linked
          ? "The hub did not accept the link's token: it is unknown, expired or revoked. Ask for a new link (`edgepilot ui`) or paste a token."
          : "The hub no longer accepts the saved token: sign in again.",
      );
      return;
    }
    clear(main);
    main.append(el("p", { class: "error", role: "alert" }, `Cannot reach the hub: ${err.message}. Retrying…`));
    setTimeout(start, 3000);
  }
}

window.addEventListener("hashchange", route);
document.getElementById("signout").addEventListener("click", () => signOut("Signed out."));
start();
