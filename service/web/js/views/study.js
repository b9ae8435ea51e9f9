// Study: one model, a set of inputs, several method variants and quality metrics, run by the
// workers as batches and summed up in a ranked table (mean with its 95 % confidence interval per
// variant and score), one figure per metric and one download (POST /studies). #/studies is the
// form and the caller's studies; #/studies/<id> follows one study and reopens it.

import { api, ApiError, TERMINAL } from "../api.js";
import { h, fill, formatNumber, breakable, uid } from "../components/dom.js";
import { dropFiles, sampleButton } from "../components/inputPicker.js";
import {
  artifactFigure,
  betterText,
  downloadLink,
  formatDuration,
  scrolling,
} from "../components/jobParts.js";
import { optionsForm } from "../components/optionsForm.js";
import { INPUT_CODES, requestFields } from "../components/requestFields.js";
import { methodOptions } from "./explain.js";

const MAX_VARIANTS = 12; // the API's limit
const FIRST_VARIANTS = ["saliency", "gradcam"]; // the form's two variants to begin with
const POLL_MS = 1000;
const DOWNLOADS = ["study.zip", "scores.csv", "table.md", "summary.json"];
const STUDY_INPUT_CODES = [...INPUT_CODES, "invalid_images"]; // and a zip that holds none

/** The study's inputs: several bundled samples picked from the gallery, or one .zip of images
 * (or series files). read() gives { samples: [names] }, { zip: File } or null (none chosen). */
function studyInputs(samples) {
  let kind = "image";
  let zip = null;
  const picked = new Set();
  const zipInput = h("input", {
    id: "study-zip",
    type: "file",
    accept: ".zip,application/zip",
    class: "visually-hidden",
  });
  const chosen = h("p.chosen", { id: "study-inputs-chosen", "aria-live": "polite" });
  const error = h("p.field-error", { id: "study-inputs-error", role: "alert" });
  const gallery = h("div.gallery", { role: "group", "aria-label": "Bundled samples" });
  const dropZone = h(
    "label.drop",
    { for: "study-zip", tabIndex: 0 },
    h("strong", {}, "Drop a .zip here"),
    " or click to choose one",
    h("span.hint", {}, " (images, or .npy/.csv series, one input per file)"),
  );

  function show() {
    error.textContent = "";
    for (const button of gallery.querySelectorAll("button.sample")) {
      button.setAttribute("aria-pressed", String(picked.has(button.dataset.sample)));
    }
    if (zip) chosen.textContent = `File: ${zip.name} (${Math.ceil(zip.size / 1024)} KB)`;
    else if (picked.size) chosen.textContent = `${picked.size} samples: ${[...picked].join(", ")}`;
    else chosen.textContent = "No input chosen yet.";
  }
  const useZip = (file) => {
    zip = file;
    picked.clear();
    show();
  };
  zipInput.addEventListener("change", () => zipInput.files.length && useZip(zipInput.files[0]));
  dropFiles(dropZone, zipInput, useZip);

  const ofKind = () => samples.filter((s) => s.kind === kind);
  const setPicked = (names) => {
    zip = null;
    zipInput.value = "";
    picked.clear();
    for (const name of names) picked.add(name);
    show();
  };
  const toggle = (name) =>
    setPicked(picked.has(name) ? [...picked].filter((n) => n !== name) : [...picked, name]);
  const all = h("button", { type: "button", id: "study-all" }, "All samples");
  const none = h("button", { type: "button", id: "study-none" }, "None");
  all.addEventListener("click", () => setPicked(ofKind().map((s) => s.name)));
  none.addEventListener("click", () => setPicked([]));

  function setKind(next) {
    if (next === kind && gallery.childElementCount) return;
    kind = next;
    fill(
      gallery,
      ofKind().map((sample) => sampleButton(sample, () => toggle(sample.name))),
    );
    setPicked(ofKind().slice(0, 2).map((s) => s.name));
  }
  setKind("image");

  return {
    element: h(
      "fieldset.input.study-inputs",
      { "aria-describedby": "study-inputs-error" },
      h("legend", {}, "Inputs"),
      h("p.help", {}, "Bundled samples (press each one to add or remove it):"),
      gallery,
      h("div.gallery-actions", {}, all, none),
      h("p.help", {}, "…or your own inputs as one .zip:"),
      dropZone,
      zipInput,
      chosen,
      error,
    ),
    setKind,
    read: () => (zip ? { zip } : picked.size ? { samples: [...picked] } : null),
    showError: (message) => {
      error.textContent = message;
    },
  };
}

