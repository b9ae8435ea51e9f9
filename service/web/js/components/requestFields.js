// The fields every explain request shares, for the explain form and the compare form: input,
// model, target (with type-ahead over the model's labels), quality metrics, seed and resize; and
// the routing of an API refusal to the field it names.

import { api } from "../api.js";
import { h, fill } from "./dom.js";
import { inputPicker } from "./inputPicker.js";

export const INPUT_CODES = [
  "invalid_image",
  "invalid_input",
  "unknown_sample",
  "wrong_input_kind",
  "payload_too_large",
  "invalid_series",
  "series_too_large",
  "invalid_truth",
  "unsupported_media_type",
];
const FIELD_OF_CODE = {
  invalid_target: "target",
  invalid_metric: "metrics",
  unknown_model: "model",
};

const errorLine = (id) => h("p.field-error", { id, role: "alert" });

/** Returns { element, model(), onModelChange(fn), body(extra), file(), showError(error), clear() }. */
export function requestFields(catalogue) {
  const picker = inputPicker(catalogue.samples);
  const errors = {
    model: errorLine("model-error"),
    target: errorLine("target-error"),
    metrics: errorLine("metrics-error"),
    form: errorLine("form-error"),
  };

  const modelSelect = h(
    "select",
    { id: "model", "aria-describedby": "model-help model-error" },
    catalogue.models.map((m) => h("option", { value: m.name }, `${m.name} (${m.input_kind})`)),
  );
  const modelHelp = h("p.help", { id: "model-help" });
  const labels = h("datalist", { id: "target-labels" });
  const target = h("input", {
    id: "target",
    type: "text",
    list: "target-labels",
    placeholder: "predicted class",
    autocomplete: "off",
    "aria-describedby": "target-help target-error",
  });
  const metricBoxes = catalogue.qualityMetrics.map((metric) => {
    const id = `metric-${metric.name}`;
    const box = h("input", { id, type: "checkbox", value: metric.name });
    box.dataset.maskOnly = String(metric.mask_methods_only);
    return h(
      "div.check",
      {},
      box,
      h("label", { for: id }, metric.name),
      h("p.help", {}, metric.summary),
    );
  });
  const metricsSet = h(
    "fieldset.metrics",
    {},
    h("legend", {}, "Quality metrics"),
    metricBoxes,
    errors.metrics,
  );
  const seed = h("input", {
    id: "seed",
    type: "number",
    min: 0,
    max: 2147483647,
    step: 1,
    value: 0,
  });
  const resize = h(
    "select",
    { id: "resize" },
    ["center_crop", "resize", "none"].map((v) => h("option", { value: v }, v)),
  );

  const resizeField = h(
    "div.field",
    {},
    h("label", { for: "resize" }, "Resize"),
    resize,
    h("p.help", {}, "How the image reaches the model's input size."),
  );
  const moreSummary = h("summary", {}, "Seed and resizing");
  const listeners = [];
  const current = () => catalogue.models.find((m) => m.name === modelSelect.value);
  async function modelChanged() {
    const model = current();
    modelHelp.textContent = model.description;
    picker.setKind(model.input_kind);
    metricsSet.hidden = model.input_kind !== "image";
    resizeField.hidden = model.input_kind !== "image"; // a series is never resized
    moreSummary.textContent = resizeField.hidden ? "Seed" : "Seed and resizing";
    fill(labels);
    api.labels(model.name).then(
      (names) =>
        fill(
          labels,
          names.map((n) => h("option", { value: n })),
        ),
      () => {},
    );
    for (const listener of listeners) listener(model);
  }
  modelSelect.addEventListener("change", modelChanged);

  const element = h(
    "div.request-fields",
    {},
    picker.element,
    h("div.field", {}, h("label", { for: "model" }, "Model"), modelSelect, modelHelp, errors.model),
    h(
      "div.field",
      {},
      h("label", { for: "target" }, "Target class"),
      target,
      labels,
      h(
        "p.help",
        { id: "target-help" },
        "Empty: the predicted class. Type to search the model's labels, or give a class index.",
      ),
      errors.target,
    ),
  );
  const more = h(
    "details.more",
    {},
    moreSummary,
    h("div.field", {}, h("label", { for: "seed" }, "Seed"), seed),
    resizeField,
  );
  queueMicrotask(modelChanged);

  return {
    element,
    metricsElement: metricsSet,
    moreElement: more,
    formError: errors.form,
    model: current,
    onModelChange: (fn) => listeners.push(fn),
    /** Enable the metrics that apply: those that read a per-iteration history only where the
     * method records one (GET /methods' has_history). */
    setHasHistory(hasHistory) {
      for (const box of metricsSet.querySelectorAll("input")) {
        box.disabled = box.dataset.maskOnly === "true" && !hasHistory;
        if (box.disabled) box.checked = false;
      }
    },
    /** The request body (without method and options) and the file to upload, if any. */
    body() {
      const choice = picker.read();
      const text = target.value.trim();
      const body = {
        model: modelSelect.value,
        target: text === "" ? null : /^\d+$/.test(text) ? Number(text) : text,
        metrics: [...metricsSet.querySelectorAll("input:checked:not(:disabled)")].map(
          (b) => b.value,
        ),
        seed: Number(seed.value || 0),
        resize: resize.value,
      };
      if (metricsSet.hidden) body.metrics = [];
      if (resizeField.hidden) delete body.resize;
      if (choice.sample) body.sample = choice.sample;
      return { body, file: choice.file || null, field: choice.field };
    },
    /** Fill the fields from an earlier job (GET /jobs/{id}); then `onModelChange` listeners
     * run. An uploaded file cannot be re-read: the input field says which file to choose. */
    async prefill(job) {
      if (catalogue.models.some((m) => m.name === job.model)) modelSelect.value = job.model;
      await modelChanged();
      target.value = job.target ?? "";
      seed.value = job.seed ?? 0;
      if (job.input_name && !picker.chooseSample(job.input_name)) {
        picker.showError(
          `Choose the file ${job.input_name} again: an upload is not kept for the form.`,
        );
      } else if (!job.input_name) {
        picker.showError("The job's input was sent inside JSON: choose an input.");
      }
    },
    clear() {
      picker.clearError();
      for (const line of Object.values(errors)) line.textContent = "";
    },
    /** Put an API refusal next to the field it names; `showOption(path, message)` places
     * option errors. Returns nothing; the message always lands somewhere visible. */
    showError(error, showOption = () => false) {
      if (INPUT_CODES.includes(error.code)) return picker.showError(error.message);
      if (FIELD_OF_CODE[error.code]) {
        errors[FIELD_OF_CODE[error.code]].textContent = error.message;
        return;
      }
      let placed = false;
      for (const detail of error.details || []) {
        const loc = (detail.loc || []).slice(1); // [method, field, ...]
        if (loc[0] === "options" && loc.length > 1)
          placed = showOption(loc.slice(1), detail.msg) || placed;
        else if (errors[loc[0]]) {
          errors[loc[0]].textContent = detail.msg;
          placed = true;
        }
      }
      if (!placed) errors.form.textContent = error.message;
    },
  };
}
