// The parts of a job on the page: following it (long poll), its status and progress, and its
// result (prediction, pictures, scores, downloads, record). The job view and the compare grid
// both build on these.

import { api, ApiError, jobState, TERMINAL } from "../api.js";
import { h, fill, formatNumber } from "./dom.js";

const POLL_WAIT_S = 25;

/** Follow a job until it ends: onUpdate(job) on every change of status or progress step (long
 * poll, no busy loop); onError(error) when it cannot be followed. Returns { stop() }. */
export function watchJob(id, onUpdate, onError = () => {}) {
  let stopped = false;
  (async () => {
    let since = null;
    let failures = 0;
    while (!stopped) {
      let job;
      try {
        job = await api.job(id, since === null ? {} : { wait: POLL_WAIT_S, since });
      } catch (error) {
        if (stopped) return;
        if (error instanceof ApiError && error.status < 500) return onError(error);
        failures += 1;
        onError(error);
        await new Promise((resolve) => setTimeout(resolve, Math.min(10000, 500 * 2 ** failures)));
        continue;
      }
      failures = 0;
      if (stopped) return;
      onUpdate(job);
      if (TERMINAL.includes(job.status)) return;
      since = jobState(job);
    }
  })();
  return {
    stop: () => {
      stopped = true;
    },
  };
}

/** Status text and a progress bar that follow a job: { element, update(job) }. */
export function statusLine() {
  const status = h("span.status", { role: "status", "aria-live": "polite" });
  const bar = h("progress", { max: 1, value: 0, "aria-label": "Progress" });
  const steps = h("span.steps");
  const element = h("div.status-line", {}, status, steps, bar);
  return {
    element,
    update(job) {
      status.textContent = job.status;
      status.dataset.status = job.status;
      const progress = job.progress;
      if (progress && progress.total > 0) {
        bar.max = progress.total;
        bar.value = progress.step;
        steps.textContent = `${progress.step}/${progress.total}`;
      } else if (job.status === "succeeded") {
        bar.max = 1;
        bar.value = 1;
        steps.textContent = "";
      }
      bar.hidden = TERMINAL.includes(job.status) && job.status !== "succeeded";
    },
  };
}

/** "Egyptian cat, 39.3 %" (and the explained target when it is another class). */
export function predictionText(prediction) {
  if (!prediction) return "";
  const percent = (p) => `${(100 * p).toFixed(1)} %`;
  let text = `${prediction.label}, ${percent(prediction.probability)}`;
  if (prediction.target !== prediction.class_index) {
    text += ` · explaining ${prediction.target_label} (${percent(prediction.target_probability)})`;
  }
  return text;
}

/** A picture artifact, fetched with the API key: <figure><img><figcaption>. */
export function artifactFigure(job, name, caption, className = "") {
  const img = h("img", { alt: `${caption} of job ${job.id}` });
  img.dataset.artifact = name;
  api.blobUrl(job.artifacts[name]).then(
    (url) => {
      img.src = url;
    },
    () => {
      img.alt = `${caption}: could not be loaded`;
    },
  );
  return h(`figure${className ? `.${className}` : ""}`, {}, img, h("figcaption", {}, caption));
}

/** The overlay picture over the input, with a slider for its opacity. */
export function overlayFigure(job) {
  const base = h("img", { alt: "" });
  const top = h("img.layer", { alt: `Overlay of job ${job.id}` });
  top.dataset.artifact = "overlay.png";
  const slider = h("input", {
    type: "range",
    min: 0,
    max: 1,
    step: 0.05,
    value: 1,
    "aria-label": "Overlay opacity",
    oninput: () => {
      top.style.opacity = slider.value;
    },
  });
  api.blobUrl(job.artifacts["input.png"]).then(
    (url) => {
      base.src = url;
    },
    () => {},
  );
  api.blobUrl(job.artifacts["overlay.png"]).then(
    (url) => {
      top.src = url;
    },
    () => {},
  );
  return h(
    "figure.overlay",
    {},
    h("div.stack", {}, base, top),
    h("figcaption", {}, "Overlay ", slider),
  );
}

/** The pictures of a finished job: input, heat map, overlay, and for mask methods the
 * explanation and the mask; a time series gets its plot. */
export function resultFigures(job) {
  const has = (name) => name in job.artifacts;
  if (has("series.png"))
    return [artifactFigure(job, "series.png", "Series and attribution", "wide")];
  const mask = has("explanation.png");
  return [
    has("input.png") ? artifactFigure(job, "input.png", "Input") : null,
    artifactFigure(job, "heatmap.png", mask ? "Mask (pixels)" : "Heat map"),
    mask ? artifactFigure(job, "explanation.png", "Explanation") : null,
    has("input.png") ? overlayFigure(job) : artifactFigure(job, "overlay.png", "Overlay"),
  ];
}

/** Scores as a table: value, which direction is better, meaning (GET /scores). A null score
 * is undefined for this input; `reasons` (the job's undefined_scores) says why. */
export function scoresTable(scores, glossary, reasons = {}) {
  const keys = Object.keys(scores || {});
  if (!keys.length) return h("p.muted", {}, "No scores for this method.");
  return h(
    "table.scores",
    {},
    h("caption", {}, "Scores"),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", { scope: "col" }, "score"),
        h("th", { scope: "col" }, "value"),
        h("th", { scope: "col" }, "better"),
        h("th", { scope: "col" }, "meaning"),
      ),
    ),
    h(
      "tbody",
      {},
      keys.map((key) =>
        h(
          "tr",
          {},
          h("th", { scope: "row" }, key),
          h("td.num", {}, formatNumber(scores[key])),
          h("td.better", {}, betterText(glossary[key])),
          h(
            "td",
            {},
            [glossary[key]?.meaning, reasons[key] && `Undefined here: ${reasons[key]}.`]
              .filter(Boolean)
              .join(" "),
          ),
        ),
      ),
    ),
  );
}

export const betterText = (entry) =>
  entry?.better === "higher" ? "↑ higher" : entry?.better === "lower" ? "↓ lower" : "–";

/** Links that download every artifact (fetched with the API key). */
export function downloads(job) {
  return h(
    "ul.downloads",
    {},
    Object.entries(job.artifacts).map(([name, url]) =>
      h(
        "li",
        {},
        h(
          "a",
          {
            href: "#",
            onclick: async (event) => {
              event.preventDefault();
              const link = h("a", { href: await api.blobUrl(url), download: `${job.id}-${name}` });
              document.body.append(link);
              link.click();
              link.remove();
            },
          },
          name,
        ),
      ),
    ),
  );
}

/** The options and the reproducibility record (summary.json), collapsed. */
export function recordDetails(job) {
  const body = h(
    "pre.record",
    {},
    JSON.stringify(
      {
        model: job.model,
        method: job.method,
        options: job.options,
        target: job.target,
        seed: job.seed,
      },
      null,
      2,
    ),
  );
  const details = h("details", {}, h("summary", {}, "Options and reproducibility record"), body);
  if (job.artifacts["summary.json"]) {
    details.addEventListener("toggle", async () => {
      if (!details.open || details.dataset.loaded) return;
      details.dataset.loaded = "1";
      const summary = await api.artifactJson(job.artifacts["summary.json"]);
      fill(body, JSON.stringify(summary, null, 2));
    });
  }
  return details;
}
