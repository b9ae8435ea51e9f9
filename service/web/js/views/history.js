// History: the jobs of this browser session, and the recent jobs the server keeps for this API
// key (every job on a server without keys), each reopenable by its link, with its input, method,
// main score, and a filter over them.

import { api, apiKey } from "../api.js";
import { h, fill, formatNumber } from "../components/dom.js";
import { scrolling } from "../components/jobParts.js";
import { history } from "../session_jobs.js";

const SERVER_LIMIT = 50;

/** The score a row shows: the first one with a direction in the glossary (GET /scores), else
 * the first one; "" when the job has none (yet). */
export function mainScore(scores, glossary) {
  const keys = Object.keys(scores || {});
  const key = keys.find((k) => glossary[k]?.better) || keys[0];
  return key === undefined ? "" : `${key} ${formatNumber(scores[key])}`;
}

/** A table of jobs: rows are { id, status?, method, model, input?, score?, created (ms) }. */
function jobTable(caption, rows) {
  const columns = ["job", "input", "method", "main score", "status", "model", "submitted"];
  return scrolling(
    "table.jobs",
    {},
    h("caption", {}, caption),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        columns.map((c) => h("th", { scope: "col" }, c)),
      ),
    ),
    h(
      "tbody",
      {},
      rows.map((row) => {
        const tr = h(
          "tr",
          {},
          h("td", {}, h("a", { href: `#/jobs/${row.id}` }, row.id.slice(0, 8))),
          h("td.input", {}, row.input || ""),
          h("td", {}, row.method),
          h("td.score", {}, row.score || ""),
          h("td", {}, row.status || ""),
          h("td", {}, row.model),
          h("td", {}, new Date(row.created).toLocaleString()),
        );
        tr.dataset.search = [row.id, row.input, row.method, row.model, row.status, row.score]
          .join(" ")
          .toLowerCase();
        return tr;
      }),
    ),
  );
}

export function historyView(container, catalogue) {
  const session = history.list();
  const server = h("div.server-jobs", { "aria-busy": "true" }, h("p.muted", {}, "Loading…"));
  const mine = h("div.session-jobs");
  const filter = h("input", {
    id: "history-filter",
    type: "search",
    placeholder: "method, model, input, status…",
    autocomplete: "off",
  });
  const count = h("p.muted", { id: "history-count", "aria-live": "polite" });
  const applyFilter = () => {
    const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    let total = 0;
    for (const tr of container.querySelectorAll("table.jobs tbody tr")) {
      const match = words.every((w) => tr.dataset.search.includes(w));
      tr.hidden = !match;
      total += 1;
      shown += match ? 1 : 0;
    }
    count.textContent = words.length ? `${shown} of ${total} rows match.` : "";
  };
  filter.addEventListener("input", applyFilter);
  const renderSession = (known = new Map()) => {
    const rows = session.map((entry) => {
      const job = known.get(entry.id);
      return job
        ? { ...entry, status: job.status, score: mainScore(job.scores, catalogue.scores) }
        : entry;
    });
    fill(
      mine,
      rows.length
        ? jobTable("This browser session", rows)
        : h(
            "p.muted",
            {},
            "No jobs yet in this browser session. ",
            h("a", { href: "#/" }, "Explain something"),
            ".",
          ),
    );
  };
  renderSession();
  fill(
    container,
    h(
      "section.history",
      {},
      h("h1", {}, "History"),
      h("div.field", {}, h("label", { for: "history-filter" }, "Filter"), filter, count),
      mine,
      server,
    ),
  );
  const caption = apiKey.get() ? "Recent jobs of this API key" : "Recent jobs on this server";
  api.jobs(SERVER_LIMIT).then(
    (jobs) => {
      server.removeAttribute("aria-busy");
      const rows = jobs.map((job) => ({
        ...job,
        input: job.input_name || "",
        score: mainScore(job.scores, catalogue.scores),
        created: job.created_at * 1000,
      }));
      renderSession(new Map(jobs.map((job) => [job.id, job])));
      fill(server, rows.length ? jobTable(caption, rows) : h("p.muted", {}, `${caption}: none.`));
      applyFilter();
    },
    (error) => fill(server, h("p.field-error", { role: "alert" }, error.message)),
  );
}
