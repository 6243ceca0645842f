"""Downstream evaluation of a pre-trained depth tower.

- :mod:`c2p.eval.features`: corpus split → points → V depth views → frozen-tower features, cached on disk.
- :mod:`c2p.eval.zeroshot`: zero-shot classification against CLIP text features (:func:`~c2p.eval.zeroshot.evaluate_zeroshot`).
- :mod:`c2p.eval.fewshot`: few-shot / supervised training of the Gated Dual-Path Adapter
  (:class:`c2p.models.gdpa.GatedDualPathAdapter`), K × seed sweeps (:func:`~c2p.eval.fewshot.run_fewshot`, ``run_sweep``).
- :mod:`c2p.eval.report`: metrics, ``results.json``, markdown tables, confusion matrix and accuracy-vs-K plots.

Entry points: ``launch/evaluate.py --task zeroshot`` and ``launch/finetune.py --task fewshot|supervised``.
Import from the submodules; this package imports nothing itself (no torch, no open_clip).
"""
