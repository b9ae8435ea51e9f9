// The page's entry: load the catalogue (asking for an API key when the server wants one), then
// route #/, #/compare, #/compare/<ids>, #/jobs/<id>, #/studies, #/studies/<id> and #/history to
// their views.

import { api, apiKey, ApiError } from "./api.js";
import { h, fill } from "./components/dom.js";
import { compareFormView, compareGridView } from "./views/compare.js";
import { explainView } from "./views/explain.js";
import { historyView } from "./views/history.js";
import { jobView } from "./views/job.js";
import { studyFormView, studyView } from "./views/study.js";

const ROUTES = [
  [/^#\/jobs\/([\w-]+)$/, (c, cat, nav, id) => jobView(c, cat, nav, id), null],
  [/^#\/again\/([\w-]+)$/, (c, cat, nav, id) => explainView(c, cat, nav, id), "explain"],
  [
    /^#\/compare\/([\w,-]+)$/,
    (c, cat, nav, ids) => compareGridView(c, cat, nav, ids.split(",")),
    "compare",
  ],
  [/^#\/compare$/, compareFormView, "compare"],
  [/^#\/studies\/([\w-]+)$/, (c, cat, nav, id) => studyView(c, cat, nav, id), "study"],
  [/^#\/studies$/, studyFormView, "study"],
  [/^#\/history$/, historyView, "history"],
  [/^(#\/?)?$/, (c, cat, nav) => explainView(c, cat, nav), "explain"],
];

const view = document.getElementById("view");
let leave = null;

/** Ask for an API key in the dialog; resolves once one is entered. */
function askForKey(message) {
  const dialog = document.getElementById("key-dialog");
  document.getElementById("key-error").textContent = message;
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        apiKey.set(document.getElementById("key-input").value.trim());
        resolve();
      },
      { once: true },
    );
  });
}

async function loadCatalogue() {
  for (;;) {
    try {
      const [methods, models, qualityMetrics, scores, samples] = await Promise.all([
        api.methods(),
        api.models(),
        api.qualityMetrics(),
        api.scores(),
        api.samples(),
      ]);
      return { methods, models, qualityMetrics, scores, samples };
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 401) throw error;
      apiKey.clear();
      await askForKey(error.message);
    }
  }
}

function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

/** "embedded · cpu · 1 worker" in the header, from GET /health (no key needed). */
async function showServerState() {
  const element = document.getElementById("server-state");
  try {
    const health = await api.health();
    const workers = `${health.workers} worker${health.workers === 1 ? "" : "s"}`;
    element.textContent = `${health.mode} · ${health.device} · ${workers}`;
    element.dataset.status = health.status;
  } catch (error) {
    element.textContent = `server unreachable: ${error.message}`;
  }
}

let catalogue;
function route() {
  if (leave) leave();
  leave = null;
  const hash = location.hash;
  for (const [pattern, render, tab] of ROUTES) {
    const match = hash.match(pattern);
    if (!match) continue;
    for (const link of document.querySelectorAll("[data-nav]")) {
      link.toggleAttribute("aria-current", link.dataset.nav === tab);
    }
    leave = render(view, catalogue, navigate, match[1]) || null;
    view.focus({ preventScroll: true });
    return;
  }
  fill(view, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/" }, "Back to the start")));
}

try {
  catalogue = await loadCatalogue();
  showServerState();
  window.addEventListener("hashchange", route);
  route();
} catch (error) {
  fill(
    view,
    h("h1", {}, "The service cannot be reached"),
    h("p.field-error", { role: "alert" }, error.message),
  );
}
