// Compare: several methods (or one mask method with several inits) on the same input, run as
// separate jobs and shown side by side with a row of their scores. The grid lives at
// #/compare/<id>,<id>,… so it can be reopened.

import { api, ApiError } from "../api.js";
import { h, fill, formatNumber, breakable } from "../components/dom.js";
import {
  betterText,
  overlayFigure,
  artifactFigure,
  predictionText,
  statusLine,
  watchJob,
} from "../components/jobParts.js";
import { checkValue } from "../components/optionsForm.js";
import { requestFields } from "../components/requestFields.js";
import { history, inputName } from "../session_jobs.js";

const MAX_JOBS = 12;

export function compareFormView(container, catalogue, navigate) {
  const fields = requestFields(catalogue);
  const methodsBox = h(
    "fieldset.methods",
    { "aria-describedby": "methods-error" },
    h("legend", {}, "Methods"),
  );
  const methodsError = h("p.field-error", { id: "methods-error", role: "alert" });
  // The mask methods' shared options (init, iterations), from the first method that has an init.
  const maskSchema = catalogue.methods.find((m) => m.options_schema.properties.init)
    ?.options_schema.properties;
  const inits = h(
    "fieldset.inits",
    { hidden: true },
    h("legend", {}, "Mask inits (one job per init)"),
    (maskSchema?.init.enum || []).map((init) => {
      const id = `init-${init}`;
      return h(
        "div.check",
        {},
        h("input", {
          id,
          type: "checkbox",
          value: init,
          checked: init === maskSchema.init.default,
        }),
        h("label", { for: id }, init),
      );
    }),
  );
  const iterations = h("input", {
    id: "mask-iterations",
    type: "number",
    min: 0,
    max: maskSchema?.iterations.maximum,
    step: 1,
    placeholder: `default: ${maskSchema?.iterations.default}`,
    "aria-describedby": "mask-iterations-error",
  });
  const iterationsError = h("p.field-error", { id: "mask-iterations-error", role: "alert" });
  const maskFields = h(
    "div.mask-fields",
    { hidden: true },
    inits,
    h(
      "div.field",
      {},
      h("label", { for: "mask-iterations" }, "Iterations of mask methods"),
      iterations,
      iterationsError,
    ),
  );

  const checkedMethods = () =>
    [...methodsBox.querySelectorAll("input:checked")].map((b) => b.value);
  const described = (name) => catalogue.methods.find((m) => m.name === name);
  /** A method that starts from an init and runs iterations (the mask methods). */
  const hasInit = (name) => Boolean(described(name)?.options_schema.properties.init);
  const syncMask = () => {
    const anyMask = checkedMethods().some(hasInit);
    maskFields.hidden = !anyMask;
    inits.hidden = !anyMask;
    fields.setHasHistory(checkedMethods().some((name) => described(name)?.has_history));
  };
  fields.onModelChange((model) => {
    const applicable = catalogue.methods.filter((m) => model.methods.includes(m.name));
    fill(
      methodsBox,
      h("legend", {}, "Methods"),
      applicable.map((m) => {
        const id = `compare-${m.name}`;
        return h(
          "div.check",
          {},
          h("input", { id, type: "checkbox", value: m.name, onchange: syncMask }),
          h("label", { for: id }, m.name),
          h("span.muted", {}, ` ${m.family}`),
        );
      }),
    );
    syncMask();
  });

  const submit = h("button.primary", { type: "submit" }, "Compare");
  const page = h(
    "form.compare",
    { novalidate: true, "aria-label": "Compare methods" },
    h("h1", {}, "Compare explanations"),
    fields.element,
    methodsBox,
    methodsError,
    maskFields,
    fields.metricsElement,
    fields.moreElement,
    fields.formError,
    h("div.actions", {}, submit),
  );

  /** Every job to run: [method, options] pairs, mask methods at `count` iterations (null: their
   * default); a mask method runs once per chosen init it knows (once with its default init when
   * it knows none of them). */
  function variants(count) {
    const chosenInits = [...inits.querySelectorAll("input:checked")].map((b) => b.value);
    return checkedMethods().flatMap((method) => {
      if (!hasInit(method)) return [[method, {}]];
      const base = count === null ? {} : { iterations: count };
      const known = catalogue.methods.find((m) => m.name === method).options_schema.properties.init
        ?.enum;
      const initsOfMethod = chosenInits.filter((init) => known?.includes(init));
      if (!initsOfMethod.length) return [[method, base]];
      return initsOfMethod.map((init) => [method, { ...base, init }]);
    });
  }

  page.addEventListener("submit", async (event) => {
    event.preventDefault();
    fields.clear();
    methodsError.textContent = iterationsError.textContent = "";
    const count = iterations.value === "" ? null : Number(iterations.value);
    const problem = maskFields.hidden ? null : checkValue(maskSchema.iterations, count);
    if (problem) {
      iterationsError.textContent = problem;
      return;
    }
    const runs = variants(count);
    if (runs.length < 2 || runs.length > MAX_JOBS) {
      methodsError.textContent = `Choose between 2 and ${MAX_JOBS} methods or inits to compare (now ${runs.length}).`;
      return;
    }
    const { body, file, field } = fields.body();
    submit.disabled = true;
    const ids = [];
    try {
      for (const [method, options] of runs) {
        const created = await api.submit({ ...body, method, options }, file, field);
        history.add({ id: created.id, method, model: body.model, input: inputName(body, file) });
        ids.push(created.id);
      }
      navigate(`#/compare/${ids.join(",")}`);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      fields.showError(error);
      if (ids.length)
        fields.formError.textContent += ` (${ids.length} jobs were queued before this refusal: see History)`;
    } finally {
      submit.disabled = false;
    }
  });
  fill(container, page);
}