/** One variant of the study: a method of the model, its options (the explain form's options
 * form, folded) and an editable label. */
function variantEditor(catalogue, onChange, onRemove) {
  const id = uid("variant");
  const labelInput = h("input.variant-label", {
    id: `${id}-label`,
    type: "text",
    autocomplete: "off",
    "aria-describedby": `${id}-label-help ${id}-label-error`,
  });
  const labelError = h("p.field-error", { id: `${id}-label-error`, role: "alert" });
  const methodSelect = h("select.variant-method", {
    id: `${id}-method`,
    "aria-describedby": `${id}-help`,
  });
  const methodHelp = h("p.help", { id: `${id}-help` });
  const optionsBox = h("details.variant-options");
  const remove = h("button.remove", { type: "button" }, "Remove");
  const legend = h("legend");
  let form = null;
  const method = () => catalogue.methods.find((m) => m.name === methodSelect.value);

  function methodChanged() {
    const spec = method();
    if (!spec) return;
    fill(methodHelp, spec.summary, " ", h("cite", {}, spec.citation));
    labelInput.placeholder = spec.name;
    form = optionsForm(spec.options_schema, { methods: catalogue.methods, prefix: `${id}-opt` });
    fill(optionsBox, h("summary", {}, `Options of ${spec.name}`), form.element);
    onChange();
  }
  methodSelect.addEventListener("change", methodChanged);

  const editor = {
    element: h(
      "fieldset.variant",
      {},
      legend,
      h("div.field", {}, h("label", { for: `${id}-method` }, "Method"), methodSelect, methodHelp),
      optionsBox,
      h(
        "div.field",
        {},
        h("label", { for: `${id}-label` }, "Label"),
        labelInput,
        h(
          "p.help",
          { id: `${id}-label-help` },
          "Its name in the table and files. Empty: the method's name with the options you " +
            "changed, as method[key=value,…].",
        ),
        labelError,
      ),
      remove,
    ),
    method,
    setNumber(n, removable) {
      legend.textContent = `Variant ${n}`;
      remove.setAttribute("aria-label", `Remove variant ${n}`);
      remove.hidden = !removable;
    },
    /** Offer the methods of `model`, keeping the chosen one (or `preferred`) where it applies. */
    setModel(model, preferred = null) {
      const previous = methodSelect.value || preferred;
      fill(methodSelect, methodOptions(catalogue.methods, model));
      if ([...methodSelect.options].some((o) => o.value === previous)) {
        methodSelect.value = previous;
      }
      methodChanged();
    },
    /** { method, options, label? } (no label: the server's default), or null when an option
     * is out of its bounds (shown). */
    read() {
      const wasOpen = optionsBox.open;
      optionsBox.open = true; // read() focuses the first bad option: it must be visible
      const { options, valid } = form.read();
      if (!valid) return null;
      optionsBox.open = wasOpen;
      const label = labelInput.value.trim();
      return { method: methodSelect.value, options, ...(label ? { label } : {}) };
    },
    /** A refusal of this variant's options (path under "options") or of the variant itself. */
    showError(path, message) {
      if (path.length && form.showError(path, message)) {
        optionsBox.open = true;
        return;
      }
      labelError.textContent = message;
    },
    clearErrors() {
      labelError.textContent = "";
      form?.clearErrors();
    },
  };
  remove.addEventListener("click", () => onRemove(editor));
  return editor;
}

