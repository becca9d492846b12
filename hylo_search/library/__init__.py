"""The block library's driver side: build it on the study's executor (:mod:`.build`), the exact assembly solver
and its pool (:mod:`.solver`), and the sensitivity table read back without torch (:mod:`.sensitivity`)."""
