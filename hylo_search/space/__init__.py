"""Which layouts exist and what they cost: the space schema (:mod:`.rules`), the exact cost model (:mod:`.cost`),
a space bound to a teacher (:mod:`.compiled`), layer placements (:mod:`.placements`) and the known baselines
(:mod:`.baselines`)."""
