// The input of a job: a photograph (drag and drop, file picker, or a bundled sample from a
// gallery of thumbnails) or a time series (a .npy/.csv file, or a bundled series sample).

import { api } from "../api.js";
import { h, fill } from "./dom.js";

const ACCEPT = { image: "image/png,image/jpeg,image/webp", timeseries: ".npy,.csv" };
const DEFAULT_SAMPLE = { image: "chelsea", timeseries: "state:0" };

/** A bundled sample as a toggle button of a gallery: its thumbnail (photographs) and name. */
export function sampleButton(sample, onclick) {
  const button = h("button.sample", { type: "button", "aria-pressed": "false", onclick });
  button.dataset.sample = sample.name;
  if (sample.thumbnail) {
    const img = h("img", { alt: "", width: 80, height: 60 });
    api.blobUrl(sample.thumbnail).then(
      (url) => {
        img.src = url;
      },
      () => {},
    );
    button.append(img);
  }
  button.append(h("span", {}, sample.name));
  return button;
}

/** Returns { element, read(), setKind(kind), showError(message), clearError() }; read() gives
 * { sample } or { file, field } (the multipart field: "image" or "series"). */
/** Make `dropZone` open `fileInput` from the keyboard (Enter, Space) and take a dropped file:
 * `onFile(file)` gets the first one. */
export function dropFiles(dropZone, fileInput, onFile) {
  dropZone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      fileInput.click();
    }
  });
  dropZone.addEventListener("dragover", (event) => {
    event.preventDefault();
    dropZone.classList.add("over");
  });
  dropZone.addEventListener("dragleave", () => dropZone.classList.remove("over"));
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropZone.classList.remove("over");
    if (event.dataTransfer.files[0]) onFile(event.dataTransfer.files[0]);
  });
}

export function inputPicker(samples) {
  let kind = "image";
  let choice = { sample: DEFAULT_SAMPLE.image };
  const fileInput = h("input", { id: "input-file", type: "file", class: "visually-hidden" });
  const chosen = h("p.chosen", { id: "input-chosen", "aria-live": "polite" });
  const error = h("p.field-error", { id: "input-error", role: "alert" });
  const gallery = h("div.gallery", { role: "group", "aria-label": "Bundled samples" });
  const dropZone = h(
    "label.drop",
    { for: "input-file", tabIndex: 0 },
    h("strong", {}, "Drop a file here"),
    " or click to choose one",
    h("span.hint", {}),
  );

  const preview = h("img.preview", { alt: "", hidden: true });

  function pick(next) {
    choice = next;
    error.textContent = "";
    for (const button of gallery.querySelectorAll("button")) {
      button.setAttribute("aria-pressed", String(button.dataset.sample === next.sample));
    }
    if (next.file) {
      chosen.textContent = `File: ${next.file.name} (${Math.ceil(next.file.size / 1024)} KB)`;
      preview.hidden = kind !== "image";
      if (kind === "image") preview.src = URL.createObjectURL(next.file);
    } else {
      chosen.textContent = `Sample: ${next.sample}`;
      preview.hidden = true;
    }
  }

  fileInput.addEventListener("change", () => {
    if (fileInput.files.length)
      pick({ file: fileInput.files[0], field: kind === "image" ? "image" : "series" });
  });
  dropFiles(dropZone, fileInput, (file) =>
    pick({ file, field: kind === "image" ? "image" : "series" }),
  );

  function renderGallery() {
    fill(
      gallery,
      samples
        .filter((s) => s.kind === kind)
        .map((sample) => sampleButton(sample, () => pick({ sample: sample.name }))),
    );
  }

  function setKind(next) {
    if (next === kind && gallery.childElementCount) return;
    kind = next;
    fileInput.accept = ACCEPT[kind];
    fileInput.value = "";
    dropZone.querySelector(".hint").textContent =
      kind === "image" ? " (PNG, JPEG or WebP)" : " (.npy or .csv, time × features)";
    renderGallery();
    pick({ sample: DEFAULT_SAMPLE[kind] });
  }

  setKind("image");
  const element = h(
    "fieldset.input",
    { "aria-describedby": "input-error" },
    h("legend", {}, "Input"),
    dropZone,
    fileInput,
    preview,
    chosen,
    error,
    h("p.help", {}, "…or a bundled sample:"),
    gallery,
  );
  return {
    element,
    read: () => choice,
    setKind,
    /** Choose a bundled sample by name; false when there is none of that name and kind. */
    chooseSample(name) {
      if (!samples.some((s) => s.name === name && s.kind === kind)) return false;
      pick({ sample: name });
      return true;
    },
    showError: (message) => {
      error.textContent = message;
    },
    clearError: () => {
      error.textContent = "";
    },
  };
}
