// A small SVG chart of a mask optimisation: the loss (left axis) and the retained probability
// (right axis, its own scale) per iteration (bottom axis), drawn while the job runs and replaced
// by the full history at the end.

const WIDTH = 360;
const HEIGHT = 160;
const LEFT = 48;
const RIGHT = 44;
const TOP = 8;
const BOTTOM = 30;
const SVG = "http://www.w3.org/2000/svg";

const svg = (tag, attributes = {}, text = null) => {
  const element = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attributes)) element.setAttribute(k, v);
  if (text !== null) element.textContent = text;
  return element;
};

/** Three round tick values spanning [low, high]. */
function ticks(low, high) {
  if (low === high) return [low];
  return [low, (low + high) / 2, high];
}

const tickText = (v) =>
  Math.abs(v) >= 1000 || (v !== 0 && Math.abs(v) < 0.01)
    ? v.toExponential(1)
    : Number(v.toPrecision(3)).toString();

export function lossChart() {
  const series = { loss: [], retained_probability: [] };
  const element = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    role: "img",
    class: "chart",
    "aria-label": "Loss and retained probability per iteration",
  });
  const lines = {
    loss: svg("polyline", { class: "line-loss", fill: "none" }),
    retained_probability: svg("polyline", { class: "line-retained", fill: "none" }),
  };
  const axes = svg("g", { class: "axes" });
  element.append(
    svg("rect", {
      x: LEFT,
      y: TOP,
      width: WIDTH - LEFT - RIGHT,
      height: HEIGHT - TOP - BOTTOM,
      class: "chart-bg",
    }),
    axes,
    lines.loss,
    lines.retained_probability,
  );
  const caption = document.createElement("p");
  caption.className = "legend";

  const plotBottom = HEIGHT - BOTTOM;
  const plotRight = WIDTH - RIGHT;

  function draw() {
    const steps = series.loss.map(([step]) => step);
    const last = Math.max(1, ...steps);
    const x = (step) => LEFT + (step / last) * (plotRight - LEFT);
    axes.replaceChildren();
    // the iteration axis
    axes.append(
      svg("line", { x1: LEFT, y1: plotBottom, x2: plotRight, y2: plotBottom, class: "axis" }),
    );
    for (const step of [...new Set([0, Math.round(last / 2), last])]) {
      axes.append(
        svg("line", {
          x1: x(step),
          y1: plotBottom,
          x2: x(step),
          y2: plotBottom + 4,
          class: "axis",
        }),
        svg(
          "text",
          { x: x(step), y: plotBottom + 14, "text-anchor": "middle", class: "tick" },
          String(step),
        ),
      );
    }
    axes.append(
      svg(
        "text",
        { x: (LEFT + plotRight) / 2, y: HEIGHT - 2, "text-anchor": "middle", class: "axis-label" },
        "iteration",
      ),
    );
    for (const [name, points] of Object.entries(series)) {
      const values = points.map(([, v]) => v).filter((v) => typeof v === "number");
      if (!values.length) {
        lines[name].setAttribute("points", "");
        continue;
      }
      const low = Math.min(...values);
      const high = Math.max(...values);
      const span = high - low || 1;
      const y = (v) => plotBottom - ((v - low) / span) * (plotBottom - TOP);
      lines[name].setAttribute(
        "points",
        points
          .filter(([, v]) => typeof v === "number")
          .map(([step, v]) => `${x(step).toFixed(1)},${y(v).toFixed(1)}`)
          .join(" "),
      );
      const left = name === "loss";
      const edge = left ? LEFT : plotRight;
      axes.append(
        svg("line", {
          x1: edge,
          y1: TOP,
          x2: edge,
          y2: plotBottom,
          class: `axis axis-${left ? "loss" : "retained"}`,
        }),
      );
      for (const v of ticks(low, high)) {
        axes.append(
          svg("line", { x1: edge, y1: y(v), x2: edge + (left ? -4 : 4), y2: y(v), class: "axis" }),
          svg(
            "text",
            {
              x: edge + (left ? -6 : 6),
              y: y(v) + 3,
              "text-anchor": left ? "end" : "start",
              class: `tick tick-${left ? "loss" : "retained"}`,
            },
            tickText(v),
          ),
        );
      }
    }
    element.dataset.points = String(series.loss.length);
    const latest = series.loss.at(-1);
    const retained = series.retained_probability.at(-1);
    caption.textContent = latest
      ? `— loss (left axis) ${latest[1]?.toPrecision(4)} at iteration ${latest[0]}` +
        (retained && typeof retained[1] === "number"
          ? ` · ┄ retained probability p(x̃)/p(x) (right axis) ${retained[1].toPrecision(3)}`
          : "")
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
