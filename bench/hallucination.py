"""Does the risk score find the reference model's real hallucinations?

    python -m bench.hallucination [--n 300]

The model captions held-out scenes (greedy). Its co-occurrence bias makes it name absent
partner objects; every object it names is checked against the scene. Each named object's
words (colour and shape tokens) are scored by the cheap /v1/reliance path, and the token
risk is evaluated as a detector of hallucinated objects: AUROC and AUPRC, plus the share of
hallucinated and of correct objects labelled high or medium. Also the same for "yes"
answers to existence questions (false yes on co-occurrence negatives vs true yes).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from mllm_audit.explainers.audit import Auditor
from mllm_audit.explainers.reliance import LABEL_ORDER
from mllm_audit.explainers.request import AuditRequest
from mllm_audit.explainers.results import AuditResult
from mllm_audit.models.loading import load_model
from mllm_audit.models.reference import world
from mllm_audit.models.reference.evaluate import generate_answers, held_out_samples
from mllm_audit.models.scorer import Scorer


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a positive outranks a negative (ties count half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def auprc(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    hits = labels[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / max(hits.sum(), 1))


def object_risks(result: AuditResult, answer: str) -> list[tuple[str, float, str]]:
    """(object name, max risk over its words, worst label) for each object a caption names."""
    out = []
    tokens = result.tokens
    words = answer.replace(",", " ").replace(".", " ").split()
    pos = 0
    spans = []
    for w in words:
        pos = answer.index(w, pos)
        spans.append((w, pos, pos + len(w)))
        pos += len(w)
    order = LABEL_ORDER
    for (a, s0, _), (b, _, e1) in zip(spans, spans[1:]):
        if a in world.COLOURS and b in world.SHAPES:
            mine = [t for t in tokens if t.start < e1 and t.end > s0]
            risk = max(t.risk_score for t in mine)
            label = max((t.risk_label for t in mine), key=order.get)
            out.append((f"{a} {b}", risk, label))
    return out


def report(name: str, risks: np.ndarray, labels: np.ndarray, names: np.ndarray) -> None:
    flagged = np.isin(names, ["medium", "high"])
    print(
        f"{name}: {int(labels.sum())} hallucinated / {len(labels)} | AUROC {auroc(risks, labels):.3f} "
        f"| AUPRC {auprc(risks, labels):.3f} (base rate {labels.mean():.3f}) "
        f"| flagged medium+: hallucinated {flagged[labels == 1].mean():.2f}, correct {flagged[labels == 0].mean():.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    start = time.perf_counter()
    loaded = load_model(args.model)
    auditor = Auditor(Scorer(loaded), forward_batch_size=64)

    captions = held_out_samples("caption", args.n, seed=30_000)
    answers = generate_answers(loaded, captions)
    results = auditor.run(
        [AuditRequest(s.scene.image, s.prompt, a, with_attributions=False) for s, a in zip(captions, answers)]
    )
    risks, labels, names = [], [], []
    for s, a, r in zip(captions, answers, results):
        if isinstance(r, Exception):  # e.g. an empty generated answer: nothing to score
            continue
        present = {o.name for o in s.scene.objects}
        for name, risk, label in object_risks(r, a):
            risks.append(risk)
            labels.append(int(name not in present))
            names.append(label)
    report("caption objects", np.array(risks), np.array(labels), np.array(names))

    questions = [s for s in held_out_samples("existence", args.n * 2, seed=30_000) if s.negative != "random"]
    answers = generate_answers(loaded, questions)
    yes = [(s, a) for s, a in zip(questions, answers) if a == "yes"]
    results = auditor.run([AuditRequest(s.scene.image, s.prompt, a, with_attributions=False) for s, a in yes])
    kept = [i for i, r in enumerate(results) if not isinstance(r, Exception)]
    yes, results = [yes[i] for i in kept], [results[i] for i in kept]
    risks = np.array([r.tokens[0].risk_score for r in results])
    labels = np.array([int(s.truth == "no") for s, _ in yes])
    names = np.array([r.tokens[0].risk_label for r in results])
    report("existence 'yes' answers", risks, labels, names)
    print(f"{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