/** The study form (#/studies) and, under it, the caller's studies (GET /studies). */
export function studyFormView(container, catalogue, navigate) {
  const fields = requestFields(catalogue);
  const inputs = studyInputs(catalogue.samples);
  // The request fields' single-input picker gives way to the study's several inputs.
  fields.element.querySelector("fieldset.input").replaceWith(inputs.element);
  fields.moreElement.querySelector("#resize option[value=none]").remove(); // a study resizes
  const variantsBox = h("div.variant-list");
  const variantsError = h("p.field-error", { id: "variants-error", role: "alert" });
  const add = h("button", { type: "button", id: "add-variant" }, "Add a variant");
  const metricsNote = h("p.help", { id: "metrics-note" });
  const editors = [];

  function renumber() {
    editors.forEach((e, i) => e.setNumber(i + 1, editors.length > 1));
    add.disabled = editors.length >= MAX_VARIANTS;
    const withHistory = editors.every((e) => e.method()?.has_history); // GET /methods
    fields.setHasHistory(withHistory);
    metricsNote.textContent = withHistory
      ? "Every variant keeps an optimisation history: every metric applies."
      : "Metrics that need an optimisation history (mask methods) apply only when every " +
        "variant has one.";
  }
  function addVariant(preferred = null) {
    const editor = variantEditor(catalogue, renumber, (gone) => {
      editors.splice(editors.indexOf(gone), 1);
      gone.element.remove();
      renumber();
    });
    editors.push(editor);
    variantsBox.append(editor.element);
    editor.setModel(fields.model(), preferred);
    renumber();
  }
  add.addEventListener("click", () => addVariant());
  fields.onModelChange((model) => {
    inputs.setKind(model.input_kind);
    if (!editors.length) FIRST_VARIANTS.forEach((name) => addVariant(name));
    else editors.forEach((e) => e.setModel(model));
  });

  const submit = h("button.primary", { type: "submit" }, "Run the study");
  const studies = h("section.study-list", { "aria-busy": "true" }, h("p.muted", {}, "Loading…"));
  const page = h(
    "form.study",
    { novalidate: true, "aria-label": "Study" },
    h("h1", {}, "Study: compare methods over many inputs"),
    fields.element,
    h(
      "fieldset.variants",
      { "aria-describedby": "variants-error" },
      h("legend", {}, "Variants (a method with its options)"),
      variantsBox,
      add,
      variantsError,
    ),
    fields.metricsElement,
    metricsNote,
    fields.moreElement,
    fields.formError,
    h("div.actions", {}, submit),
  );

  /** Put an API refusal where it belongs: the inputs, a variant (details' loc ["variants", i,
   * method, "options", ...]), the variants, or the request fields' own places. */
  function showError(error) {
    if (STUDY_INPUT_CODES.includes(error.code)) return inputs.showError(error.message);
    if (error.code === "duplicate_label") {
      variantsError.textContent = error.message;
      return;
    }
    let placed = false;
    for (const detail of error.details || []) {
      const loc = detail.loc || [];
      const at = loc.indexOf("variants");
      const editor = at >= 0 ? editors[loc[at + 1]] : null;
      if (editor) {
        const options = loc.indexOf("options", at); // [variants, i, method, options, ...]
        editor.showError(options >= 0 ? loc.slice(options + 1) : [], detail.msg);
        placed = true;
      } else if (at >= 0) {
        variantsError.textContent = detail.msg; // the list itself (e.g. too many)
        placed = true;
      } else if (loc.includes("inputs")) {
        inputs.showError(detail.msg);
        placed = true;
      }
    }
    if (!placed) fields.showError(error);
  }

  page.addEventListener("submit", async (event) => {
    event.preventDefault();
    fields.clear();
    inputs.showError("");
    variantsError.textContent = "";
    editors.forEach((e) => e.clearErrors());
    const choice = inputs.read();
    if (!choice) {
      inputs.showError("Choose at least one sample, or a .zip of inputs.");
      return;
    }
    const variants = [];
    for (const editor of editors) {
      const variant = editor.read();
      if (!variant) return;
      variants.push(variant);
    }
    const { body } = fields.body();
    const request = {
      model: body.model,
      variants,
      metrics: body.metrics,
      targets: body.target ?? "predicted",
      seed: body.seed,
    };
    if (body.resize) request.resize = body.resize;
    if (choice.samples) request.inputs = { samples: choice.samples };
    submit.disabled = true;
    try {
      const created = await api.submitStudy(request, choice.zip || null);
      navigate(`#/studies/${created.id}`);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      showError(error);
    } finally {
      submit.disabled = false;
    }
  });

  fill(container, page, studies);
  api.studies().then(
    (list) => {
      studies.removeAttribute("aria-busy");
      fill(
        studies,
        h("h2", {}, "Your studies"),
        list.length ? studyTable(list) : h("p.muted", {}, "None yet."),
      );
    },
    (error) => fill(studies, h("p.field-error", { role: "alert" }, error.message)),
  );
}

