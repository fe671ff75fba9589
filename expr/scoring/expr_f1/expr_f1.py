"""ABAW EXPR macro-F1 as an ``evaluate`` metric module, loadable offline:

    import evaluate, expr.scoring.metrics
    metric = evaluate.load(expr.scoring.metrics.METRIC_PATH)
    metric.compute(predictions=[0, 1], references=[0, 2])

It delegates to :func:`expr.scoring.metrics.classification_report`, so it and the trainer agree by construction.
"""

import datasets
import evaluate

from expr.config import ABAW_CLASSES
from expr.scoring.metrics import classification_report

_DESCRIPTION = (
    "Macro-F1 over the expression classes as the ABAW EXPR challenge scores it, with per-class F1, "
    "accuracy and the confusion matrix. Labels < 0 are ignored frames."
)
_KWARGS = """
Args:
    predictions (list[int]): predicted class indices.
    references (list[int]): true class indices; -1 marks an ignored frame.
    class_names (list[str], optional): class names in index order (default: the 8 ABAW classes).
Returns:
    macro_f1 (the mean F1 over all classes; a class without targets counts 0), macro_f1_present (the mean over
    the classes present in the references), absent_classes, accuracy, per_class_f1 (dict name -> F1),
    confusion_matrix (rows true, columns predicted), count.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class ExprF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, class_names=None):
        return classification_report(references, predictions, list(class_names or ABAW_CLASSES))
