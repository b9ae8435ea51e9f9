// A form generated from a method's options JSON schema (GET /methods): every option with its
// default, bounds, choices and description; nested objects (smoothing, base_options) as
// sub-forms. Values are checked against the schema with the API's own wording before submit.

import { h } from "./dom.js";

const PROMINENT = ["init", "iterations", "steps", "base"]; // shown first, highlighted
// The schema's list of the options that matter most (engine.method.BASIC_OPTIONS): the form
// shows those, the rest under "Advanced options".
const BASIC = "x-basic-options";

/** Resolve $ref and the nullable form anyOf [X, {type: null}] → [schema, nullable]. */
function resolve(schema, defs) {
  let nullable = false;
  if (schema.anyOf) {
    const options = schema.anyOf.filter((s) => s.type !== "null");
    nullable = options.length < schema.anyOf.length;
    schema = { ...options[0], ...omit(schema, ["anyOf"]) };
  }
  if (schema.$ref) schema = { ...defs[schema.$ref.split("/").pop()], ...omit(schema, ["$ref"]) };
  return [schema, nullable];
}

const omit = (object, keys) =>
  Object.fromEntries(Object.entries(object).filter(([k]) => !keys.includes(k)));

/** The schema's complaint about a value, worded as the API (pydantic) words it, or null. */
export function checkValue(schema, value) {
  if (value === null || value === undefined) return null;
  if (schema.type === "integer" || schema.type === "number") {
    if (typeof value !== "number" || Number.isNaN(value)) return "Input should be a valid number";
    if (schema.type === "integer" && !Number.isInteger(value)) {
      return "Input should be a valid integer";
    }
    if (schema.minimum !== undefined && value < schema.minimum) {
      return `Input should be greater than or equal to ${schema.minimum}`;
    }
    if (schema.maximum !== undefined && value > schema.maximum) {
      return `Input should be less than or equal to ${schema.maximum}`;
    }
    if (schema.exclusiveMinimum !== undefined && value <= schema.exclusiveMinimum) {
      return `Input should be greater than ${schema.exclusiveMinimum}`;
    }
    if (schema.exclusiveMaximum !== undefined && value >= schema.exclusiveMaximum) {
      return `Input should be less than ${schema.exclusiveMaximum}`;
    }
  }
  if (schema.type === "string" && schema.pattern && !new RegExp(schema.pattern).test(value)) {
    return `String should match pattern '${schema.pattern}'`;
  }
  return null;
}

function bounds(schema) {
  const low = schema.minimum ?? schema.exclusiveMinimum;
  const high = schema.maximum ?? schema.exclusiveMaximum;
  if (low === undefined && high === undefined) return "";
  const left = low === undefined ? "" : `${low} ${schema.minimum !== undefined ? "≤" : "<"} `;
  const right = high === undefined ? "" : ` ${schema.maximum !== undefined ? "≤" : "<"} ${high}`;
  return `${left}value${right}`;
}

/**
 * Build the form. `methods` (GET /methods) lets base_options follow the chosen base method.
 * Returns { element, read(), showError(path, message), clearErrors() }: read() gives
 * { options, valid } with only the values that differ from their defaults.
 */