/** The caller's studies, newest first, each a link to its page. */
function studyTable(list) {
  const columns = ["study", "status", "variants", "inputs", "results", "model", "submitted"];
  return scrolling(
    "table.studies",
    {},
    h("caption", {}, "Newest first"),
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
      list.map((study) =>
        h(
          "tr",
          {},
          h("td", {}, h("a", { href: `#/studies/${study.id}` }, study.id.slice(0, 8))),
          h("td", {}, study.status),
          h("td", {}, study.variants.map((v) => v.label).join(", ")),
          h("td.num", {}, study.inputs.length),
          h("td.num", {}, `${study.progress.done} of ${study.progress.total}`),
          h("td", {}, study.model),
          h("td", {}, new Date(study.timings.created_at * 1000).toLocaleString()),
        ),
      ),
    ),
  );
}

/** Follow a study until it ends: onUpdate(study) on every answer, one request a second. */
function watchStudy(id, onUpdate, onError) {
  let stopped = false;
  let timer = null;
  async function poll(failures) {
    let study;
    try {
      study = await api.study(id);
    } catch (error) {
      if (stopped) return;
      onError(error);
      if (error instanceof ApiError && error.status < 500) return;
      timer = setTimeout(() => poll(failures + 1), Math.min(10000, 500 * 2 ** (failures + 1)));
      return;
    }
    if (stopped) return;
    onUpdate(study);
    if (!TERMINAL.includes(study.status)) timer = setTimeout(() => poll(0), POLL_MS);
  }
  poll(0);
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

/** "mean [low, high]", n and the undefined count of one variant × score of summarize(). */
function summaryCell(row, best) {
  if (!row || row.mean === null) {
    return h("td.num", {}, row ? `undefined (${row.undefined} of ${row.n + row.undefined})` : "");
  }
  const ci =
    row.ci_low === null ? null : `[${formatNumber(row.ci_low)}, ${formatNumber(row.ci_high)}]`;
  return h(
    `td.num${best ? ".best" : ""}`,
    best ? { title: "best of this column" } : {},
    h("span.mean", {}, formatNumber(row.mean)),
    h(
      "span.detail",
      {},
      ci ? h("span", { title: "95 % bootstrap confidence interval of the mean" }, `${ci} `) : null,
      `n = ${row.n}`,
      row.iqm === null ? null : ` · IQM ${formatNumber(row.iqm)}`,
      row.undefined ? ` · ${row.undefined} undefined` : null,
    ),
  );
}

/** The ranked table of a summary (engine.study.summarize): a row per variant, a column per
 * score with its better direction; the best variant of each column (rank 1) marked. */
export function rankedTable(summary, glossary, caption) {
  const rows = new Map(summary.rows.map((r) => [`${r.variant}\n${r.score}`, r]));
  const compared = summary.variants.length > 1;
  return scrolling(
    "table.scores.study-scores",
    { id: "study-table" },
    h("caption", {}, caption),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", { scope: "col" }, "variant"),
        summary.scores.map((key) =>
          h(
            "th",
            { scope: "col", title: glossary[key]?.meaning || "" },
            breakable(key),
            h("span.better", {}, ` ${betterText({ better: summary.better[key] })}`),
          ),
        ),
      ),
    ),
    h(
      "tbody",
      {},
      summary.variants.map((variant) => {
        const tr = h(
          "tr",
          {},
          h("th", { scope: "row" }, variant),
          summary.scores.map((key) => {
            const row = rows.get(`${variant}\n${key}`);
            return summaryCell(row, compared && row?.rank === 1);
          }),
        );
        tr.dataset.variant = variant;
        return tr;
      }),
    ),
  );
}

/** One study, reopenable at #/studies/<id>: progress with a partial table and a cancel button
 * while it runs; then the ranked table, the figures and the downloads. */
