"""The search: the layout-aware sampler (:mod:`.sampler`), the ask/tell driver and its run setup (:mod:`.driver`,
:mod:`.run`), the trial table and Pareto front (:mod:`.trials`), the storage and its locks (:mod:`.storage`), and
the one module that touches Optuna's private names (:mod:`.optuna_compat`)."""
