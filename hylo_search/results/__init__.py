"""Reading a study back: the front report and plots (:mod:`.front`), one trial (:mod:`.trial`: show, export), the
dry run (:mod:`.dry_run`), the fidelity audit (:mod:`.audit`), the promotion gate (:mod:`.gate`) and two runs of
one study compared (:mod:`.compare`: do independent seeds rank the layouts alike and find the same front?)."""
