"""Metrics for the tasks tunelab trains, computed with the field's reference libraries.

Classification uses scikit-learn, generation uses sacreBLEU (BLEU, chrF, with their
signatures so numbers can be compared across papers) and Google's rouge-score.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import sacrebleu
from rouge_score import rouge_scorer
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support


def classification_metrics(preds: Sequence[int], labels: Sequence[int], label_names: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    Every class in ``label_names`` is reported, even one that never occurs in ``preds`` or
    ``labels`` (its scores are 0, without sklearn's UndefinedMetricWarning), so a before/after
    comparison always has the same keys. The confusion matrix has rows = true label and
    columns = predicted label, both in ``label_names`` order. Ids outside ``label_names`` are
    refused rather than silently ignored, because sklearn would drop them from the per-class
    numbers while still counting them in accuracy.
    """
    if len(preds) != len(labels):
        raise ValueError(f"classification_metrics: {len(preds)} predictions but {len(labels)} labels; pass one prediction per example.")
    if len(labels) == 0:
        raise ValueError("classification_metrics: no examples to score; the evaluation split is empty.")
    ids = list(range(len(label_names)))
    for kind, values in (("prediction", preds), ("label", labels)):
        bad = sorted({int(v) for v in values} - set(ids))
        if bad:
            raise ValueError(
                f"classification_metrics: {kind} id(s) {bad} are outside 0..{len(ids) - 1} "
                f"(label_names={label_names}); check the label mapping."
            )
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, preds, labels=ids, average=None, zero_division=0
    )
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(label_names)
    }
    return {
        "accuracy": float(accuracy_score(labels, preds)),
        "macro_f1": float(f1.mean()),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(labels, preds, labels=ids).tolist(),
        "n": len(labels),
    }


def majority_baseline(train_labels: Sequence[int], eval_labels: Sequence[int]) -> float:
    """Accuracy of always predicting the most frequent training label.

    This is the floor any fine-tuned classifier must beat to have learned something. Ties
    between equally frequent labels go to the smallest label id, so the result does not
    depend on row order.
    """
    if len(train_labels) == 0 or len(eval_labels) == 0:
        raise ValueError("majority_baseline: needs at least one training label and one evaluation label.")
    counts = Counter(int(x) for x in train_labels)
    top = max(counts.values())
    majority = min(label for label, count in counts.items() if count == top)
    return sum(1 for y in eval_labels if int(y) == majority) / len(eval_labels)


def generation_metrics(predictions: list[str], references: list[str]) -> dict:
    """Corpus BLEU and chrF (sacreBLEU), mean ROUGE-L F1 and exact match for generated text.

    BLEU, chrF and ROUGE-L are on a 0-100 scale, the way papers report them; exact_match is a
    fraction in [0, 1], like accuracy. The sacreBLEU signature strings say which tokeniser,
    smoothing and version produced the numbers, which is what makes them comparable.
    ROUGE-L uses rouge-score's default tokeniser, which keeps only ASCII letters and digits
    (so it scores non-Latin scripts as 0; rely on chrF there).
    """
    if len(predictions) != len(references):
        raise ValueError(f"generation_metrics: {len(predictions)} predictions but {len(references)} references; pass one reference per prediction.")
    if not predictions:
        raise ValueError("generation_metrics: no predictions to score; the evaluation split is empty.")
    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    bleu_score = bleu.corpus_score(predictions, [references])
    chrf_score = chrf.corpus_score(predictions, [references])
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge_l = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    exact = [pred.strip() == ref.strip() for pred, ref in zip(predictions, references)]
    return {
        "bleu": float(bleu_score.score),
        "bleu_signature": str(bleu.get_signature()),
        "chrf": float(chrf_score.score),
        "chrf_signature": str(chrf.get_signature()),
        "rougeL": 100.0 * sum(rouge_l) / len(rouge_l),
        "exact_match": sum(exact) / len(exact),
        "n": len(predictions),
    }


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(mean negative log-likelihood per token), the usual language-model score.

    Takes the summed NLL and the token count (not a mean of per-batch means) so that batches
    with different numbers of non-padding tokens are weighted correctly. A mean NLL too large
    for exp() gives ``inf`` instead of raising, since an untrained model can get there.
    """
    if n_tokens <= 0:
        raise ValueError(f"perplexity: n_tokens must be positive, got {n_tokens}; were all labels masked with -100?")
    try:
        return math.exp(total_nll / n_tokens)
    except OverflowError:
        return math.inf
