// Every call to the API, in one place. The API key (if the server wants one) lives in
// sessionStorage only and goes with every request, artifact downloads included.

const KEY_STORAGE = "explainer.apiKey";

/** An API refusal: the API's own status, code, message and per-field details. */
export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || [];
  }
}

export const apiKey = {
  get: () => sessionStorage.getItem(KEY_STORAGE),
  set: (key) => sessionStorage.setItem(KEY_STORAGE, key),
  clear: () => sessionStorage.removeItem(KEY_STORAGE),
};

async function request(path, { method = "GET", body, json } = {}) {
  const headers = {};
  const key = apiKey.get();
  if (key) headers["X-API-Key"] = key;
  if (json !== undefined) {
    headers["content-type"] = "application/json";
    body = JSON.stringify(json);
  }
  const response = await fetch(path, { method, headers, body });
  if (!response.ok) {
    let error = { status: response.status, code: "http_error", message: response.statusText };
    try {
      error = (await response.json()).error || error;
    } catch {
      // not a JSON error body: keep the status line
    }
    throw new ApiError(response.status, error.code, error.message, error.details);
  }
  return response;
}

const getJson = async (path) => (await request(path)).json();
const cache = new Map(); // the catalogue does not change while the page is open

function cached(path) {
  if (!cache.has(path)) {
    cache.set(
      path,
      getJson(path).catch((error) => {
        cache.delete(path);
        throw error;
      }),
    );
  }
  return cache.get(path);
}

export const api = {
  health: () => getJson("/health"),
  methods: () => cached("/methods"),
  models: () => cached("/models"),
  qualityMetrics: () => cached("/quality-metrics"),
  scores: () => cached("/scores"),
  samples: () => cached("/samples"),
  labels: (model) => cached(`/models/${encodeURIComponent(model)}/labels`),

  /** POST /explain: JSON for a bundled sample, multipart with the file otherwise. */
  async submit(body, file = null, fileField = "image") {
    if (!file) return (await request("/explain", { method: "POST", json: body })).json();
    const form = new FormData();
    form.append(fileField, file, file.name);
    form.append("request", JSON.stringify(body));
    return (await request("/explain", { method: "POST", body: form })).json();
  },

  /** The newest jobs of this API key (GET /jobs). */
  jobs: (limit) => getJson(`/jobs?limit=${limit}`),

  /** GET /jobs/{id}, long-polling up to `wait` s for a state other than `since`. */
  job: (id, { wait = 0, since = null } = {}) => {
    const query = new URLSearchParams({ wait });
    if (since) query.set("since", since);
    return getJson(`/jobs/${encodeURIComponent(id)}?${query}`);
  },
  cancel: async (id) =>
    (await request(`/jobs/${encodeURIComponent(id)}`, { method: "DELETE" })).json(),

  /** POST /studies: JSON for bundled samples, multipart with the .zip of inputs otherwise. */
  async submitStudy(body, zip = null) {
    if (!zip) return (await request("/studies", { method: "POST", json: body })).json();
    const form = new FormData();
    form.append("inputs", zip, zip.name);
    form.append("request", JSON.stringify(body));
    return (await request("/studies", { method: "POST", body: form })).json();
  },
  /** The studies of this API key, newest first (GET /studies; without their summaries). */
  studies: () => getJson("/studies"),
  study: (id) => getJson(`/studies/${encodeURIComponent(id)}`),
  cancelStudy: async (id) =>
    (await request(`/studies/${encodeURIComponent(id)}`, { method: "DELETE" })).json(),

  /** An artifact or thumbnail as a blob URL (an <img> cannot send the API key itself). */
  async blobUrl(url) {
    return URL.createObjectURL(await (await request(url)).blob());
  },
  artifactJson: async (url) => (await request(url)).json(),
};

/** The state of a job as the long poll compares it: "status:step". */
export const jobState = (job) => `${job.status}:${job.progress ? job.progress.step : ""}`;
export const TERMINAL = ["succeeded", "failed", "cancelled"];
