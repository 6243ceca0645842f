"""CLIP2Point pre-training: DeepSpeed engine, schedules, checkpoints, metrics, export and the loop.

Import the submodules (``c2p.train.pretrain``, ``.checkpoint``, ``.engine``, ``.schedule``,
``.metrics``, ``.export``); this package imports nothing heavy by itself.
"""
