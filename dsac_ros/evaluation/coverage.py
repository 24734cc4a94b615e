"""Accuracy by coverage: the paper's error summary per coverage bin of the test views (how far
each is from the training views: `dsac_ros.data.view_coverage`)."""

from __future__ import annotations

import numpy as np

from dsac_ros.data.view_coverage import BINS, NearestViews
from dsac_ros.evaluation.metrics import ErrorSummary, summarize


def accuracy_by_coverage(nearest: NearestViews, rotation_deg_n: np.ndarray,
                         translation_m_n: np.ndarray, valid_n: np.ndarray | None = None
                         ) -> dict[str, ErrorSummary]:
    """ErrorSummary (metrics.summarize) of the frames in each coverage bin; bins without frames
    are left out. Errors per test frame: rotation degrees, camera-centre metres (inf = none)."""
    bins = nearest.bins()
    rotation_deg_n = np.asarray(rotation_deg_n, np.float64)
    translation_m_n = np.asarray(translation_m_n, np.float64)
    if rotation_deg_n.shape != (len(nearest),) or translation_m_n.shape != (len(nearest),):
        raise ValueError(f'{len(nearest)} frames but errors of shape {rotation_deg_n.shape} / '
                         f'{translation_m_n.shape}')
    out = {}
    for name, _ in BINS:
        sel = bins == name
        if sel.any():
            out[name] = summarize(rotation_deg_n[sel], translation_m_n[sel],
                                  None if valid_n is None else np.asarray(valid_n)[sel])
    return out


__all__ = ['accuracy_by_coverage']
