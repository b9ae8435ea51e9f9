// Explain: choose an input, a model, a method and its options, then submit; the job page
// follows the job.

import { api, ApiError } from "../api.js";
import { h, fill } from "../components/dom.js";
import { optionsForm } from "../components/optionsForm.js";
import { requestFields } from "../components/requestFields.js";
import { history, inputName } from "../session_jobs.js";

const FAMILY_NAMES = {
  gradient: "Gradients",
  cam: "Class activation maps",
  mask: "Mask optimisation",
  pattern: "Patterns",
  addon: "Add-ons",
};

/** <select> of methods grouped by family, limited to those that apply to `model`. */
export function methodOptions(methods, model) {
  const applicable = methods.filter((m) => model.methods.includes(m.name));
  const families = [...new Set(applicable.map((m) => m.family))];
  return families.map((family) =>
    h(
      "optgroup",
      { label: FAMILY_NAMES[family] || family },
      applicable
        .filter((m) => m.family === family)
        .map((m) => h("option", { value: m.name }, m.name)),
    ),
  );
}

/** The explain form; with `againId`, filled from that job ("run again"). */
export function explainView(container, catalogue, navigate, againId = null) {
  const fields = requestFields(catalogue);
  const methodSelect = h("select", { id: "method", "aria-describedby": "method-help" });
  const methodHelp = h("p.help", { id: "method-help" });
  const optionsHolder = h("div");
  const submit = h("button.primary", { type: "submit" }, "Explain");
  let form = null;

  function methodChanged() {
    const method = catalogue.methods.find((m) => m.name === methodSelect.value);
    if (!method) return;
    fill(methodHelp, method.summary, " ", h("cite", {}, method.citation));
    form = optionsForm(method.options_schema, { methods: catalogue.methods });
    fill(
      optionsHolder,
      h("fieldset.method-options", {}, h("legend", {}, `Options of ${method.name}`), form.element),
    );
    fields.setHasHistory(method.has_history);
  }
  fields.onModelChange((model) => {
    const previous = methodSelect.value;
    fill(methodSelect, methodOptions(catalogue.methods, model));
    if ([...methodSelect.options].some((o) => o.value === previous)) methodSelect.value = previous;
    methodChanged();
  });
  methodSelect.addEventListener("change", methodChanged);

  const page = h(
    "form.explain",
    { novalidate: true, "aria-label": "Explain an input" },
    h("h1", {}, "Explain a prediction"),
    fields.element,
    h("div.field", {}, h("label", { for: "method" }, "Method"), methodSelect, methodHelp),
    optionsHolder,
    fields.metricsElement,
    fields.moreElement,
    fields.formError,
    h("div.actions", {}, submit),
  );

  page.addEventListener("submit", async (event) => {
    event.preventDefault();
    fields.clear();
    form.clearErrors();
    const { options, valid } = form.read();
    if (!valid) return;
    const { body, file, field } = fields.body();
    submit.disabled = true;
    try {
      const created = await api.submit(
        { ...body, method: methodSelect.value, options },
        file,
        field,
      );
      history.add({
        id: created.id,
        method: methodSelect.value,
        model: body.model,
        input: inputName(body, file),
      });
      navigate(`#/jobs/${created.id}`);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      fields.showError(error, (path, message) => form.showError(path, message));
    } finally {
      submit.disabled = false;
    }
  });
  fill(container, page);
  if (againId) {
    api.job(againId).then(
      async (job) => {
        await fields.prefill(job);
        if ([...methodSelect.options].some((o) => o.value === job.method)) {
          methodSelect.value = job.method;
          methodChanged();
          form.set(job.options);
        }
        page.dataset.again = job.id;
      },
      (error) => {
        fields.formError.textContent = `Job ${againId} cannot be read: ${error.message}`;
      },
    );
  }
}
