// Deployments: live rollouts first, each with its progress (devices in a final state / total),
// its devices' states and, for a canary rollout, where the canary stands.

import { DASH, clear, el, isoClock, setText, stats } from "../dom.js";
import { isLive, store } from "../store.js";

const STATE_TEXT = {
  canary: "canary soaking",
  rolling_out: "rolling out",
  completed: "completed",
  halted: "halted",
  superseded: "superseded",
};

function canaryText(d) {
  if (d.strategy !== "canary") return null;
  if (d.state === "canary") return "canary: on the canary devices, the rest wait";
  if (d.state === "halted") return "canary: failed, rollout halted";
  return "canary: passed, promoted to the rest";
}

function devicesText(counts) {
  const parts = Object.entries(counts || {})
    .filter(([k, v]) => k !== "total" && v > 0)
    .map(([k, v]) => `${v} ${k.replaceAll("_", " ")}`);
  return parts.length ? parts.join(" · ") : DASH;
}

export function mountDeployments(main, { compact = false } = {}) {
  const list = el("div", { class: "deployments", id: "deployments" });
  const empty = el("p", { class: "muted" }, "No deployments yet.");
  if (!compact) main.append(el("h1", {}, "Deployments"));
  main.append(list, empty);
  const cards = new Map();
  let order = "";

  function cardFor(d) {
    const title = el("span", { class: "dep-title" });
    const state = el("span", { class: "badge" });
    const fill = el("div", { class: "fill" });
    const bar = el("div", { class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100" }, fill);
    const pctText = el("span", { class: "dep-pct" });
    const devices = el("div", { class: "dep-devices muted" });
    const canary = el("div", { class: "dep-canary" });
    const meta = el("div", { class: "dep-meta muted" });
    const node = el("article", { class: "card deployment", dataset: { id: String(d.id) } },
      el("header", {}, title, state), el("div", { class: "dep-progress" }, bar, pctText), devices, canary, meta);
    const card = { node, title, state, fill, bar, pctText, devices, canary, meta, progress: null };
    paint(card, d);
    return card;
  }

  function paint(card, d) {
    setText(card.title, `#${d.id} ${d.version} ${d.artifact || ""} → ${d.target}`);
    setText(card.state, STATE_TEXT[d.state] || d.state);
    card.node.dataset.state = d.state;
    const percent = Math.round((d.progress || 0) * 100);
    if (card.progress !== percent) {
      card.progress = percent;
      card.fill.style.width = `${percent}%`;
      card.bar.setAttribute("aria-valuenow", String(percent));
      card.node.dataset.progress = String(d.progress || 0);
      const seen = (stats.progressPainted[d.id] ||= []);
      seen.push(d.progress || 0);
      if (seen.length > 50) seen.shift();
    }
    const total = d.devices?.total ?? 0;
    setText(card.pctText, `${percent}% of ${total}`);
    setText(card.devices, devicesText(d.devices));
    const canary = canaryText(d);
    card.canary.hidden = !canary;
    if (canary) setText(card.canary, canary);
    setText(card.meta, `${d.strategy.replaceAll("_", " ")} · created ${isoClock(d.created_at)}`);
  }

  function render() {
    const deps = store.sortedDeployments();
    const key = deps.map((d) => d.id).join(",");
    empty.hidden = deps.length > 0;
    if (key !== order) {
      order = key;
      const next = new Map();
      clear(list);
      for (const d of deps) {
        const card = cards.get(d.id) || cardFor(d);
        paint(card, d);
        next.set(d.id, card);
        list.append(card.node);
      }
      cards.clear();
      for (const [id, card] of next) cards.set(id, card);
      return;
    }
    for (const d of deps) paint(cards.get(d.id), d);
  }

  render();
  return {
    update(change) {
      if (change.all || change.deployments.size) render();
    },
  };
}

export { isLive };
