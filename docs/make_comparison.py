"""Draw ShearletX vs WaveletX vs PixelMask on one photograph: docs/mask_comparison.png.

    python docs/make_comparison.py [--sample chelsea] [--size 256] [--iterations 300]

Default settings of each method (the ShearletX paper's, ShearletX with its published coefficient
clamp), EfficientNet-Lite0, the photograph stretched to size² as the paper does (no crop),
explained class = the predicted one. Under each panel: the retained probability, the mask's mean
and the Hallucination score (the paper's line: 0.2).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

from engine import explain
from engine.data import load_image
from engine.models import load_model
from engine.render import image_from_tensor
from engine.runtime import keep_freed_memory

METHODS = ("shearletx", "waveletx", "pixelmask")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", default="chelsea")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--out", default=str(Path(__file__).with_name("mask_comparison.png")))
    args = parser.parse_args()
    keep_freed_memory()

    model = load_model("efficientnet_lite0")
    image, _ = load_image(args.sample, (args.size, args.size), "resize")
    panels = [("photograph", image_from_tensor(image.numpy()), "")]
    for method in METHODS:
        result = explain(model, image, method, {"iterations": args.iterations},
                         metrics=["hallucination"])  # fmt: skip
        scores = result.scores[0]
        caption = (
            f"retained p {scores['retained_probability']:.2f}, mask mean {scores['mask_mean']:.3f}"
            f"\nhallucination {scores['hallucination']:.3f}"
        )
        picture = image_from_tensor(result.outputs.explanation[0].numpy())
        panels.append((method, picture, caption))
        print(f"{method}: {caption}".replace("\n", ", "), flush=True)
    label = result.predictions[0].label
    size, margin, text = args.size, 8, 34
    canvas = Image.new(
        "RGB", (len(panels) * (size + margin) + margin, size + 2 * text + 14), "white"
    )
    draw = ImageDraw.Draw(canvas)
    for i, (title, picture, caption) in enumerate(panels):
        left = margin + i * (size + margin)
        canvas.paste(picture, (left, text))
        draw.text((left, 8), title if i else f"{title} ({label})", fill="black")
        draw.text((left, text + size + 8), caption, fill="black")
    canvas.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
