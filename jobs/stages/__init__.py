"""The stages of one flywheel iteration as functions over a :class:`StageContext`.

``jobs.loop`` (one-shot) and ``actors.controller`` (long-lived, restart-safe) both call these, so a
stage behaves the same whichever drives it. Each module holds one stage (or two tightly coupled ones):

* ``context``  — the shared handles (config, store, actors, MLflow run) and actor/MLflow setup
* ``data``     — ingest, the starting model, the labelled test set
* ``select``   — score the unlabelled pool (Ray Data) and pick a batch
* ``label``    — pre-label, route, review, write labels into the pool
* ``train``    — Ray Train + DeepSpeed, learning curves
* ``evaluate`` — offline evaluation and the decision gate
* ``deploy``   — registry (with lineage tags) and Ray Serve
* ``iteration`` — the same stages for the controller, inputs and outputs kept on disk between stages
"""
