"""Training generative retrievers with Lightning (``npdecode train``).

``config`` (the run's settings) -> ``sources`` (backbone and data) -> ``examples`` (what is
learned) -> ``data`` (LightningDataModule) + ``module`` (LightningModule, one step for every
variant) -> ``trainer`` (the Lightning Trainer) -> ``run`` (the whole job and its run dir);
``validate`` decodes held-out queries with the real constrained decoder.
"""
