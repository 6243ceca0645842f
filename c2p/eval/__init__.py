"""Downstream evaluation of a pre-trained depth tower.

- :mod:`c2p.eval.splits`: which objects are evaluated: a corpus split read into points [N,P,3]
  and labels, and the K-shot subset of a train split (:func:`~c2p.eval.splits.sample_shots`).
- :mod:`c2p.eval.features`: points → V depth views → per-view features of a frozen tower, cached on disk.
- :mod:`c2p.eval.towers`: the frozen towers (CLIP, an exported depth tower) and the depth-map
  settings the depth tower was pre-trained on.
- :mod:`c2p.eval.zeroshot`: zero-shot classification against CLIP text features (:func:`~c2p.eval.zeroshot.evaluate_zeroshot`).
- :mod:`c2p.eval.fewshot`: few-shot / supervised training of the Gated Dual-Path Adapter
  (:class:`c2p.models.gdpa.GatedDualPathAdapter`), K × seed sweeps (:func:`~c2p.eval.fewshot.run_fewshot`, ``run_sweep``).
- :mod:`c2p.eval.retrieval`: depth→image retrieval on held-out shards.
- :mod:`c2p.eval.report`: metrics, ``results.json``, markdown tables, confusion matrix and accuracy-vs-K plots.
- :mod:`c2p.eval.errors`: :class:`~c2p.eval.errors.EvalError`, an input that cannot be evaluated.

Entry points: ``c2p-evaluate --task zeroshot`` and ``c2p-finetune --task fewshot|supervised``
(:mod:`c2p.cli.evaluate`, :mod:`c2p.cli.finetune`).
Import from the submodules; this package imports nothing itself (no torch, no open_clip).
"""
