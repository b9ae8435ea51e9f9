// History: the jobs of this browser session, each reopenable by its link.

import { h, fill } from "../components/dom.js";
import { history } from "../history.js";

export function historyView(container) {
  const entries = history.list();
  fill(
    container,
    h(
      "section.history",
      {},
      h("h1", {}, "Jobs of this session"),
      entries.length
        ? h(
            "table",
            {},
            h(
              "thead",
              {},
              h(
                "tr",
                {},
                ["job", "method", "model", "input", "submitted"].map((t) =>
                  h("th", { scope: "col" }, t),
                ),
              ),
            ),
            h(
              "tbody",
              {},
              entries.map((e) =>
                h(
                  "tr",
                  {},
                  h("td", {}, h("a", { href: `#/jobs/${e.id}` }, e.id.slice(0, 12))),
                  h("td", {}, e.method),
                  h("td", {}, e.model),
                  h("td", {}, e.input),
                  h("td", {}, new Date(e.created).toLocaleTimeString()),
                ),
              ),
            ),
          )
        : h(
            "p.muted",
            {},
            "No jobs yet in this browser session. ",
            h("a", { href: "#/" }, "Explain something"),
            ".",
          ),
    ),
  );
}
