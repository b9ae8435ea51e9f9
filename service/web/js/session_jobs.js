// The jobs of this browser session (sessionStorage), newest first.

const STORAGE = "explainer.jobs";
const LIMIT = 200;

export const history = {
  list() {
    try {
      return JSON.parse(sessionStorage.getItem(STORAGE) || "[]");
    } catch {
      return [];
    }
  },
  /** Remember a job: { id, method, model, input, group? } (group: a compare run). */
  add(entry) {
    const entries = [
      { ...entry, created: Date.now() },
      ...this.list().filter((e) => e.id !== entry.id),
    ];
    sessionStorage.setItem(STORAGE, JSON.stringify(entries.slice(0, LIMIT)));
  },
};

/** How a request's input reads in a list: the sample's name or the file's. */
export const inputName = (body, file) => (file ? file.name : body.sample || "input");
