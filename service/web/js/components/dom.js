// A tiny element builder, so views read as the markup they make.

/** h("div.card", {id: "x", onclick: f}, child, ...): an element with classes, attributes,
 * properties (on* handlers, value, checked, ...) and children (strings, nodes, arrays, null). */
export function h(tag, attributes = {}, ...children) {
  const [name, ...classes] = tag.split(".");
  const element = document.createElement(name);
  if (classes.length) element.className = classes.join(" ");
  for (const [key, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else if (key in element && !["list", "form", "for", "role"].includes(key)) element[key] = value;
    else element.setAttribute(key, value === true ? "" : value);
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
}

/** Replace an element's children. */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** A number for people: 4 significant digits, no trailing noise. */
export function formatNumber(value) {
  if (value === null) return "undefined"; // a score with no value for this input (JSON null)
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return String(value);
  return Number(value.toPrecision(4)).toString();
}

/** A snake_case name that may break after its underscores on a narrow screen (<wbr>). */
export const breakable = (name) =>
  String(name)
    .split("_")
    .flatMap((part, i) => (i ? ["_", document.createElement("wbr"), part] : [part]));

let counter = 0;
/** A unique element id with a readable prefix. */
export const uid = (prefix) => `${prefix}-${++counter}`;
