// The parts of a job on the page: following it (long poll), its status and progress, and its
// result (prediction, pictures, scores, downloads, record). The job view and the compare grid
// both build on these.

import { api, ApiError, jobState, TERMINAL } from "../api.js";
import { h, fill, formatNumber, breakable } from "./dom.js";

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

/** "8 s", "2 min 5 s": a duration for people. */
export function formatDuration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`;
}

/** The time a job has left: the server's eta_s (from the seconds per pass its workers
 * measured), less the time since that answer (``answeredAt``); else from the progress rate,
 * elapsed × remaining / done. Returns { text, source }: source "server", "progress" or "". */
export function etaText(job, now = Date.now() / 1000, answeredAt = now) {
  const progress = job.progress;
  if (job.status === "queued") {
    const once = Number.isFinite(job.estimate_s)
      ? ` (about ${formatDuration(job.estimate_s)} once it starts)`
      : "";
    return { text: `waiting for a worker${once}`, source: once ? "server" : "" };
  }
  if (job.status !== "running" || !job.started_at) {
    if (job.status === "succeeded" && job.started_at && job.finished_at)
      return { text: `took ${formatDuration(job.finished_at - job.started_at)}`, source: "" };
    return { text: "", source: "" };
  }
  const elapsed = Math.max(0, now - job.started_at);
  const soFar = `(${formatDuration(elapsed)} so far)`;
  if (Number.isFinite(job.eta_s)) {
    const left = Math.max(0, job.eta_s - (now - answeredAt));
    return { text: `about ${formatDuration(left)} left ${soFar}`, source: "server" };
  }
  if (!progress || !(progress.step > 0) || !(progress.total > 0))
    return { text: `${formatDuration(elapsed)} so far`, source: "" };
  const left = (elapsed * (progress.total - progress.step)) / progress.step;
  return { text: `about ${formatDuration(left)} left ${soFar}`, source: "progress" };
}

/** Status text, steps, a progress bar and the time left, following a job: { element,
 * update(job) }. Until the first step the bar moves without a value ("queued", "starting"),
 * never an empty bar; a method without steps (one pass, as Grad-CAM) counts as one step. */
export function statusLine() {
  const status = h("span.status", { role: "status", "aria-live": "polite" }, "loading");
  const bar = h("progress", { max: 1, "aria-label": "Progress" });
  const steps = h("span.steps");
  const eta = h("span.eta");
  const element = h("div.status-line", {}, status, steps, bar, eta);
  let last = null;
  let answeredAt = 0;
  const showEta = () => {
    const { text, source } = etaText(last, Date.now() / 1000, answeredAt);
    eta.textContent = text;
    eta.dataset.source = source;
  };
  const tick = setInterval(() => {
    if (!element.isConnected && last) clearInterval(tick);
    else if (last?.status === "running") showEta();
  }, 1000);
  return {
    element,
    update(job) {
      last = job;
      answeredAt = Date.now() / 1000;
      const progress = job.progress;
      const started = progress && progress.step > 0;
      status.textContent = job.status === "running" && !started ? "starting" : job.status;
      status.dataset.status = job.status;
      if (progress && progress.total > 0 && started) {
        bar.max = progress.total;
        bar.value = progress.step;
        steps.textContent = `step ${progress.step} of ${progress.total}`;
      } else if (job.status === "succeeded") {
        bar.max = 1;
        bar.value = 1;
        steps.textContent = "step 1 of 1";
      } else {
        bar.removeAttribute("value"); // indeterminate: it moves until the first step
        steps.textContent = progress?.total > 0 ? `${progress.total} steps` : "";
      }
      if (progress && progress.total > 0 && job.status === "succeeded") {
        bar.value = bar.max; // a mask method stopped early has nothing left to do
      }
      showEta();
      bar.hidden = TERMINAL.includes(job.status) && job.status !== "succeeded";
      if (TERMINAL.includes(job.status)) clearInterval(tick);
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

/** A score's value with its random baseline beside it (the job's `baselines`) and a warning
 * when it is worse than that baseline. */
function scoreCell(key, value, baselines) {
  const baseline = baselines[key];
  const cell = h("td.num", {}, formatNumber(value));
  if (!baseline) return cell;
  const reference = h(
    "span.baseline",
    {},
    ` vs ${baseline.value === null ? "undefined" : formatNumber(baseline.value)} random`,
  );
  cell.append(reference);
  if (baseline.worse) {
    cell.classList.add("worse");
    cell.append(
      h(
        "span.warning",
        { title: `Worse than its random baseline (${baseline.baseline})`, role: "img" },
        " ⚠ worse than random",
      ),
    );
  }
  return cell;
}

/** Scores as a table: value (beside its random baseline, flagged when worse), which direction
 * is better, meaning (GET /scores). A null score is undefined for this input; `reasons` (the
 * job's undefined_scores) says why. */
export function scoresTable(scores, glossary, reasons = {}, baselines = {}) {
  const keys = Object.keys(scores || {});
  if (!keys.length) return h("p.muted", {}, "No scores for this method.");
  return scrolling(
    "table.scores.job-scores",
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
          h("th", { scope: "row" }, breakable(key)),
          scoreCell(key, scores[key], baselines || {}),
          h("td.better", {}, betterText(glossary[key])),
          h(
            "td.meaning",
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

/** A table inside a box that scrolls sideways on a narrow screen (the page itself never does). */
export function scrolling(...table) {
  return h("div.table-scroll", {}, h(...table));
}

export const betterText = (entry) =>
  entry?.better === "higher" ? "↑ higher" : entry?.better === "lower" ? "↓ lower" : "–";

/** A link that downloads `url` with the API key (a plain link cannot send it). */
export function downloadLink(url, filename, text, attributes = {}) {
  return h(
    "a",
    {
      href: url,
      ...attributes,
      onclick: async (event) => {
        event.preventDefault();
        const link = h("a", { href: await api.blobUrl(url), download: filename });
        document.body.append(link);
        link.click();
        link.remove();
      },
    },
    text,
  );
}

/** Links that download every artifact and all of them as one zip (fetched with the API key). */
export function downloads(job) {
  const zip = `/jobs/${encodeURIComponent(job.id)}/bundle.zip`;
  return h(
    "ul.downloads",
    {},
    h("li", {}, downloadLink(zip, `${job.id}.zip`, "download all (zip)", { id: "bundle" })),
    Object.entries(job.artifacts).map(([name, url]) =>
      h("li", {}, downloadLink(url, `${job.id}-${name}`, name)),
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

/** The colour bar of a heat map (summary.json's heatmap_colours: the colours from low to high
 * and the values they stand for). */
export function colourBar(key, caption) {
  const bar = h("div.colour-bar", {
    role: "img",
    "aria-label": `${caption}: ${key.colormap}, ${formatNumber(key.low)} to ${formatNumber(key.high)}`,
  });
  bar.style.background = `linear-gradient(to right, ${key.colors.join(", ")})`;
  bar.dataset.colormap = key.colormap;
  const ticks = key.signed
    ? [formatNumber(key.low), "0", formatNumber(key.high)]
    : [formatNumber(key.low), formatNumber(key.high)];
  const clipped =
    key.clip_percentile < 100
      ? ` (clipped at the ${key.clip_percentile}th percentile of |value|)`
      : "";
  return h(
    "figure.colour-key",
    {},
    bar,
    h(
      "div.ticks",
      {},
      ticks.map((t) => h("span", {}, t)),
    ),
    h(
      "figcaption",
      {},
      `${caption}: ${key.signed ? "blue against the class, red for it" : "dark low, bright high"}${clipped}`,
    ),
  );
}