export function studyView(container, catalogue, navigate, id) {
  const heading = h("h1", {}, `Study ${id.slice(0, 8)}`);
  const meta = h("p.meta");
  const status = h("span.status", { role: "status", "aria-live": "polite" }, "loading");
  const bar = h("progress", { max: 1, "aria-label": "Progress" });
  const steps = h("span.steps", { id: "study-progress" });
  const eta = h("span.eta");
  const cancel = h("button", { type: "button", id: "cancel" }, "Cancel");
  const message = h("p.field-error", { role: "alert" });
  const problems = h("ul.study-errors");
  const table = h("div.study-table");
  const figures = h("div.figures.study-figures");
  const downloads = h("div.study-downloads");
  fill(
    container,
    h(
      "article.job.study-page",
      {},
      heading,
      meta,
      h("div.watch", {}, h("div.status-line", {}, status, steps, bar, eta), cancel),
      message,
      problems,
      table,
      figures,
      downloads,
      h("p", {}, h("a", { href: "#/studies" }, "New study")),
    ),
  );

  let shownSummary = null;
  let finished = false;
  function update(study) {
    const { done, total } = study.progress;
    heading.textContent = `Study of ${study.variants.length} variants on ${study.inputs.length} inputs`;
    fill(meta, `${study.model} · metrics: ${study.metrics.map(metricName).join(", ") || "none"}`);
    meta.append(` · study ${study.id}`);
    status.textContent = study.status;
    status.dataset.status = study.status;
    const ended = ["failed", "cancelled"].filter((state) => study.progress[state] > 0);
    steps.textContent = [
      `${done} of ${total} results`,
      ...ended.map((state) => `${study.progress[state]} ${state}`),
    ].join(", ");
    bar.max = Math.max(total, 1);
    if (done > 0 || TERMINAL.includes(study.status)) bar.value = done;
    else bar.removeAttribute("value"); // moves until the first result
    bar.hidden = TERMINAL.includes(study.status) && study.status !== "succeeded";
    eta.textContent = timeText(study);
    cancel.hidden = TERMINAL.includes(study.status);
    fill(
      problems,
      (study.errors || []).map((e) =>
        h("li.field-error", {}, `${e.variant} on ${e.inputs.join(", ")}: ${e.message}`),
      ),
    );
    const summary = JSON.stringify(study.summary);
    if (study.summary?.rows?.length && summary !== shownSummary) {
      shownSummary = summary;
      const caption = {
        succeeded: "Mean [95 % CI] and n per variant; ★ the best of each column",
        cancelled: `The ${done} of ${total} results before it was cancelled (mean [95 % CI], n)`,
        failed: `The ${done} of ${total} results it has (mean [95 % CI], n)`,
      }[study.status] || `So far: ${done} of ${total} results (mean [95 % CI], n)`;
      fill(table, rankedTable(study.summary, catalogue.scores, caption));
    }
    // The report (figures, downloads) of a finished study; a cancelled one has the rows so far.
    if (TERMINAL.includes(study.status) && Object.keys(study.artifacts).length && !finished) {
      finished = true;
      showResult(study);
    }
  }

  function showResult(study) {
    const names = Object.keys(study.artifacts);
    fill(
      figures,
      names
        .filter((name) => name.endsWith(".png"))
        .map((name) => artifactFigure(study, name, name.replace(/\.png$/, ""), "wide")),
    );
    const order = [...DOWNLOADS.filter((n) => names.includes(n)), ...names];
    fill(
      downloads,
      h("h2", {}, "Downloads"),
      h(
        "ul.downloads",
        {},
        [...new Set(order)].map((name) =>
          h(
            "li",
            {},
            downloadLink(study.artifacts[name], `${study.id}-${name}`, name, {
              "data-artifact": name,
            }),
          ),
        ),
      ),
    );
  }

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      update(await api.cancelStudy(id));
    } catch (error) {
      message.textContent = error.message;
    } finally {
      cancel.disabled = false;
    }
  });

  const watcher = watchStudy(
    id,
    (study) => {
      message.textContent = "";
      update(study);
    },
    (error) => {
      if (error instanceof ApiError && error.status < 500) {
        cancel.hidden = true; // no such study (or not the caller's)
        status.hidden = bar.hidden = true;
      }
      message.textContent =
        error instanceof ApiError ? error.message : `Connection lost (${error.message}); retrying…`;
    },
  );
  return () => watcher.stop();
}

const metricName = (metric) => (typeof metric === "string" ? metric : metric.name);

/** "about 20 s left (10 s so far)" while running: elapsed × remaining / done results. */
function timeText(study) {
  const { started_at: started, elapsed_s: elapsed } = study.timings || {};
  if (study.status === "queued") return "waiting for a worker";
  if (study.status !== "running") return elapsed ? `took ${formatDuration(elapsed)}` : "";
  if (!started) return "";
  const spent = Math.max(0, Date.now() / 1000 - started);
  const { done, total, failed = 0, cancelled = 0 } = study.progress;
  if (!done) return `${formatDuration(spent)} so far`;
  const left = total - done - failed - cancelled;
  return `about ${formatDuration((spent * left) / done)} left (${formatDuration(spent)} so far)`;
}
