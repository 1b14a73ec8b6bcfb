"""Synthetic data with known truth, to try the evaluation and the trackers without a dataset: ``people_scene``
(a street scene of the bundled people, with a detector's boxes and the true ones), ``mot_format`` (that scene
written and read as a MOTChallenge-format sequence, as a tracker's own video would be) and ``planted_features``
(re-id features with planted identities and cameras, at the real test splits' sizes)."""
