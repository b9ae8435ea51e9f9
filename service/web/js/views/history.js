// History: the jobs of this browser session, and the recent jobs the server keeps for this API
// key (every job on a server without keys), each reopenable by its link.

import { api, apiKey } from "../api.js";
import { h, fill } from "../components/dom.js";
import { history } from "../history.js";

const SERVER_LIMIT = 50;

/** A table of jobs: rows are { id, status?, method, model, input?, created (ms) }. */
function jobTable(caption, rows) {
  const columns = ["job", "status", "method", "model", "input", "submitted"];
  return h(
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
      rows.map((row) =>
        h(
          "tr",
          {},
          h("td", {}, h("a", { href: `#/jobs/${row.id}` }, row.id.slice(0, 12))),
          h("td", {}, row.status || ""),
          h("td", {}, row.method),
          h("td", {}, row.model),
          h("td", {}, row.input || ""),
          h("td", {}, new Date(row.created).toLocaleString()),
        ),
      ),
    ),
  );
}

export function historyView(container) {
  const session = history.list();
  const server = h("div.server-jobs", { "aria-busy": "true" }, h("p.muted", {}, "Loading…"));
  fill(
    container,
    h(
      "section.history",
      {},
      h("h1", {}, "History"),
      session.length
        ? jobTable("This browser session", session)
        : h(
            "p.muted",
            {},
            "No jobs yet in this browser session. ",
            h("a", { href: "#/" }, "Explain something"),
            ".",
          ),
      server,
    ),
  );
  const caption = apiKey.get() ? "Recent jobs of this API key" : "Recent jobs on this server";
  api.jobs(SERVER_LIMIT).then(
    (jobs) => {
      server.removeAttribute("aria-busy");
      const rows = jobs.map((job) => ({ ...job, created: job.created_at * 1000 }));
      fill(server, rows.length ? jobTable(caption, rows) : h("p.muted", {}, `${caption}: none.`));
    },
    (error) => fill(server, h("p.field-error", { role: "alert" }, error.message)),
  );
}
