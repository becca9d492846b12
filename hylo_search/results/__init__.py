"""Reading a study back: the front report and plots (:mod:`.front`), one trial (:mod:`.trial`: show, export), the
dry run (:mod:`.dry_run`), the fidelity audit (:mod:`.audit`) and the promotion gate (:mod:`.gate`)."""