/** The best of a row's values by the score's direction ("higher"/"lower"); null without a
 * direction or with fewer than two values to compare. */
export function bestValue(values, better) {
  const numbers = values.filter((v) => v !== null && Number.isFinite(v));
  if (!better || numbers.length < 2) return null;
  return better === "higher" ? Math.max(...numbers) : Math.min(...numbers);
}

/** The grid of jobs `ids`, each followed live, with their scores in one table. */
export function compareGridView(container, catalogue, navigate, ids) {
  const jobs = new Map();
  const scoreTable = h("table.scores.compare-scores");
  const cells = ids.map((id) => {
    const status = statusLine();
    const title = h("h2", {}, h("a", { href: `#/jobs/${id}` }, id.slice(0, 8)));
    const body = h("div.cell-body");
    const cell = h("article.cell", { "aria-label": `Job ${id}` }, title, status.element, body);
    cell.dataset.job = id;
    return { id, cell, title, status, body };
  });
  fill(
    container,
    h(
      "section.compare-grid",
      {},
      h("h1", {}, "Comparison"),
      h(
        "div.grid",
        {},
        cells.map((c) => c.cell),
      ),
      scoreTable,
      h("p", {}, h("a", { href: "#/compare" }, "New comparison")),
    ),
  );

  const watchers = cells.map((c) =>
    watchJob(
      c.id,
      (job) => {
        jobs.set(c.id, job);
        const init = job.options.init ? ` · ${job.options.init}` : "";
        fill(c.title, h("a", { href: `#/jobs/${c.id}` }, `${job.method}${init}`));
        c.status.update(job);
        if (job.status === "succeeded" && !c.body.childElementCount) {
          fill(
            c.body,
            "series.png" in job.artifacts
              ? artifactFigure(job, "series.png", "Series")
              : overlayFigure(job),
            h("p.prediction", {}, predictionText(job.prediction)),
          );
        } else if (job.error) {
          fill(c.body, h("p.field-error", {}, job.error));
        }
        renderScores();
      },
      (error) => fill(c.body, h("p.field-error", {}, error.message)),
    ),
  );

  function renderScores() {
    const done = cells.map((c) => jobs.get(c.id));
    const keys = [...new Set(done.flatMap((job) => Object.keys(job?.scores || {})))];
    fill(
      scoreTable,
      h("caption", {}, "Scores"),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { scope: "col" }, "score"),
          done.map((job, i) =>
            h(
              "th",
              { scope: "col" },
              job
                ? `${job.method}${job.options.init ? ` · ${job.options.init}` : ""}`
                : cells[i].id.slice(0, 8),
            ),
          ),
          h("th", { scope: "col" }, "better"),
        ),
      ),
      h(
        "tbody",
        {},
        keys.map((key) => {
          const values = done.map((job) =>
            job?.scores && typeof job.scores[key] === "number" ? job.scores[key] : null,
          );
          const best = bestValue(values, catalogue.scores[key]?.better);
          return h(
            "tr",
            {},
            h("th", { scope: "row", title: catalogue.scores[key]?.meaning || "" }, breakable(key)),
            done.map((job, i) => {
              const shown = job?.scores && key in job.scores ? formatNumber(job.scores[key]) : "";
              if (best === null || values[i] !== best) return h("td.num", {}, shown);
              return h("td.num.best", { title: "best of this row" }, shown); // ★ from the CSS
            }),
            h("td.better", {}, betterText(catalogue.scores[key])),
          );
        }),
      ),
    );
  }
  renderScores();
  return () => watchers.forEach((w) => w.stop());
}