export function optionsForm(schema, { methods = [], prefix = "opt" } = {}) {
  const fields = []; // { path, read(), write(value), errorElement, input }
  const all = objectFields(schema, schema.$defs || {}, [], fields);
  const basic = schema[BASIC];
  let advanced = null;
  let element;
  if (basic) {
    const names = Object.keys(schema.properties || {});
    const isBasic = (node) => basic.includes(node.dataset.option);
    const rest = all.filter((node) => !isBasic(node));
    advanced = h(
      "details.advanced",
      {},
      h("summary", {}, `Advanced options (${rest.length} of ${names.length})`),
      rest,
    );
    element = h("div.options", {}, all.filter(isBasic), rest.length ? advanced : null);
  } else {
    element = h("div.options", {}, all);
  }
  /** Open "Advanced options" when it holds `input`, so a message there is seen. */
  const reveal = (input) => {
    if (advanced && advanced.contains(input)) advanced.open = true;
  };

  function objectFields(objectSchema, defs, path, into) {
    const names = Object.keys(objectSchema.properties || {});
    const ordered = [
      ...names.filter((n) => PROMINENT.includes(n)),
      ...names.filter((n) => !PROMINENT.includes(n)),
    ];
    return ordered.map((name) => {
      const node = field(
        objectSchema.properties[name],
        defs,
        [...path, name],
        into,
        PROMINENT.includes(name) && path.length === 0,
      );
      node.dataset.option = name;
      return node;
    });
  }

  function field(raw, defs, path, into, prominent) {
    const [schema, nullable] = resolve(raw, defs);
    const id = `${prefix}-${path.join(".")}`;
    const label = raw.title || humanize(path.at(-1));
    const help = [schema.description, defaultText(raw.default), bounds(schema)]
      .filter(Boolean)
      .join(" · ");
    const helpId = `${id}-help`;
    const errorElement = h("p.field-error", { id: `${id}-error`, role: "alert" });

    if (schema.type === "object" && schema.properties)
      return subForm(schema, defs, path, into, nullable, raw, id, label, help);
    if (path.at(-1) === "base_options") return baseOptions(path, into, id, label, help);

    let input;
    let read;
    let write;
    if (schema.type === "boolean") {
      input = h("input", { id, type: "checkbox", checked: raw.default === true });
      read = () => input.checked;
      write = (value) => {
        input.checked = value === true;
      };
    } else if (schema.enum) {
      input = h(
        "select",
        { id },
        nullable ? h("option", { value: "" }, "(none)") : null,
        schema.enum.map((choice) =>
          h("option", { value: choice, selected: choice === raw.default }, choice),
        ),
      );
      read = () => (input.value === "" ? null : input.value);
      write = (value) => {
        input.value = value ?? "";
        input.dispatchEvent(new Event("change")); // base_options follows base
      };
    } else if (schema.type === "integer" || schema.type === "number") {
      input = h("input", {
        id,
        type: "number",
        inputMode: schema.type === "integer" ? "numeric" : "decimal",
        step: schema.type === "integer" ? "1" : "any",
        min: schema.minimum,
        max: schema.maximum,
        value: raw.default ?? "",
        placeholder: raw.default === null ? "default: none" : "",
      });
      read = () => (input.value.trim() === "" ? (nullable ? null : NaN) : Number(input.value));
      write = (value) => {
        input.value = value ?? "";
      };
    } else if (schema.type === "array") {
      input = h("input", { id, type: "text", placeholder: "comma-separated; empty: default" });
      // Numbers for arrays of numbers ([h, w] grids, class pairs); text otherwise.
      const itemSchemas = schema.prefixItems || (schema.items ? [schema.items] : []);
      const numeric =
        itemSchemas.length > 0 &&
        itemSchemas.every((item) => item.type === "integer" || item.type === "number");
      read = () => {
        const items = input.value
          .split(",")
          .map((s) => s.trim())
          .filter(Boolean);
        if (!items.length) return null;
        return numeric ? items.map(Number) : items;
      };
      write = (value) => {
        input.value = Array.isArray(value) ? value.join(", ") : "";
      };
    } else {
      input = h("input", {
        id,
        type: "text",
        value: raw.default ?? "",
        placeholder: raw.default === null ? "default: none" : "",
      });
      read = () => (input.value === "" && nullable ? null : input.value);
      write = (value) => {
        input.value = value ?? "";
      };
    }
    input.setAttribute("aria-describedby", `${helpId} ${id}-error`);
    input.name = path.join(".");
    const entry = { path, read, write, schema, default: raw.default, input, errorElement };
    into.push(entry);
    // On "input", not "change": a message that appears or goes on blur would move the form
    // under the pointer between mousedown and mouseup, and the click would be lost.
    input.addEventListener("input", () => {
      errorElement.textContent = checkValue(schema, read()) || "";
      input.setAttribute("aria-invalid", errorElement.textContent ? "true" : "false");
    });
    const labelElement = h("label", { for: id }, label);
    const check = schema.type === "boolean";
    return h(
      `div.field${prominent ? ".prominent" : ""}${check ? ".check" : ""}`,
      {},
      check ? [input, labelElement] : [labelElement, input],
      h("p.help", { id: helpId }, help),
      errorElement,
    );
  }

  function subForm(schema, defs, path, into, nullable, raw, id, label, help) {
    const inner = [];
    const body = h(
      "div.subform",
      {},
      objectFields(schema, { ...defs, ...(schema.$defs || {}) }, path, inner),
    );
    const toggle = nullable
      ? h("input", { id: `${id}-use`, type: "checkbox", checked: raw.default !== null })
      : null;
    const sync = () => {
      body.hidden = toggle ? !toggle.checked : false;
    };
    if (toggle) toggle.addEventListener("change", sync);
    sync();
    into.push({
      path,
      nested: true,
      read: () => (toggle && !toggle.checked ? null : collect(inner, path.length)),
      switchedOn: () => Boolean(toggle && toggle.checked), // sent even with every default
      fields: inner,
      isActive: () => !toggle || toggle.checked,
      setActive: (on) => {
        if (toggle) toggle.checked = on;
        sync();
      },
    });
    return h(
      "fieldset.nested",
      {},
      h("legend", {}, toggle ? [toggle, " ", h("label", { for: `${id}-use` }, label)] : label),
      h("p.help", {}, help),
      body,
    );
  }

  function baseOptions(path, into, id, label, help) {
    const holder = h("div.subform", { id });
    const inner = [];
    const render = (method) => {
      inner.length = 0;
      const spec = methods.find((m) => m.name === method);
      holder.replaceChildren(
        ...(spec
          ? objectFields(spec.options_schema, spec.options_schema.$defs || {}, path, inner)
          : []),
      );
    };
    into.push({
      path,
      nested: true,
      read: () => collect(inner, path.length),
      fields: inner,
      isActive: () => true,
      render,
    });
    return h("fieldset.nested", {}, h("legend", {}, label), h("p.help", {}, help), holder);
  }

  // base_options follows the base select.
  const base = fields.find((f) => f.path.join(".") === "base");
  const baseOptionsHolder = fields.find((f) => f.render);
  if (base && baseOptionsHolder) {
    baseOptionsHolder.render(base.read());
    base.input.addEventListener("change", () => baseOptionsHolder.render(base.read()));
  }

  function collect(list, depth) {
    const out = {};
    for (const f of list) {
      const value = f.read();
      const key = f.path[depth];
      if (f.nested) {
        if (value !== null && (Object.keys(value).length || f.switchedOn?.())) out[key] = value;
        continue;
      }
      if (!sameValue(value, f.default)) out[key] = value;
    }
    return out;
  }

  function* leaves(list) {
    for (const f of list) {
      if (f.nested) {
        if (f.isActive()) yield* leaves(f.fields);
      } else yield f;
    }
  }

  function find(list, path) {
    for (const f of leaves(list)) if (f.path.join(".") === path.join(".")) return f;
    return null;
  }

  return {
    element,
    read() {
      let valid = true;
      for (const f of leaves(fields)) {
        const message = checkValue(f.schema, f.read());
        f.errorElement.textContent = message || "";
        f.input.setAttribute("aria-invalid", message ? "true" : "false");
        if (message && valid) {
          reveal(f.input);
          f.input.focus();
        }
        valid = valid && !message;
      }
      return { options: collect(fields, 0), valid };
    },
    /** Show a message next to the option at `path` (e.g. ["smoothing", "samples"]); false when
     * no such field is on the form. */
    showError(path, message) {
      const f = find(fields, path);
      if (!f) return false;
      reveal(f.input);
      f.errorElement.textContent = message;
      f.input.setAttribute("aria-invalid", "true");
      return true;
    },
    /** Fill the form with a job's options (every option, defaults included). */
    set(values) {
      const apply = (list, depth, object) => {
        for (const f of list) {
          const key = f.path[depth];
          if (!object || !(key in object)) continue;
          const value = object[key];
          if (f.nested) {
            f.setActive?.(value !== null);
            if (value !== null) apply(f.fields, depth + 1, value);
          } else f.write(value);
        }
      };
      apply(fields, 0, values);
    },
    clearErrors() {
      for (const f of leaves(fields)) {
        f.errorElement.textContent = "";
        f.input.setAttribute("aria-invalid", "false");
      }
    },
  };
}

const humanize = (name) => name.charAt(0).toUpperCase() + name.slice(1).replaceAll("_", " ");

function defaultText(value) {
  if (value === undefined) return "";
  return `default: ${value === null ? "none" : JSON.stringify(value)}`;
}

function sameValue(a, b) {
  return JSON.stringify(a ?? null) === JSON.stringify(b ?? null);
}
