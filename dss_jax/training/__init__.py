"""Training: the partitioned train step and the loop around it.

step.py    `Trainer`: the train state, the jitted train and eval steps over a Mesh
           (microbatching, whole-batch loss normalisers), dropout RNGs
loop.py    `train()` (gin-configurable, behind `python -m dss_jax.train`): the train
           settings checked before anything is written, resume, checkpoints,
           preemption, non-finite losses, metrics, periodic validation
selection.py  which checkpoint validation selects (within a budget of steps, examples or
           real tokens), early stopping, the checkpoints kept for it; `STEPS='best'`
"""
