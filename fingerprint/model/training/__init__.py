"""Training the fingerprint encoder: data and batches, LARS, schedules, checkpoints, the loop, the plot.

Entry point: :func:`fingerprint.model.training.loop.train` (the ``deepbrainprint train`` command calls it).
"""
