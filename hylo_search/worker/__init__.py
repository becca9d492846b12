"""Inside a worker: the task records (:mod:`.tasks`), the entry point the executors call (:mod:`.entry`), the
runtime a study's tasks share in one process (:mod:`.runtime`), the block library's worker side (:mod:`.blocks`),
the converted-layer cache (:mod:`.converted`) and the token data (:mod:`.data`)."""
