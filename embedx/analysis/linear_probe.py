"""`LinearProbe`: the one estimator of every embedx probe (scikit-learn compatible).

Standardise -> linear SVM (SVR for a continuous attribute), in one pipeline so scaling is learnt on training
rows only. Classes are weighted inversely to their frequency (`class_weight="balanced"`): an unweighted SVM
on a 5 %-prevalence attribute predicts the majority class and scores chance however well the latents
separate it. C is chosen by an inner subject-grouped CV on the training rows only; a C grid that cannot be
tuned or fails is reported in `notes_`, never silently replaced. `kernel="rbf"` uses an exact RBF SVM up to
`rbf_exact_max_rows` training rows and a Nystroem approximation above. Training folds above
`max_train_rows` rows are subsampled by subject for the fit; C is tuned on at most `tune_max_rows` rows.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Literal

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.compose import TransformedTargetRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.kernel_approximation import Nystroem
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, SVR, LinearSVC, LinearSVR

from embedx.analysis.folds import fold_splits, stratified_folds, subject_codes, subject_subsample

log = logging.getLogger(__name__)

__all__ = ["C_GRID", "LinearProbe"]

# Standardised latents with n >> d: accuracy is flat in C above ~0.1, and liblinear's primal solver slows
# sharply at C >= 1 on near-separable data; small cohorts (d ~ n) need the small end.
C_GRID = (0.001, 0.01, 0.1)
PREDICT_CHUNK = 65_536  # rows converted to float64 at a time when predicting


class LinearProbe(BaseEstimator):
    """Standardise -> class-balanced SVM (SVR for regression), C tuned by inner subject-grouped CV."""

    def __init__(
        self,
        task: Literal["classification", "regression"] = "classification",
        kernel: Literal["linear", "rbf"] = "linear",
        c_grid: tuple[float, ...] = C_GRID,
        inner_folds: int = 2,
        tune_max_rows: int = 1_500,
        max_train_rows: int = 20_000,
        rbf_exact_max_rows: int = 10_000,
        nystroem_components: int = 500,
        seed: int = 0,
    ) -> None:
        self.task = task
        self.kernel = kernel
        self.c_grid = c_grid
        self.inner_folds = inner_folds
        self.tune_max_rows = tune_max_rows
        self.max_train_rows = max_train_rows
        self.rbf_exact_max_rows = rbf_exact_max_rows
        self.nystroem_components = nystroem_components
        self.seed = seed

    # ---- the model

    def _pipeline(self, C: float, n_train: int, n_features: int) -> tuple[Pipeline, str]:
        regression = self.task == "regression"
        steps: list[tuple[str, Any]] = [("scale", StandardScaler())]
        exact_rbf = self.kernel == "rbf" and n_train <= self.rbf_exact_max_rows
        if self.kernel == "rbf" and not exact_rbf:
            components = min(self.nystroem_components, n_train)
            steps.append(
                (
                    "kernel",
                    Nystroem(gamma=1.0 / max(n_features, 1), n_components=components, random_state=self.seed),
                )
            )
            name = f"Nystroem({components}) + Linear" + ("SVR" if regression else "SVC(balanced)")
        elif exact_rbf:
            name = "SVR(rbf)" if regression else "SVC(rbf, balanced)"
        else:
            name = "LinearSVR" if regression else "LinearSVC(balanced)"
        if regression:
            base = (
                SVR(kernel="rbf", C=C, gamma="scale", cache_size=1000)
                if exact_rbf
                else LinearSVR(
                    C=C,
                    loss="squared_epsilon_insensitive",
                    epsilon=0.0,
                    dual="auto",
                    tol=1e-3,
                    max_iter=5000,
                    random_state=self.seed,
                )
            )
            model: Any = TransformedTargetRegressor(regressor=base, transformer=StandardScaler())
        else:
            model = (
                SVC(kernel="rbf", C=C, gamma="scale", cache_size=1000, class_weight="balanced")
                if exact_rbf
                else LinearSVC(
                    C=C, class_weight="balanced", dual="auto", tol=1e-3, max_iter=5000, random_state=self.seed
                )
            )
        steps.append(("model", model))
        return Pipeline(steps), name

    def model_after_scaling(self, C: float, n_train: int, n_features: int) -> Any:
        """The probe's pipeline without its scaler, for callers that fit it hundreds of times on rows they
        standardised once (`cv_width`'s permuted labellings): the per-fit cost at small sizes is mostly the
        pipeline's own, about 3 ms against 1 ms."""
        pipeline, _ = self._pipeline(C, n_train, n_features)
        rest = pipeline.steps[1:]
        return rest[0][1] if len(rest) == 1 else Pipeline(rest)

    def _score(self, y_true: np.ndarray, pred: np.ndarray) -> float:
        if self.task == "regression":
            return -float(np.mean(np.abs(y_true - pred)))
        return balanced_accuracy(y_true, pred)

    def _tune(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> tuple[float, list[str]]:
        grid = tuple(self.c_grid)
        middle = float(grid[len(grid) // 2])
        if len(grid) == 1:
            return float(grid[0]), []
        n_subjects = len(np.unique(groups))
        k = min(self.inner_folds, n_subjects)
        if k < 2:
            return middle, [f"C not tuned ({n_subjects} subject(s) in the tuning rows); C={middle:g} used"]
        if self.task == "regression":
            splits = list(GroupKFold(n_splits=k).split(X, y, groups))
        else:  # subjects dealt per class where the label is constant within subject (fast at any size)
            n_classes = len(np.unique(y))
            try:
                folds = stratified_folds(y, groups, k, self.seed)
            except ValueError:  # every class has fewer subjects than folds (a few subjects, many images)
                folds = np.full(len(y), -1)
            splits = [(tr, te) for tr, te in fold_splits(folds) if len(np.unique(y[tr])) == n_classes]
        if not splits:
            return middle, [f"C not tuned (no inner split holds every class); C={middle:g} used"]
        scores, failures = {}, []
        for C in grid:
            values = []
            for tr, te in splits:
                try:
                    model, _ = self._pipeline(C, len(tr), X.shape[1])
                    values.append(self._score(y[te], model.fit(X[tr], y[tr]).predict(X[te])))
                except (ValueError, np.linalg.LinAlgError) as err:
                    failures.append(f"C={C:g}: {err}")
            if values and np.all(np.isfinite(values)):
                scores[C] = float(np.mean(values))
        if not scores:
            return middle, [
                f"every C of the grid failed on the tuning rows ({failures[0]}); C={middle:g} used"
            ]
        best = max(scores, key=lambda c: scores[c])  # ties: the first (smallest) C
        notes = [f"C grid: {len(failures)} inner fit(s) failed ({failures[0]})"] if failures else []
        return float(best), notes

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None,
            rows_of_X: np.ndarray | None = None) -> LinearProbe:
        """Fit on X (or on `X[rows_of_X]`, the training rows of a larger matrix, which is then never copied
        whole: at a million rows a training fold is GBs). Only the rows fitted are converted to float64."""
        y = np.asarray(y)
        index = np.arange(len(y)) if rows_of_X is None else np.asarray(rows_of_X)
        if rows_of_X is None and len(X) != len(y):
            raise ValueError(f"X has {len(X)} rows and y {len(y)}")
        groups = np.arange(len(y)) if groups is None else subject_codes(groups)
        rng = np.random.default_rng(self.seed)
        rows = subject_subsample(np.arange(len(y)), groups, self.max_train_rows, rng)
        notes: list[str] = []
        if self.task == "classification" and len(np.unique(y[rows])) < len(np.unique(y)):
            rows = np.arange(len(y))
            notes.append("the training subsample lost a class: fitted on every training row")
        tune = subject_subsample(rows, groups, self.tune_max_rows, rng)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            self.C_, tune_notes = self._tune(np.asarray(X[index[tune]], dtype=np.float64), y[tune],
                                             groups[tune])
            self.pipeline_, self.estimator_name_ = self._pipeline(self.C_, len(rows), X.shape[1])
            self.pipeline_.fit(np.asarray(X[index[rows]], dtype=np.float64), y[rows])
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            notes.append(
                "the SVM solver stopped at its iteration limit on some fits (scores are still valid)"
            )
        self.notes_ = notes + tune_notes
        self.n_train_rows_ = len(rows)
        if self.task == "classification":
            self.classes_ = self.pipeline_.classes_
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self._in_chunks(X, self.pipeline_.predict)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        method = self.pipeline_.predict if self.task == "regression" else self.pipeline_.decision_function
        return np.asarray(self._in_chunks(X, method), dtype=float)

    @staticmethod
    def _in_chunks(X: np.ndarray, method: Any, chunk: int = PREDICT_CHUNK) -> np.ndarray:
        """`method` over row chunks, each converted to float64 on its own (a whole test fold at 1M rows
        would be a GB copy; results are the same, row by row)."""
        if len(X) <= chunk:
            return np.asarray(method(np.asarray(X, dtype=np.float64)))
        return np.concatenate([np.asarray(method(np.asarray(X[i:i + chunk], dtype=np.float64)))
                               for i in range(0, len(X), chunk)])

    def direction(self) -> np.ndarray:
        """Linear kernel, two classes: the normal of the decision boundary in raw feature units."""
        scale = self.pipeline_.named_steps["scale"].scale_
        return np.asarray(self.pipeline_.named_steps["model"].coef_[0]) / scale


def balanced_accuracy(y_true: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes of `y_true`, as scikit-learn's `balanced_accuracy_score` computes it,
    without its input validation: C tuning scores a few thousand small folds, where that dominated."""
    classes, codes = np.unique(y_true, return_inverse=True)
    codes = codes.reshape(-1)
    hits = np.bincount(codes, weights=(np.asarray(pred) == np.asarray(y_true)), minlength=len(classes))
    return float(np.mean(hits / np.bincount(codes, minlength=len(classes))))
