"""CLIP2Point pre-training: DeepSpeed engine, schedules, checkpoints, metrics and the loop.

Import the submodules (``c2p.train.pretrain``, ``.checkpoint``, ``.engine``, ``.schedule``,
``.metrics``); this package imports nothing heavy by itself.
"""
