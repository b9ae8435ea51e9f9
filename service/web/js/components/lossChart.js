// A small SVG chart of a mask optimisation: the loss (and the retained probability on its own
// scale) per iteration, drawn while the job runs and replaced by the full history at the end.

const WIDTH = 320;
const HEIGHT = 120;
const PAD = 6;
const SVG = "http://www.w3.org/2000/svg";

const svg = (tag, attributes = {}) => {
  const element = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attributes)) element.setAttribute(k, v);
  return element;
};

export function lossChart() {
  const series = { loss: [], retained_probability: [] };
  const element = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    role: "img",
    class: "chart",
    "aria-label": "Loss per iteration",
  });
  const lines = {
    loss: svg("polyline", { class: "line-loss", fill: "none" }),
    retained_probability: svg("polyline", { class: "line-retained", fill: "none" }),
  };
  element.append(
    svg("rect", { x: 0, y: 0, width: WIDTH, height: HEIGHT, class: "chart-bg" }),
    lines.loss,
    lines.retained_probability,
  );
  const caption = document.createElement("p");
  caption.className = "legend";

  function draw() {
    const steps = series.loss.map(([step]) => step);
    const last = Math.max(1, ...steps);
    for (const [name, points] of Object.entries(series)) {
      const values = points.map(([, v]) => v);
      const low = Math.min(...values);
      const span = Math.max(...values) - low || 1;
      const x = (step) => (PAD + (step / last) * (WIDTH - 2 * PAD)).toFixed(1);
      const y = (v) => (HEIGHT - PAD - ((v - low) / span) * (HEIGHT - 2 * PAD)).toFixed(1);
      lines[name].setAttribute("points", points.map(([step, v]) => `${x(step)},${y(v)}`).join(" "));
    }
    element.dataset.points = String(series.loss.length);
    const latest = series.loss.at(-1);
    const retained = series.retained_probability.at(-1);
    caption.textContent = latest
      ? `— loss ${latest[1].toPrecision(4)} at step ${latest[0]}` +
        (retained ? ` · ┄ retained probability ${retained[1].toPrecision(3)}` : "") +
        " (each on its own scale)"
      : "";
  }

  return {
    element,
    caption,
    /** A progress report {step, total, loss, retained_probability} of the running job. */
    add(progress) {
      if (typeof progress.loss !== "number") return;
      if (series.loss.length && series.loss.at(-1)[0] >= progress.step) return;
      series.loss.push([progress.step, progress.loss]);
      if (typeof progress.retained_probability === "number") {
        series.retained_probability.push([progress.step, progress.retained_probability]);
      }
      draw();
    },
    /** The job's full history.json: {loss: [...], retained_probability: [...], ...}. */
    setHistory(history) {
      for (const name of Object.keys(series)) {
        series[name] = (history[name] || []).map((v, step) => [step, v]);
      }
      draw();
    },
    get points() {
      return series.loss.length;
    },
  };
}
