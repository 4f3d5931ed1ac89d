"""The Python API in a few lines: run from the repository root, `python examples/python_api.py`.

Audits the answer "red" to "What color is the circle?" about a shipped example image with the
bundled reference model, prints each token's reliance and risk, and writes the overlay.
"""

from pathlib import Path

from PIL import Image

from mllm_audit import Auditor

HERE = Path(__file__).resolve().parent

auditor = Auditor.from_pretrained()  # the bundled reference model; or a local checkpoint directory
image = Image.open(HERE / "images" / "red-circle.png")
result = auditor.explain(image, prompt="What color is the circle?", answer="red", regions=16)
for token in result.tokens:
    print(f"{token.text!r}: visual reliance {token.visual_reliance:.2f}, risk {token.risk_label}")
top = result.attributions[0].regions[0]
print(f"top region {top.bbox} of {len(result.attributions[0].regions)}; answer risk {result.summary.risk_label}")
result.attributions[0].figure(image).save("overlay.png")  # with its colour bar and target text
print("overlay written to overlay.png")
