// One job, reopenable at #/jobs/<id>: live status, progress and loss curve with a cancel
// button while it runs; then the prediction, pictures, scores, downloads and record.

import { api, ApiError, TERMINAL } from "../api.js";
import { h, fill } from "../components/dom.js";
import {
  colourBar,
  downloads,
  predictionText,
  recordDetails,
  resultFigures,
  scoresTable,
  statusLine,
  watchJob,
} from "../components/jobParts.js";
import { lossChart } from "../components/lossChart.js";

export function jobView(container, catalogue, navigate, id) {
  const status = statusLine();
  const chart = lossChart();
  const cancel = h("button", { type: "button", id: "cancel" }, "Cancel");
  const message = h("p.field-error", { role: "alert" });
  const result = h("section.result", { "aria-label": "Result" });
  const heading = h("h1", {}, `Job ${id}`);
  const meta = h("p.meta");
  const actions = h("p.job-actions");
  const chartBox = h("div.chart-box", { hidden: true }, chart.element, chart.caption);
  fill(
    container,
    h(
      "article.job",
      {},
      heading,
      meta,
      actions,
      h("div.watch", {}, status.element, cancel),
      chartBox,
      message,
      result,
    ),
  );

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      status.update(await api.cancel(id));
    } catch (error) {
      message.textContent = error.message;
      cancel.disabled = false;
    }
  });

  let finished = false;
  const watcher = watchJob(
    id,
    async (job) => {
      const method = catalogue.methods.find((m) => m.name === job.method);
      heading.textContent = `${job.method} on ${job.model}`;
      fill(
        meta,
        h("span.input-name", { id: "input-name" }, `Input: ${job.input_name || "sent as JSON"}`),
        ` · job ${job.id}`,
        method ? ` · ${method.citation}` : "",
      );
      fill(actions, h("a", { href: `#/again/${job.id}`, id: "run-again" }, "Run again"));
      status.update(job);
      message.textContent = job.error || "";
      if (job.progress && typeof job.progress.loss === "number") {
        chartBox.hidden = false;
        chart.add(job.progress);
      }
      cancel.hidden = TERMINAL.includes(job.status);
      if (job.status === "succeeded" && !finished) {
        finished = true;
        await showResult(job);
      }
    },
    (error) => {
      if (error instanceof ApiError && error.status < 500) {
        // No such job (or not the caller's): nothing is loading and nothing can be cancelled.
        cancel.hidden = true;
        status.element.hidden = true;
      }
      message.textContent =
        error instanceof ApiError ? error.message : `Connection lost (${error.message}); retrying…`;
    },
  );

  async function showResult(job) {
    if (job.artifacts["history.json"]) {
      const past = await api.artifactJson(job.artifacts["history.json"]);
      if (past.loss) {
        chartBox.hidden = false;
        chart.setHistory(past);
      }
    }
    let key = null;
    if (job.artifacts["heatmap.png"] && job.artifacts["summary.json"]) {
      key = (await api.artifactJson(job.artifacts["summary.json"])).heatmap_colours || null;
    }
    const mask = "explanation.png" in job.artifacts;
    fill(
      result,
      h(
        "p.prediction",
        { id: "prediction" },
        h("strong", {}, "Prediction: "),
        predictionText(job.prediction),
      ),
      h("div.figures", {}, resultFigures(job)),
      key ? colourBar(key, mask ? "Mask" : "Heat map") : null,
      scoresTable(job.scores, catalogue.scores, job.undefined_scores, job.baselines),
      h("h2", {}, "Downloads"),
      downloads(job),
      recordDetails(job),
      h("p", {}, h("a", { href: "#/" }, "Explain another")),
    );
  }
  return () => watcher.stop();
}
